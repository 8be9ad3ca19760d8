"""Where a model file comes from: the explicit argument, then the default path.

(User settings and automatic downloads are added on top of this.)
"""
import os
from typing import NamedTuple, Optional, Union

from .preprocessor.audio.weights import PretrainedModel

__all__ = ["ModelLocation", "resolve_model_file", "ensure_model_file"]


class ModelLocation(NamedTuple):
    """A model file path and where that path came from."""

    path: str
    source: str


def resolve_model_file(record: PretrainedModel, model_file: Optional[Union[str, os.PathLike]] = None) -> ModelLocation:
    """Return the file to load for ``record`` and the origin of that choice."""
    if model_file is not None:
        return ModelLocation(os.fspath(model_file), "argument")
    return ModelLocation(record.default_path, "package data folder")


def ensure_model_file(record: PretrainedModel, model_file: Optional[Union[str, os.PathLike]] = None, **_: object) -> str:
    """Resolve the model file and check that it exists."""
    location = resolve_model_file(record, model_file)
    if not os.path.isfile(location.path):
        raise FileNotFoundError(f"{record.title} model file {location.path} (from the {location.source}) does not exist")
    return location.path
