"""Audio embedding extractors (legacy bob preprocessors): the general one and the original's two classes."""
from ...errors import CheckpointError, ModelDownloadError, UnsafeCheckpointError
from ...frontend import spectrogram
from .DltResNet import DltResNetExtractor, ResNetExtractor
from .extractor import EmbeddingExtractor

__all__ = [
    "EmbeddingExtractor",
    "DltResNetExtractor",
    "ResNetExtractor",
    "spectrogram",
    "CheckpointError",
    "ModelDownloadError",
    "UnsafeCheckpointError",
]
