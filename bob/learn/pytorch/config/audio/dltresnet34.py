"""Speaker embeddings of the dilated ResNet-34 trained on VoxCeleb, scored by cosine similarity.

Run it on a database with bob's experiment runner::

    $ bob bio pipeline simple -p dltresnet34-voxceleb -d my_database.py -o results

(add ``-l local-parallel`` for dask worker processes, ``-c DIR`` to keep the
embeddings in ``DIR`` and reuse them on the next run). The model file comes
from the network's path setting (``bob pytorch info`` shows the key), else
the package data folder, where a missing file is downloaded when this file is
imported (``bob pytorch download-models`` does it ahead). The network itself
is loaded on first use, once per process.

The legacy variables (``preprocessor``, ``extractor``,
``extracted_directory``, ``skip_extraction``) are those the original guide
told ``verify.py`` users to write: the embedding is computed as the
preprocessed data and used directly as the feature.
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
