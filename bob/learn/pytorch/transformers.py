"""A scikit-learn transformer that embeds audio samples for bob pipelines.

:class:`AudioEmbeddingTransformer` runs an
:class:`~bob.learn.pytorch.preprocessor.audio.EmbeddingExtractor` (the one it
is given, or one it builds for a registered network) on a list of recordings
with a single ``embed_many`` call. It follows bob's transformer contract: the
constructor only stores its arguments, nothing needs fitting, the network is
loaded on first use in the process that embeds, and pickling (dask sending
the transformer to its workers) leaves the network behind.

This module imports neither PyTorch nor the networks: dask's scheduler
unpickles the transformer in every task graph, and needs neither. A given
extractor travels as an :class:`ExtractorRecipe` (its settings, the network by
its registry name, or as a whole record when it is not the registered one); the
extractor is made again in the process that embeds.
"""
import importlib
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, Hashable, Optional, Sequence, Union

import numpy
from sklearn.base import BaseEstimator, TransformerMixin

from . import io

__all__ = ["AudioEmbeddingTransformer", "ExtractorRecipe"]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

# The extractor each process uses for a given extractor (copies unpickled from one extractor share
# its instance token, so a worker loads the network once however many tasks carry a copy) or for
# given settings (network, model file, device), when the transformer builds its own.
_PROCESS_EXTRACTORS: dict = {}
_PROCESS_LOCK = threading.Lock()


def _process_extractor(key: Hashable, make: Callable[[], Any]) -> Any:
    """The extractor this process keeps for ``key``, made by ``make()`` the first time.

    ``make`` runs outside the lock (it may download a model); if two threads
    make one at once, the first kept wins.
    """
    known = _PROCESS_EXTRACTORS.get(key)
    if known is not None:
        return known
    made = make()
    with _PROCESS_LOCK:
        return _PROCESS_EXTRACTORS.setdefault(key, made)


@dataclass(frozen=True)
class ExtractorRecipe:
    """An extractor as it travels to another process, in plain values (no PyTorch object).

    Attributes
    ----------
    cls : str
        ``module:qualified name`` of the extractor's class.
    state : dict
        Its pickled state, with the network record replaced by its registry
        name (the record itself when it is not the registered one) and the
        device by its text.
    """

    cls: str
    state: Dict[str, Any]

    @classmethod
    def of(cls, extractor: Any) -> "ExtractorRecipe":
        state = extractor.__getstate__()
        state["pretrained"] = _shipped_network(extractor.pretrained)
        state["device"] = str(extractor.device)
        kind = type(extractor)
        return cls(f"{kind.__module__}:{kind.__qualname__}", state)

    @property
    def instance_token(self) -> str:
        return self.state["instance_token"]

    def make(self) -> Any:
        """The extractor again (its network loads on first use, as after unpickling)."""
        import torch

        from . import pretrained

        module, _, name = self.cls.partition(":")
        kind = getattr(importlib.import_module(module), name)
        extractor = kind.__new__(kind)
        record, device = pretrained.get(self.state["pretrained"]), torch.device(self.state["device"])
        extractor.__setstate__(dict(self.state, pretrained=record, device=device))
        return extractor


def _shipped_network(record: Any) -> Any:
    """How a network record travels: its name when the registry gives that very record, else the record itself.

    A record that is not registered (or that differs from the registered one
    of its name) must not be replaced by the registered one in another
    process; it travels whole, and must therefore pickle.

    Raises
    ------
    TypeError
        If such a record cannot be pickled (its architecture is a lambda or a
        local function), naming the fix.
    """
    import pickle

    from . import pretrained

    try:
        if pretrained.get(record.name) == record:
            return record.name
    except ValueError:  # not registered under its name
        pass
    try:
        pickle.dumps(record)
    except Exception as error:
        raise TypeError(
            f"the extractor's network record {record.name!r} is not the registered network of that name, so it must "
            f"travel to other processes whole, but it cannot be pickled ({type(error).__name__}: {error}); register "
            "it (pretrained.register, or a plug-in), or make its architecture a module-level function"
        ) from None
    return record


