"""Speaker-embedding extractors for bob: audio in, 128-d embedding out.

:class:`DltResNetExtractor` and :class:`ResNetExtractor` are legacy bob
*preprocessors*: ``extractor((rate, samples))`` returns the L2-normalised
embedding of the whole utterance as a float32 ``(1, 128)`` array, and
``write_data``/``read_data`` store it in HDF5, so that the embeddings can serve
directly as features (see the package guide).
"""
import logging
import os
import threading
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable, Dict, List, Optional, Union

import numpy
import torch

from ... import io
from ...bob_imports import Preprocessor
from ...checkpoint import clean_state_dict, load_state_dict_strictly, read_checkpoint
from ...devices import check_device
from ...model_files import ensure_model_file
from .embedding import MIN_FRAMES, as_list, check_specs, embed_chunks, embed_spectrogram, whole_number
from .fast import FastForward, supports_fast_path
from .frontend import TARGET_RATE, frame_geometry, mono_samples, prepare_signal, spectrogram, unpack_audio, warn_if_silent
from .streaming import STREAMING_MIN_FRAMES, SignalSpectrogram, SpectrogramArray, embed_long, signal_source
from .weights import DLTRESNET34_VOXCELEB, RESNET34_VOXCELEB, PretrainedModel

__all__ = ["DltResNetExtractor", "ResNetExtractor"]

logger = logging.getLogger(__name__)

#: Most spectrogram frames per forward pass in :meth:`DltResNetExtractor.embed_many`: batching
#: short utterances up to about this size is 1.3x faster on the CPU; larger batches only cost memory.
MAX_BATCH_FRAMES = 3000

DeviceLike = Union[str, torch.device]


def _select_device(device: Optional[DeviceLike], cuda_flag: int) -> torch.device:
    """Map the legacy ``cuda_flag`` and the ``device`` argument to one device (CPU by default)."""
    if cuda_flag not in (0, 1, False, True):
        raise ValueError(f"cuda_flag must be 0 or 1, got {cuda_flag!r}; prefer device='cpu' or device='cuda'")
    if cuda_flag:
        warnings.warn("cuda_flag=1 is deprecated; pass device='cuda' instead", DeprecationWarning, stacklevel=3)
        if device is not None and torch.device(device).type != "cuda":
            raise ValueError(f"cuda_flag=1 conflicts with device={device!r}; pass only device")
        return torch.device("cuda" if device is None else device)
    return torch.device("cpu" if device is None else device)


def _require_cuda_device(device: torch.device) -> None:
    """Raise ``RuntimeError`` if ``device`` is a CUDA device that this PyTorch cannot reach."""
    if device.type != "cuda":
        return
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"device '{device}' asked for, but PyTorch finds no CUDA device (a CPU-only build of torch, or no "
            "GPU visible to this process); use device='cpu'"
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise RuntimeError(
            f"device '{device}' asked for, but PyTorch finds {count} CUDA device(s): cuda:0 to cuda:{count - 1}"
        )


def _require_minimum_length(n_samples: int) -> None:
    """Raise ``ValueError`` if a 16 kHz signal of ``n_samples`` gives fewer than :data:`MIN_FRAMES` frames."""
    win_length, win_shift, _ = frame_geometry(TARGET_RATE)
    needed = win_length + (MIN_FRAMES - 1) * win_shift
    if n_samples >= needed:
        return
    frames = 0 if n_samples < win_length else 1 + (n_samples - win_length) // win_shift
    raise ValueError(
        f"audio too short: {n_samples / TARGET_RATE:.3f} s ({n_samples} samples at {TARGET_RATE} Hz, "
        f"{frames} frames); the network needs at least {MIN_FRAMES} frames, i.e. {needed} samples "
        f"({needed / TARGET_RATE:.3f} s) at {TARGET_RATE} Hz"
    )


