"""A legacy bob extractor that applies a function to the preprocessed data.

bob.bio.base up to 4.x shipped ``bob.bio.base.extractor.CallableExtractor``;
bob.bio.base 8 removed it together with ``verify.py``. This module provides an
equivalent so that the package's configuration files keep their legacy
``extractor`` variable on any bob.bio.base release.
"""
import os
import warnings
from typing import Any, Callable, Union

import numpy

from .. import io
from ..bob_imports import Extractor

__all__ = ["CallableExtractor", "identity", "LegacyExtractor"]


def identity(data: Any) -> Any:
    """Return ``data`` unchanged (a picklable ``lambda x: x``)."""
    return data


class LegacyExtractor(Extractor):
    """A legacy bob ``Extractor`` that needs no training and stores features as the embeddings are stored.

    Features are written and read like the audio extractors' preprocessed
    files (float64 HDF5 dataset ``feats``), so ``read_feature`` also opens the
    files written by ``DltResNetExtractor.write_data``: with
    ``skip_extraction = True`` the preprocessed embeddings serve as features.
    """

    def __init__(self, **kwargs: Any) -> None:
        with warnings.catch_warnings():
            # The legacy base class warns on every construction that it is deprecated.
            warnings.simplefilter("ignore", DeprecationWarning)
            super().__init__(requires_training=False, **kwargs)

    def write_feature(self, feature: Any, feature_file: Union[str, "os.PathLike[str]"]) -> None:
        """Write ``feature`` as float64 dataset ``feats`` of a new HDF5 file, atomically."""
        io.write_embedding(feature, feature_file)

    def read_feature(self, feature_file: Union[str, "os.PathLike[str]"]) -> numpy.ndarray:
        """Read dataset ``feats`` (float64, as stored)."""
        return io.read_embedding(feature_file)


class CallableExtractor(LegacyExtractor):
    """Apply ``callable`` to the preprocessed data: ``extractor(x) == callable(x)``.

    Parameters
    ----------
    callable : callable
        Function of one argument. Use :func:`identity` (or ``lambda x: x``,
        which cannot be pickled) for a pass-through extractor.

    Examples
    --------
    >>> import numpy
    >>> extractor = CallableExtractor(identity)
    >>> x = numpy.ones((1, 128))
    >>> extractor(x) is x
    True
    """

    def __init__(self, callable: Callable[[Any], Any], **kwargs: Any) -> None:
        super().__init__(callable=callable, **kwargs)
        self.callable = callable

    def __call__(self, data: Any) -> Any:
        """Return ``callable(data)``."""
        return self.callable(data)
