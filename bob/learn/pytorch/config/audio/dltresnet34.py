"""The dilated ResNet-34 on VoxCeleb, for ``verify.py`` and ``bob bio pipeline simple -p dltresnet34-voxceleb``.

See :mod:`bob.learn.pytorch.config.audio` for what it defines and where the model file comes from.
"""
from bob.learn.pytorch.config.audio import cosine_pipeline
from bob.learn.pytorch.extractor import CallableExtractor, identity
from bob.learn.pytorch.preprocessor.audio import DltResNetExtractor

# Legacy (verify.py) variables.
preprocessor = DltResNetExtractor()
extractor = CallableExtractor(identity)
extracted_directory = "preprocessed"
skip_extraction = True

# bob bio pipeline simple.
transformer, pipeline = cosine_pipeline(preprocessor)
