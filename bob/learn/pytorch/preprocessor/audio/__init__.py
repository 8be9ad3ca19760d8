"""Audio embedding extractors (legacy bob preprocessors) and their front end."""
from ...errors import CheckpointError, ModelDownloadError, UnsafeCheckpointError
from .DltResNet import DltResNetExtractor, ResNetExtractor
from .frontend import spectrogram

__all__ = [
    "DltResNetExtractor",
    "ResNetExtractor",
    "spectrogram",
    "CheckpointError",
    "ModelDownloadError",
    "UnsafeCheckpointError",
]
