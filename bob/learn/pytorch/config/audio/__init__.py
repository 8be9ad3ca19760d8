"""Speaker-embedding configurations for bob.

``dltresnet34`` and ``resnet34`` each define, in the legacy ``verify.py``
style, ``preprocessor``, ``extractor``, ``extracted_directory`` and
``skip_extraction``; and, for ``bob bio pipeline simple``, ``transformer``
and ``pipeline``. They are registered as the resources
``dltresnet34-voxceleb`` and ``resnet34-voxceleb``.
"""
from typing import Any, Tuple

from sklearn.pipeline import make_pipeline

from bob.learn.pytorch.bob_imports import Distance, PipelineSimple, wrap
from bob.learn.pytorch.transformers import AudioEmbeddingTransformer

__all__ = ["cosine_pipeline"]


def cosine_pipeline(preprocessor: Any) -> Tuple[Any, Any]:
    """``(transformer, pipeline)`` for ``bob bio pipeline simple``: the preprocessor's embeddings, cosine scores.

    The transformer shares the preprocessor, and so its network.
    """
    transformer = make_pipeline(wrap(["sample"], AudioEmbeddingTransformer(preprocessor)))
    return transformer, PipelineSimple(transformer, Distance(distance_function="cosine", factor=-1))
