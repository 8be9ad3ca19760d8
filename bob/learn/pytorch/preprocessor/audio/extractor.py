"""The speaker-embedding extractor for bob: audio in, embedding out, for any registered network.

:class:`EmbeddingExtractor` is a legacy bob *preprocessor*:
``extractor((rate, samples))`` returns the L2-normalised embedding of the
whole utterance as a float32 ``(1, D)`` array, and ``write_data`` /
``read_data`` store it in HDF5, so that the embeddings can serve directly as
features. Which network it runs is a name of the registry
(:mod:`bob.learn.pytorch.pretrained`); where its weights come from is decided
by :mod:`bob.learn.pytorch.weights`; the embedding itself is computed by
one :class:`~bob.learn.pytorch.pipeline.EmbeddingPipeline`.
"""
import logging
import os
import threading
import uuid
import warnings
from collections.abc import Iterable, Mapping
from typing import Any, Callable, Optional, Union

import numpy
import torch

from ... import io, pretrained, windows
from ...bob_imports import Preprocessor
from ...devices import check_device
from ...embedding import whole_number
from ...weights import ensure_model_file, load_network_file
from ...pipeline import EmbeddingPipeline
from ...runtimes import build_runtime, check_runtime_name
from ...vad import VoiceActivity, get_vad

__all__ = ["EmbeddingExtractor", "DeviceLike", "PathLike"]

logger = logging.getLogger(__name__)

DeviceLike = Union[str, torch.device]
PathLike = Union[str, "os.PathLike[str]"]


