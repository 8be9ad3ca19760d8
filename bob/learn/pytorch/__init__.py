"""bob.learn.pytorch: PyTorch speaker-embedding extractors for the bob framework."""
from .errors import CheckpointError, ModelDownloadError, SettingsError, UnsafeCheckpointError

__all__ = ["CheckpointError", "ModelDownloadError", "SettingsError", "UnsafeCheckpointError"]
