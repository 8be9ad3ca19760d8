"""Speaker-embedding configurations for bob: embeddings of a VoxCeleb network, scored by cosine similarity.

``dltresnet34`` and ``resnet34`` each define, in the legacy ``verify.py``
style, ``preprocessor``, ``extractor``, ``extracted_directory`` and
``skip_extraction`` (the original guide's variables: the embedding is
computed as the preprocessed data and used directly as the feature); and,
for ``bob bio pipeline simple``, ``transformer`` and ``pipeline``. They are
registered as the resources ``dltresnet34-voxceleb`` and
``resnet34-voxceleb``::

    $ bob bio pipeline simple -p dltresnet34-voxceleb -d my_database.py -o results

(add ``-l local-parallel`` for dask worker processes, ``-c DIR`` to keep the
embeddings in ``DIR`` and reuse them on the next run). The model file comes
from the network's path setting (``bob pytorch info`` shows the key), else
the package data folder, where a missing file is downloaded when the
configuration is imported (``bob pytorch download-models`` does it ahead).
The network itself is loaded on first use, once per process.
"""
from typing import Any, Tuple

from sklearn.pipeline import make_pipeline

from bob.learn.pytorch.bob_imports import Distance, PipelineSimple, wrap
from bob.learn.pytorch.extractor import CallableExtractor, identity
from bob.learn.pytorch.transformers import AudioEmbeddingTransformer

__all__ = ["legacy_variables", "cosine_pipeline"]


def legacy_variables() -> Tuple[Any, str, bool]:
    """``(extractor, extracted_directory, skip_extraction)`` for ``verify.py``: the embedding is the feature.

    The extractor (a new one on each call) returns the preprocessed data
    unchanged; ``skip_extraction`` makes ``verify.py`` read the preprocessed
    files as features.
    """
    return CallableExtractor(identity), "preprocessed", True


def cosine_pipeline(preprocessor: Any) -> Tuple[Any, Any]:
    """``(transformer, pipeline)`` for ``bob bio pipeline simple``: the preprocessor's embeddings, cosine scores.

    The transformer shares the preprocessor, and so its network.
    """
    transformer = make_pipeline(wrap(["sample"], AudioEmbeddingTransformer(preprocessor)))
    return transformer, PipelineSimple(transformer, Distance(distance_function="cosine", factor=-1))