class EmbeddingExtractor(Preprocessor):
    """Embed speech with a registered speaker network.

    Parameters
    ----------
    network : str or PretrainedNetwork
        A name of the registry (``"dltresnet34"``, ``"resnet34"``, or one
        registered by the user) or a record.
    model_file : str or os.PathLike, optional
        Checkpoint to load. By default the user setting named by the record's
        ``path_key``, else the package data folder, downloading the released
        file there when it is missing.
    num_classes, bn_dim : int, optional
        Training speakers and embedding size of the checkpoint (the record's
        by default); needed to build the network before loading it.
    device : str or torch.device, optional
        Where the network runs; CPU by default.
    trust_checkpoint : bool
        Allow full unpickling of the model file. Only for files you trust:
        unpickling can run arbitrary code.
    backend : {"auto", "onnxruntime", "mnn", "eager"}
        Runtime of the network's frame body on the CPU
        (:func:`~bob.learn.pytorch.runtimes.build_runtime`): by default ONNX
        Runtime when installed (the ``fast`` extra), else eager PyTorch;
        ``"mnn"`` only when named (the ``mnn`` extra).
    test : bool
        Load nothing and keep the randomly initialised network in train mode,
        as the original did for its size-only unit tests. The embeddings are
        meaningless and depend on batch composition.
    vad : {None, "energy", "silero"} or callable
        Voice activity detection before the embedding (:mod:`bob.learn.pytorch.vad`):
        with one, only the spectrogram frames labelled speech are embedded
        (:func:`bob.learn.pytorch.windows.embed_speech`). None (the default)
        embeds every frame, as the original.

    Examples
    --------
    >>> import numpy
    >>> extractor = EmbeddingExtractor("resnet34", test=True)
    >>> audio = (16000, numpy.random.RandomState(0).randint(-3000, 3000, 16000).astype("int16"))
    >>> extractor(audio).shape
    (1, 128)
    """

    def __init__(
        self,
        network: pretrained.NetworkLike = "dltresnet34",
        model_file: Optional[PathLike] = None,
        *,
        num_classes: Optional[int] = None,
        bn_dim: Optional[int] = None,
        device: Optional[DeviceLike] = None,
        trust_checkpoint: bool = False,
        backend: str = "auto",
        test: bool = False,
        vad: Any = None,
    ) -> None:
        self.vad = get_vad(vad)
        self.pretrained = pretrained.get(network)
        self.num_classes = whole_number("num_classes", self.pretrained.num_classes if num_classes is None else num_classes, 1)
        self.bn_dim = whole_number("bn_dim", self.pretrained.embedding_dim if bn_dim is None else bn_dim, 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            super().__init__(min_preprocessed_file_size=self.bn_dim)
        self.model_file = model_file
        self.test = test
        self.trust_checkpoint = trust_checkpoint
        self.device = check_device("cpu" if device is None else device)
        self.backend = check_runtime_name(backend)
        self.model_path: Optional[str] = None
        # copies made by pickling share this token: a process may load their network once for all of them
        self.instance_token = uuid.uuid4().hex
        self._lock = threading.Lock()
        self._pipeline: Optional[EmbeddingPipeline] = None
        if test:
            module = self.pretrained.build(self.num_classes, self.bn_dim).to(self.device)
            self._pipeline = EmbeddingPipeline(self.pretrained, module, device=self.device)
        else:
            self.model_path = ensure_model_file(self.pretrained, model_file, trust=trust_checkpoint)

    # -- the network and its pipeline, loaded on first use ----------------------------------------

    @property
    def pipeline(self) -> EmbeddingPipeline:
        """The embedding pipeline, with the network loaded from the model file on first access."""
        if self._pipeline is None:
            with self._lock:
                if self._pipeline is None:
                    module = self._load_network()
                    self._pipeline = EmbeddingPipeline(self.pretrained, module, self._build_runtime(module), self.device)
        return self._pipeline

    @property
    def network(self) -> torch.nn.Module:
        """The network in ``emb`` mode (eval mode once loaded from a file)."""
        return self.pipeline.module

    @property
    def runtime(self) -> str:
        """Runtime of the network's frame body: ``"onnxruntime"``, ``"mnn"`` or ``"eager"``."""
        return self.pipeline.runtime_name

    def rebuild_runtime(self) -> str:
        """Build the runtime again from the network's current weights, device and torch's thread count.

        Call it after changing the weights in place (fine-tuning, loading
        another state dict) or :func:`torch.set_num_threads`: the runtime
        holds a copy of the weights and of the thread count of the moment it
        was built. Returns the runtime's name.
        """
        pipeline = self.pipeline
        with self._lock:
            pipeline.runtime = self._build_runtime(pipeline.module)
        return pipeline.runtime_name

    def _build_runtime(self, module: torch.nn.Module) -> Any:
        if module.training:
            return None  # train mode runs eagerly anyway
        return build_runtime(module, self.backend, self.pretrained.front_end.bins)

    def _load_network(self) -> torch.nn.Module:
        return load_network_file(
            self.pretrained, self.model_path, self.device,
            num_classes=self.num_classes, bn_dim=self.bn_dim, trust_checkpoint=self.trust_checkpoint,
        )

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_lock")
        if not self.test:
            state["_pipeline"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- embedding -------------------------------------------------------------------------

    def __call__(self, audio: Any, annotations: Optional[Mapping] = None) -> numpy.ndarray:
        """Embed one utterance.

        Recordings of ``pipeline.streaming_min_frames`` frames or more are
        embedded block by block in bounded memory, with the same result within
        float32 rounding (:mod:`bob.learn.pytorch.pipeline`).

        Parameters
        ----------
        audio : tuple
            ``(rate, samples)``: mono int or float samples at any whole rate
            (resampled to the network's rate).
        annotations : dict, optional
            Ignored (accepted for the bob preprocessor interface).

        Returns
        -------
        numpy.ndarray
            float32 ``(1, D)`` embedding of unit norm.

        Raises
        ------
        TypeError
            If ``audio`` is not a ``(rate, samples)`` pair of numbers or
            ``annotations`` is neither None nor a mapping.
        ValueError
            If the audio is empty, multi-channel, not finite, has an invalid
            rate or is shorter than the network's ``min_frames`` (37 frames,
            0.385 s, for the released networks).
        """
        if annotations is not None and not isinstance(annotations, Mapping):
            raise TypeError(f"annotations must be None or a dict, got {type(annotations).__name__}")
        if self.vad is not None:
            return self.embed_speech(audio)[0]
        return self.pipeline.embed(audio)

    def embed_many(self, audios: Iterable[Any], batch_size: int = 8) -> numpy.ndarray:
        """Embed many utterances; row ``i`` equals ``self(audios[i])[0]`` within rounding.

        Utterances with the same number of spectrogram frames run through the
        network together, at most ``batch_size`` at a time, without padding
        (see :meth:`bob.learn.pytorch.pipeline.EmbeddingPipeline.embed_many`).

        Parameters
        ----------
        audios : iterable of tuple
            ``(rate, samples)`` pairs. An iterator is read into a list first.
        batch_size : int
            Largest number of utterances per forward pass.

        Returns
        -------
        numpy.ndarray
            float32 ``(len(audios), D)``.

        Raises
        ------
        ValueError
            If ``batch_size`` is not positive, or an utterance is invalid or
            too short (the message names its index).
        """
        if self.vad is not None:
            return numpy.vstack([self(audio) for audio in audios])
        return self.pipeline.embed_many(audios, batch_size)

    # -- what gets embedded: speech only, windows, segments (bob.learn.pytorch.windows) ---------

    def voice_activity(self, audio: Any) -> VoiceActivity:
        """Speech segments (seconds) and 10 ms frame labels of ``(rate, samples)`` by this extractor's VAD."""
        if self.vad is None:
            raise ValueError("this extractor has no VAD: create it with vad='energy', 'silero' or a callable")
        return windows.speech_activity(self.vad, audio)

    def embed_speech(self, audio: Any, labels: Optional[Any] = None) -> tuple:
        """The embedding of the speech frames only, and which spectrogram frames were kept.

        Uses ``labels`` (0/1 per 10 ms frame) when given, else the
        extractor's VAD (``"energy"`` when it has none); see
        :func:`bob.learn.pytorch.windows.embed_speech`. Returns
        ``(embedding (1, D), kept (T,) bool)``.
        """
        return windows.embed_speech(self.pipeline, audio, self.vad or "energy", labels)

    def embed_windows(self, audio: Any, window: float, step: float) -> tuple:
        """Embeddings ``(N, D)`` of ``window``-second windows every ``step`` seconds, and times ``(N, 2)``.

        Row ``i`` equals the whole-recording embedding (without VAD) of
        exactly its samples within 1e-5 (:func:`bob.learn.pytorch.windows.embed_windows`).
        """
        return windows.embed_windows(self.pipeline, audio, window, step)

    def embed_segments(self, audio: Any, segments: Any) -> numpy.ndarray:
        """Embeddings ``(N, D)`` of ``(start, end[, label])`` segments in seconds, each equal to its crop's.

        See :func:`bob.learn.pytorch.windows.embed_segments`; pool by label
        with :func:`bob.learn.pytorch.windows.pool_by_label`.
        """
        return windows.embed_segments(self.pipeline, audio, segments)

    def spectrogram(self, audio: Any) -> numpy.ndarray:
        """The float64 ``(T, bins)`` spectrogram of ``(rate, samples)``, checked to be long enough."""
        return self.pipeline.spectrogram(audio)

    def extract_embeddings(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        specs: Any,
        L: int,
        batch_size: int = 1,
        cuda_flag: int = 0,
        min_length: int = 30,
    ) -> numpy.ndarray:
        """Embed a spectrogram chunk by chunk, as the original.

        With ``model`` the extractor's own network, the embedding goes through
        the pipeline (its runtime; a long single chunk streamed); any other
        model runs exactly as given.

        Parameters
        ----------
        model : torch.nn.Module
            A network in ``emb`` mode, usually ``self.network``.
        specs : array_like
            ``(T, bins)`` spectrogram.
        L : int
            Chunk length in frames; 0 for a single chunk.
        batch_size : int
            Chunks per forward pass.
        cuda_flag : int
            Ignored; the input goes to the device of ``model``.
        min_length : int
            A trailing remainder of at most this many frames is dropped.

        Returns
        -------
        numpy.ndarray
            float32 ``(n_chunks, D)``. Chunks shorter than the network's
            ``min_frames`` are dropped (the original returned NaN rows for them).
        """
        pipeline = self.pipeline
        forward = None if model is pipeline.module else model
        return pipeline.embed_spectrogram(specs, L, batch_size, min_length, forward=forward)

    # -- storage ---------------------------------------------------------------------------

    def write_data(self, data: Any, data_file: PathLike, compression: int = 0) -> None:
        """Write ``data`` to HDF5 dataset ``feats`` (float64), atomically."""
        io.write_embedding(data, data_file)

    def read_data(self, data_file: PathLike) -> numpy.ndarray:
        """Read dataset ``feats`` back (float64)."""
        return io.read_embedding(data_file)

    def __repr__(self) -> str:
        source = "random weights (test=True)" if self.test else self.model_path
        return f"{type(self).__name__}({self.pretrained.title}, model={source!r}, device='{self.device}')"