class DltResNetExtractor(Preprocessor):
    """Embed speech with a dilated ResNet-34 (or a ResNet-34) trained on VoxCeleb.

    Parameters
    ----------
    model_file : str or os.PathLike, optional
        Checkpoint to load. By default the user setting
        ``bob.learn.pytorch.extractor.audio.drn_modelpath`` (``rn_modelpath``
        with ``use_res=True``), else the package data folder, downloading the
        released model there when it is missing.
    num_classes : int
        Training speakers of the checkpoint (1211 for the released models);
        needed to build the network before loading it.
    bn_dim : int
        Embedding size (128 for the released models).
    cuda_flag : int
        Deprecated: 1 means ``device="cuda"``.
    test : bool
        Load nothing and keep the randomly initialised network in train mode,
        as the original did for its size-only unit tests. The embeddings are
        meaningless and depend on batch composition.
    use_res : bool
        Use the ResNet-34 model instead of the DltResNet-34 one.
    device : str or torch.device, optional
        Where the network runs; CPU by default.
    trust_checkpoint : bool
        Allow full unpickling of the model file. Only for files you trust:
        unpickling can run arbitrary code.
    backend : {"auto", "mnn", "onnxruntime", "torchscript", "eager"}
        Form of the network on the CPU (see
        :func:`~bob.learn.pytorch.preprocessor.audio.fast.build_frame_runner`):
        by default MNN, or ONNX Runtime on processors with AVX-512, when
        installed (the ``fast`` extra), else TorchScript.
        Every form is checked against the eager network when built.

    Examples
    --------
    >>> import numpy
    >>> extractor = DltResNetExtractor(test=True)
    >>> audio = (16000, numpy.random.RandomState(0).randint(-3000, 3000, 16000).astype("int16"))
    >>> embedding = extractor(audio)
    >>> embedding.shape, embedding.dtype
    ((1, 128), dtype('float32'))
    """

    #: Whole-utterance embeddings of at least this many frames are computed
    #: block by block in bounded memory (see :mod:`.streaming`).
    streaming_min_frames: int = STREAMING_MIN_FRAMES

    def __init__(
        self,
        model_file: Optional[Union[str, "os.PathLike[str]"]] = None,
        num_classes: int = 1211,
        bn_dim: int = 128,
        cuda_flag: int = 0,
        test: bool = False,
        use_res: bool = False,
        *,
        device: Optional[DeviceLike] = None,
        trust_checkpoint: bool = False,
        backend: str = "auto",
    ) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            super().__init__(min_preprocessed_file_size=bn_dim)
        self.model_file = model_file
        self.num_classes = whole_number("num_classes", num_classes, minimum=1)
        self.bn_dim = whole_number("bn_dim", bn_dim, minimum=1)
        self.cuda_flag = int(cuda_flag)
        self.test = test
        self.use_res = use_res
        self.trust_checkpoint = trust_checkpoint
        self.device = _select_device(device, cuda_flag)
        check_device(self.device)
        self.pretrained: PretrainedModel = RESNET34_VOXCELEB if use_res else DLTRESNET34_VOXCELEB
        self._lock = threading.Lock()
        self._network: Optional[torch.nn.Module] = None
        self._fast = FastForward(backend)  # checks the name (and that ONNX Runtime is there if named)
        self.backend = self._fast.backend
        self.model_path: Optional[str] = None
        if test:
            self._network = self.pretrained.build(num_classes, bn_dim).to(self.device)
        else:
            self.model_path = ensure_model_file(self.pretrained, model_file, trust=trust_checkpoint)

    # -- the network, loaded on first use ---------------------------------------------------

    @property
    def network(self) -> torch.nn.Module:
        """The network in ``emb`` mode, loaded from the model file on first access (eval mode)."""
        if self._network is None:
            with self._lock:
                if self._network is None:
                    self._network = self._load_network()
        return self._network

    def _load_network(self) -> torch.nn.Module:
        network = self.pretrained.build(self.num_classes, self.bn_dim)
        state = clean_state_dict(
            read_checkpoint(self.model_path, map_location=self.device, trust=self.trust_checkpoint),
            source=self.model_path,
        )
        load_state_dict_strictly(network, state, source=self.model_path, hint=self._mismatch_hint(state))
        logger.info("loaded %s from %s", self.pretrained.title, self.model_path)
        return network.to(self.device).eval()

    def _mismatch_hint(self, state: Mapping) -> str:
        has_dilated_stem = "conv2.weight" in state
        if has_dilated_stem and self.use_res:
            return "It looks like a DltResNet checkpoint: use DltResNetExtractor (use_res=False)."
        if not has_dilated_stem and "conv1.weight" in state and not self.use_res:
            return "It looks like a ResNet checkpoint: use ResNetExtractor or use_res=True."
        return "Check num_classes and bn_dim against the training run."

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_lock")
        state.pop("_fast")
        if not self.test:
            state["_network"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._fast = FastForward(self.__dict__.setdefault("backend", "auto"))

    # -- embedding -------------------------------------------------------------------------

    def __call__(self, audio: Any, annotations: Optional[Mapping] = None) -> numpy.ndarray:
        """Embed one utterance.

        The network runs in its fastest exact form (see
        :mod:`bob.learn.pytorch.preprocessor.audio.fast`); recordings of
        :attr:`streaming_min_frames` frames or more are embedded block by block
        in bounded memory (:mod:`bob.learn.pytorch.preprocessor.audio.streaming`),
        with the same result within float32 rounding.

        Parameters
        ----------
        audio : tuple
            ``(rate, samples)``: mono int or float samples at any whole rate
            (resampled to 16 kHz).
        annotations : dict, optional
            Ignored (accepted for the bob preprocessor interface).

        Returns
        -------
        numpy.ndarray
            float32 ``(1, 128)`` embedding of unit norm.

        Raises
        ------
        TypeError
            If ``audio`` is not a ``(rate, samples)`` pair of numbers or
            ``annotations`` is neither None nor a mapping.
        ValueError
            If the audio is empty, multi-channel, not finite, has an invalid
            rate or is shorter than 37 frames (0.385 s).
        """
        if annotations is not None and not isinstance(annotations, Mapping):
            raise TypeError(f"annotations must be None or a dict, got {type(annotations).__name__}")
        source = self._signal_source(audio)
        network = self.network
        device = _device_of(network, self.device)
        if source.n_frames >= self.streaming_min_frames and supports_fast_path(network):
            return embed_long(network, self._fast.frames(network), source, device=device)
        # the spectrogram of a checked signal: finite, float64, long enough, so one chunk as in extract_embeddings
        return embed_chunks(self._forward_for(network), [source.frames(0, source.n_frames)], device)

    def embed_many(self, audios: Iterable[Any], batch_size: int = 8) -> numpy.ndarray:
        """Embed many utterances; row ``i`` equals ``self(audios[i])[0]`` within rounding.

        Utterances with the same number of spectrogram frames are standardised
        one by one and run through the network together, at most
        ``batch_size`` (and about :data:`MAX_BATCH_FRAMES` frames) at a time;
        nothing is padded, so the results are those of one-by-one calls (eval
        mode changes them only by float32 rounding). A network in train mode
        (``test=True``) embeds one utterance per pass, since its BatchNorm
        layers would mix the utterances of a batch.
        Only ``batch_size`` spectrograms are held at once; long recordings are
        embedded block by block as in :meth:`__call__`.

        Parameters
        ----------
        audios : iterable of tuple
            ``(rate, samples)`` pairs. An iterator is read into a list first
            (the utterances are grouped by length).
        batch_size : int
            Largest number of utterances per forward pass.

        Returns
        -------
        numpy.ndarray
            float32 ``(len(audios), 128)``.

        Raises
        ------
        ValueError
            If ``batch_size`` is not positive, or an utterance is invalid or
            too short (the message names its index).
        """
        batch_size = whole_number("batch_size", batch_size, minimum=1)
        if not isinstance(audios, Sequence):
            audios = as_list("audios", audios, "(rate, samples) pairs")
        if len(audios) == 0:
            return numpy.zeros((0, self.bn_dim), dtype=numpy.float32)
        network = self.network
        result: List[Optional[numpy.ndarray]] = [None] * len(audios)
        groups: Dict[int, List[int]] = {}
        for index, audio in enumerate(audios):
            groups.setdefault(_indexed(index, _frame_count, audio), []).append(index)
        forward = self._forward_for(network)
        device = _device_of(network, self.device)
        # in train mode, BatchNorm uses batch statistics: only one-by-one runs give one-by-one results
        training = any(module.training for module in network.modules())
        for n_frames, members in groups.items():
            if n_frames >= self.streaming_min_frames and supports_fast_path(network):
                for index in members:
                    result[index] = _indexed(index, self, audios[index])[0]
                continue
            size = 1 if training else min(batch_size, max(1, MAX_BATCH_FRAMES // max(n_frames, 1)))
            for start in range(0, len(members), size):
                batch = members[start : start + size]
                specs = [_indexed(i, self._whole_spectrogram, audios[i]) for i in batch]
                rows = embed_chunks(forward, specs, device)
                for i, row in zip(batch, rows):
                    result[i] = row
        return numpy.stack(result)

    def _forward_for(self, model: Any) -> Callable[[torch.Tensor], torch.Tensor]:
        """The fastest exact forward for ``model``: optimised only for this extractor's own network."""
        if model is self._network:
            return self._fast.embed(model)
        return model

    def _signal_source(self, audio: Any) -> SignalSpectrogram:
        """Validated frame source of ``(rate, samples)``, checked to be long enough."""
        record = self.pretrained
        source = signal_source(audio, record.win_length_ms, record.win_shift_ms, record.pre_emphasis_coeff)
        _require_minimum_length(source.n_samples)
        warn_if_silent(source.samples, source.scale)
        return source

    def _whole_spectrogram(self, audio: Any) -> numpy.ndarray:
        source = self._signal_source(audio)
        return source.frames(0, source.n_frames)

    def spectrogram(self, audio: Any) -> numpy.ndarray:
        """The float64 ``(T, 257)`` spectrogram of ``(rate, samples)``, checked to be long enough."""
        signal = prepare_signal(audio)
        _require_minimum_length(len(signal))
        warn_if_silent(signal)
        record = self.pretrained
        return spectrogram(
            signal, TARGET_RATE, record.win_length_ms, record.win_shift_ms, record.pre_emphasis_coeff, True
        )

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

        With ``model`` the extractor's own network in eval mode, the network
        runs in its optimised form, and a single chunk (``L=0`` or
        ``L >= len(specs)``) of :attr:`streaming_min_frames` frames or more is
        embedded block by block in bounded memory. Any other model, or the
        network in train mode, runs exactly as given.

        Parameters
        ----------
        model : torch.nn.Module
            A network in ``emb`` mode, usually ``self.network``.
        specs : array_like
            ``(T, 257)`` spectrogram.
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
            float32 ``(n_chunks, 128)``. Chunks shorter than 37 frames are
            dropped (the original returned NaN rows for them).
        """
        device = _device_of(model, self.device)
        if model is self._network and supports_fast_path(model):
            specs = check_specs(specs)
            single_chunk = isinstance(L, int) and not isinstance(L, bool) and (L == 0 or L >= len(specs))
            if single_chunk and len(specs) >= self.streaming_min_frames:
                return embed_long(model, self._fast.frames(model), SpectrogramArray(specs), device=device)
        return embed_spectrogram(self._forward_for(model), specs, L, batch_size, min_length, device=device)

    # -- storage ---------------------------------------------------------------------------

    def write_data(self, data: Any, data_file: Union[str, "os.PathLike[str]"], compression: int = 0) -> None:
        """Write ``data`` to HDF5 dataset ``feats`` (float64), atomically."""
        io.write_embedding(data, data_file)

    def read_data(self, data_file: Union[str, "os.PathLike[str]"]) -> numpy.ndarray:
        """Read dataset ``feats`` back (float64)."""
        return io.read_embedding(data_file)

    def __repr__(self) -> str:
        source = "random weights (test=True)" if self.test else self.model_path
        return f"{type(self).__name__}({self.pretrained.title}, model={source!r}, device='{self.device}')"


def _frame_count(audio: Any) -> int:
    """Spectrogram frames of ``(rate, samples)`` once at 16 kHz, without converting the samples."""
    rate, samples = unpack_audio(audio)
    n_samples = len(mono_samples(samples))
    if rate != TARGET_RATE:
        n_samples = round(n_samples * TARGET_RATE / rate)
    win_length, win_shift, _ = frame_geometry(TARGET_RATE)
    return 0 if n_samples < win_length else 1 + (n_samples - win_length) // win_shift


def _indexed(index: int, function: Callable, audio: Any) -> Any:
    """``function(audio)``, with errors naming the utterance's index in the batch."""
    try:
        return function(audio)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"audios[{index}]: {exc}") from exc


def _device_of(model: Any, default: torch.device) -> torch.device:
    parameters = getattr(model, "parameters", None)
    if parameters is not None:
        for parameter in parameters():
            return parameter.device
    return default


class ResNetExtractor(DltResNetExtractor):
    """The ResNet-34 variant of :class:`DltResNetExtractor` (``use_res=True``).

    Takes the same arguments; ``use_res`` may only be True.
    """

    def __init__(
        self,
        model_file: Optional[Union[str, "os.PathLike[str]"]] = None,
        num_classes: int = 1211,
        bn_dim: int = 128,
        cuda_flag: int = 0,
        test: bool = False,
        use_res: bool = True,
        *,
        device: Optional[DeviceLike] = None,
        trust_checkpoint: bool = False,
        backend: str = "auto",
    ) -> None:
        if not use_res:
            raise ValueError("ResNetExtractor always uses the ResNet-34; use DltResNetExtractor for the DltResNet")
        super().__init__(
            model_file,
            num_classes,
            bn_dim,
            cuda_flag,
            test,
            True,
            device=device,
            trust_checkpoint=trust_checkpoint,
            backend=backend,
        )
