"""A voice activity annotator for bob pipelines, producing bob.bio.spear's form of speech labels.

:class:`VoiceActivityAnnotator` runs a detector of :mod:`bob.learn.pytorch.vad`
on each recording and returns its 0/1 labels, one per 10 ms frame, as a
``uint8`` array: what bob.bio.spear's ``Energy_2Gauss`` annotator stores as a
sample's ``annotations``. Wrapped with ``output_attribute="annotations"``, it
goes before an :class:`~bob.learn.pytorch.transformers.AudioEmbeddingTransformer`
created with ``annotations_attribute="annotations"``, which then embeds only
the speech frames (the ``dltresnet34-voxceleb-vad`` resource does this).
"""
from typing import Any, Optional, Sequence

import numpy
from sklearn.base import BaseEstimator, TransformerMixin

__all__ = ["VoiceActivityAnnotator"]


class VoiceActivityAnnotator(TransformerMixin, BaseEstimator):
    """Speech labels of recordings: one ``uint8`` 0/1 array per recording, 10 ms per label.

    Parameters
    ----------
    vad : str or callable
        ``"energy"`` (default), ``"silero"`` or a callable returning
        ``(segments, labels)`` (see :mod:`bob.learn.pytorch.vad`).
    rate_attribute : str, optional
        Name of the sample attribute holding the sampling rate, when ``data``
        holds the samples alone.

    Examples
    --------
    >>> import numpy
    >>> noise = numpy.random.RandomState(0).randn(16000) * 3000
    >>> audio = (16000, numpy.concatenate([numpy.zeros(8000), noise]).astype("int16"))
    >>> labels = VoiceActivityAnnotator().transform([audio])[0]
    >>> labels.dtype, len(labels), int(labels.sum())
    (dtype('uint8'), 149, 99)
    """

    def __init__(self, vad: Any = "energy", rate_attribute: Optional[str] = None) -> None:
        self.vad = vad
        self.rate_attribute = rate_attribute

    def fit(self, X: Any = None, y: Any = None) -> "VoiceActivityAnnotator":
        """Nothing to learn; returns ``self``."""
        return self

    def transform(self, X: Sequence[Any], rate: Optional[Sequence[int]] = None) -> list:
        """One ``uint8`` label array per recording (``(rate, samples)`` pairs, or samples with ``rate``)."""
        from .vad import check_activity, get_vad

        detector = get_vad(self.vad)
        audios = list(X) if rate is None else [(r, numpy.asarray(x)) for r, x in zip(rate, X)]
        return [check_activity(detector(audio)).labels.astype(numpy.uint8) for audio in audios]

    def _more_tags(self) -> dict:
        tags = {"requires_fit": False, "stateless": True}
        if self.rate_attribute is not None:
            tags["bob_transform_extra_input"] = (("rate", self.rate_attribute),)
        return tags

    def __sklearn_tags__(self):  # scikit-learn >= 1.6
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        return tags
