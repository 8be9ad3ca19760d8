"""The identity extractor of the original package, for legacy configurations.

With the audio extractors the embedding is computed in the *preprocessing*
step, so the extraction step has nothing left to do.
"""
from typing import Any

from ..CallableExtractor import LegacyExtractor

__all__ = ["DummyExtractor"]


class DummyExtractor(LegacyExtractor):
    """A legacy bob ``Extractor`` returning its input unchanged.

    Features are read and written in the embeddings' format (float64 HDF5
    dataset ``feats``).

    Examples
    --------
    >>> import numpy
    >>> embedding = numpy.zeros((1, 128))
    >>> DummyExtractor()(embedding) is embedding
    True
    """

    def __call__(self, data: Any) -> Any:
        """Return ``data`` itself."""
        return data