class AudioEmbeddingTransformer(TransformerMixin, BaseEstimator):
    """Embed recordings with a speaker network.

    Without a bob wrapper, ``transform(X)`` takes a list of ``(rate, samples)``
    pairs (what ``scipy.io.wavfile.read`` returns) and returns one float32
    ``(1, D)`` embedding per recording, as the extractor's ``__call__`` does.
    Wrapped with ``bob.pipelines.wrap(["sample"], ...)``, it reads each
    sample's ``data``:

    - by default ``data`` must be a ``(rate, samples)`` pair (samples from
      :func:`bob.learn.pytorch.database.recordings_database`);
    - with ``rate_attribute="rate"``, ``data`` holds the samples alone and the
      sample attribute ``rate`` their sampling rate (the bob.bio.spear
      convention).

    Parameters
    ----------
    extractor : EmbeddingExtractor, optional
        The extractor to use, and its network; then ``network``, ``use_res``,
        ``model_file`` and ``device`` must be left at their defaults. By
        default one is built on first use from those.
    network : str or PretrainedNetwork, optional
        Registered network of the built extractor (``"dltresnet34"`` by default).
    use_res : bool
        The original's switch: ``network="resnet34"``.
    model_file : str or os.PathLike, optional
        Model file of the built extractor (default: the extractor's own
        resolution: user setting, then package data folder).
    device : str, optional
        Device of the built extractor (default CPU).
    batch_size : int
        Recordings of equal length embedded together (see
        :meth:`EmbeddingExtractor.embed_many`).
    rate_attribute : str, optional
        Name of the sample attribute holding the sampling rate, when ``data``
        holds the samples alone.
    annotations_attribute : str, optional
        Name of the sample attribute holding speech labels, usually
        ``"annotations"``: where it holds 0/1 labels, one per 10 ms frame (what
        bob.bio.spear's VAD annotators and
        :class:`~bob.learn.pytorch.annotators.VoiceActivityAnnotator` produce),
        only the frames labelled 1 are embedded
        (:func:`bob.learn.pytorch.windows.embed_with_labels`); where it holds
        None or a dict, the whole recording is.

    Notes
    -----
    Each process loads the network once per extractor: the copies of a given
    extractor that dask unpickles there (one per task) share the first one's
    network, and so do transformers that build their extractor from the same
    settings. Two different extractors are never confused, even with the same
    model file.

    Examples
    --------
    >>> import numpy
    >>> from bob.learn.pytorch.preprocessor.audio import EmbeddingExtractor
    >>> transformer = AudioEmbeddingTransformer(EmbeddingExtractor("dltresnet34", test=True))
    >>> noise = numpy.random.RandomState(0).randint(-3000, 3000, 16000).astype("int16")
    >>> embeddings = transformer.transform([(16000, noise), (16000, noise[:8000])])
    >>> [e.shape for e in embeddings]
    [(1, 128), (1, 128)]

    Samples carrying a ``rate`` attribute, in a bob pipeline:

    >>> import bob.pipelines
    >>> sample = bob.pipelines.Sample(noise, rate=16000, key="noise")
    >>> wrapped = bob.pipelines.wrap(
    ...     ["sample"], AudioEmbeddingTransformer(EmbeddingExtractor(test=True), rate_attribute="rate"))
    >>> wrapped.transform([sample])[0].data.shape
    (1, 128)
    """

    def __init__(
        self,
        extractor: Optional[Any] = None,
        network: Optional[Any] = None,
        use_res: bool = False,
        model_file: Optional[PathLike] = None,
        device: Optional[str] = None,
        batch_size: int = 8,
        rate_attribute: Optional[str] = None,
        annotations_attribute: Optional[str] = None,
    ) -> None:
        self.extractor = extractor
        self.network = network
        self.use_res = use_res
        self.model_file = model_file
        self.device = device
        self.batch_size = batch_size
        self.rate_attribute = rate_attribute
        self.annotations_attribute = annotations_attribute

    # -- the extractor, resolved on first use -------------------------------------------------

    def _get_extractor(self) -> Any:
        extractor = self.__dict__.get("_extractor")
        if extractor is None:
            extractor = self._given_extractor() if self.extractor is not None else self._built_extractor()
            self._extractor = extractor
        return extractor

    def _network(self) -> Any:
        """The record of the built extractor: a record given as ``network`` is used as it is, never by name."""
        from . import pretrained

        if self.use_res and self.network is not None and pretrained.get(self.network).name != "resnet34":
            raise ValueError(f"use_res=True conflicts with network={self.network!r}; pass only network")
        return pretrained.get("resnet34" if self.use_res else self.network or "dltresnet34")

    def _built_extractor(self) -> Any:
        from .preprocessor.audio import EmbeddingExtractor
        from .weights import absolute_path

        record = self._network()
        model_file = None if self.model_file is None else absolute_path(self.model_file)
        key = ("settings", record, model_file, str(self.device))
        return _process_extractor(key, lambda: EmbeddingExtractor(record, model_file, device=self.device))

    def _given_extractor(self) -> Any:
        from .preprocessor.audio import EmbeddingExtractor

        if isinstance(self.extractor, ExtractorRecipe):  # a copy unpickled in this process
            return _process_extractor(("instance", self.extractor.instance_token), self.extractor.make)
        if self.network is not None or self.use_res or self.model_file is not None or self.device is not None:
            raise ValueError(
                "pass either an extractor or network/use_res/model_file/device to AudioEmbeddingTransformer, "
                "not both; configure the extractor itself instead"
            )
        if not isinstance(self.extractor, EmbeddingExtractor):
            raise TypeError(
                "extractor must be an EmbeddingExtractor (DltResNetExtractor, ResNetExtractor, ...), "
                f"got {type(self.extractor).__name__}"
            )
        if self.extractor.test:  # carries its own random network: nothing to share
            return self.extractor
        extractor = self.extractor
        return _process_extractor(("instance", extractor.instance_token), lambda: extractor)

    def __getstate__(self) -> dict:
        """The parameters without the loaded extractor, in plain values.

        A given extractor becomes an :class:`ExtractorRecipe`, so that
        unpickling (in dask's scheduler, for instance) imports no PyTorch; an
        extractor in ``test`` mode travels whole, with its random network. A
        relative ``model_file`` is made absolute here: workers unpickle the
        transformer in folders of their own, and the path must name the file
        that was meant where the pipeline was built.
        """
        state = dict(super().__getstate__())  # a copy: the base class may hand out the live __dict__
        state.pop("_extractor", None)
        extractor = state.get("extractor")
        if extractor is not None and not isinstance(extractor, ExtractorRecipe) and not getattr(extractor, "test", True):
            state["extractor"] = ExtractorRecipe.of(extractor)
        if state.get("model_file") is not None:
            from .weights import absolute_path

            state["model_file"] = absolute_path(state["model_file"])
        return state

    # -- scikit-learn API ---------------------------------------------------------------------

    def fit(self, X: Any = None, y: Any = None) -> "AudioEmbeddingTransformer":
        """Nothing to learn; returns ``self``."""
        return self

    def transform(
        self, X: Sequence[Any], rate: Optional[Sequence[int]] = None, annotations: Optional[Sequence[Any]] = None
    ) -> list:
        """Embed every recording of ``X`` with one :meth:`embed_many` call.

        Parameters
        ----------
        X : sequence
            ``(rate, samples)`` pairs, or sample arrays when ``rate`` is given.
        rate : sequence of int, optional
            Sampling rate of each element of ``X`` (bob passes the samples'
            ``rate_attribute`` here).
        annotations : sequence, optional
            Each recording's speech labels (0/1 per 10 ms frame), or None or a
            dict to embed it whole (bob passes the samples'
            ``annotations_attribute`` here).

        Returns
        -------
        list of numpy.ndarray
            One float32 ``(1, D)`` embedding per recording.

        Raises
        ------
        ValueError
            If ``rate`` and ``X`` differ in length, or a recording is invalid
            or too short (see the extractor).
        """
        audios = _as_audios(X, rate)
        if not audios:
            return []
        if annotations is not None:
            from .windows import embed_with_labels

            embeddings = embed_with_labels(self._get_extractor(), audios, annotations, self.batch_size)
        else:
            embeddings = self._get_extractor().embed_many(audios, batch_size=self.batch_size)
        return [row[numpy.newaxis, :] for row in embeddings]

    def write_data(self, data: Any, data_file: PathLike) -> None:
        """Store one embedding (bob's checkpoints), as the extractors' ``write_data`` does."""
        io.write_embedding(data, data_file)

    def read_data(self, data_file: PathLike) -> numpy.ndarray:
        """Read one stored embedding back, as the extractors' ``read_data`` does."""
        return io.read_embedding(data_file)

    def _more_tags(self) -> dict:
        tags = {
            "requires_fit": False,
            "stateless": True,
            "bob_checkpoint_extension": ".h5",
            "bob_features_save_fn": self.write_data,
            "bob_features_load_fn": self.read_data,
        }
        extra = [("rate", self.rate_attribute), ("annotations", self.annotations_attribute)]
        extra = tuple((argument, attribute) for argument, attribute in extra if attribute is not None)
        if extra:
            tags["bob_transform_extra_input"] = extra
        return tags

    def __sklearn_tags__(self):  # scikit-learn >= 1.6
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        return tags


def _as_audios(X: Sequence[Any], rate: Optional[Sequence[int]]) -> list:
    """``(rate, samples)`` pairs from ``X`` and the optional rates."""
    from .embedding import as_list

    X = as_list("X", X, "recordings")
    if rate is None:
        for index, audio in enumerate(X):
            if not (isinstance(audio, (tuple, list)) and len(audio) == 2):
                raise TypeError(
                    f"recording {index} is a {type(audio).__name__}, not a (rate, samples) pair; when the samples "
                    "carry their rate in an attribute, create the transformer with rate_attribute='rate'"
                )
        return X
    rate = as_list("rate", rate, "sampling rates, one per recording")
    if len(rate) != len(X):
        raise ValueError(f"got {len(X)} recordings but {len(rate)} rates")
    for index, samples in enumerate(X):
        if isinstance(samples, (tuple, list)) and len(samples) == 2:
            raise TypeError(
                f"recording {index} is a (rate, samples) pair, but rates are also given (rate_attribute): pass "
                "the samples alone, or create the transformer without rate_attribute"
            )
    return [(value, numpy.asarray(samples)) for value, samples in zip(rate, X)]
