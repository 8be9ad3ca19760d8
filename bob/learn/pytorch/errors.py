"""Exceptions raised by bob.learn.pytorch."""

__all__ = ["CheckpointError", "UnsafeCheckpointError", "ModelDownloadError", "SettingsError", "RuntimeBuildError", "ExportError"]


class CheckpointError(RuntimeError):
    """A model file cannot be read or does not fit the network it is loaded into."""


class UnsafeCheckpointError(CheckpointError):
    """A model file needs full unpickling, which could run arbitrary code."""


class ModelDownloadError(RuntimeError):
    """A pretrained model could not be downloaded or failed validation."""


class SettingsError(ValueError):
    """A bob settings file (``bobrc.toml`` or ``~/.bobrc``) exists but cannot be read."""


class RuntimeBuildError(RuntimeError):
    """The runtime asked for by name (``backend="onnxruntime"``) cannot run the network, or differs from eager."""


class ExportError(RuntimeError):
    """A network cannot be exported to ONNX (``torch.export`` cannot trace it); eager PyTorch still runs it."""
