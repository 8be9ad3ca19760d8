"""The dilated ResNet-34 on VoxCeleb, for ``verify.py`` and ``bob bio pipeline simple -p dltresnet34-voxceleb``.

See :mod:`bob.learn.pytorch.config.audio` for what it defines and where the model file comes from.
"""
from bob.learn.pytorch.config.audio import cosine_pipeline, legacy_variables
from bob.learn.pytorch.preprocessor.audio import DltResNetExtractor

preprocessor = DltResNetExtractor()
extractor, extracted_directory, skip_extraction = legacy_variables()  # verify.py
transformer, pipeline = cosine_pipeline(preprocessor)  # bob bio pipeline simple
