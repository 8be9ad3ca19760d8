"""bob.learn.pytorch: PyTorch speaker-embedding extractors for the bob framework."""
from .errors import CheckpointError, ModelDownloadError, UnsafeCheckpointError

__all__ = ["CheckpointError", "ModelDownloadError", "UnsafeCheckpointError"]
