"""Speaker-embedding extractors for bob: audio in, 128-d embedding out.

:class:`DltResNetExtractor` and :class:`ResNetExtractor` are legacy bob
*preprocessors*: ``extractor((rate, samples))`` returns the L2-normalised
embedding of the whole utterance as a float32 ``(1, 128)`` array, and
``write_data``/``read_data`` store it in HDF5, so that the embeddings can serve
directly as features (see the package guide).
"""
import logging
import threading
import warnings
from collections.abc import Mapping
from typing import Any, Callable, Optional, Sequence, Union

import numpy
import torch
from bob.bio.base.preprocessor import Preprocessor

from ... import io
from ...checkpoint import clean_state_dict, load_state_dict_strictly, read_checkpoint
from ...model_files import ensure_model_file
from .embedding import MIN_FRAMES, embed_spectrogram
from .frontend import TARGET_RATE, frame_geometry, prepare_signal, spectrogram
from .weights import DLTRESNET34_VOXCELEB, RESNET34_VOXCELEB, PretrainedModel

__all__ = ["DltResNetExtractor", "ResNetExtractor"]

logger = logging.getLogger(__name__)

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


def _minimum_audio_message(n_samples: int) -> str:
    win_length, win_shift, _ = frame_geometry(TARGET_RATE)
    needed = win_length + (MIN_FRAMES - 1) * win_shift
    frames = 0 if n_samples < win_length else 1 + (n_samples - win_length) // win_shift
    return (
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

    Examples
    --------
    >>> import numpy
    >>> extractor = DltResNetExtractor(test=True)
    >>> audio = (16000, numpy.random.RandomState(0).randint(-3000, 3000, 16000).astype("int16"))
    >>> embedding = extractor(audio)
    >>> embedding.shape, embedding.dtype
    ((1, 128), dtype('float32'))
    """

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
    ) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            super().__init__(min_preprocessed_file_size=bn_dim)
        self.model_file = model_file
        self.num_classes = num_classes
        self.bn_dim = bn_dim
        self.cuda_flag = int(cuda_flag)
        self.test = test
        self.use_res = use_res
        self.trust_checkpoint = trust_checkpoint
        self.device = _select_device(device, cuda_flag)
        self.pretrained: PretrainedModel = RESNET34_VOXCELEB if use_res else DLTRESNET34_VOXCELEB
        self._lock = threading.Lock()
        self._network: Optional[torch.nn.Module] = None
        self.model_path: Optional[str] = None
        if test:
            self._network = self.pretrained.build(num_classes, bn_dim).to(self.device)
        else:
            self.model_path = ensure_model_file(self.pretrained, model_file)

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
        if not self.test:
            state["_network"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- embedding -------------------------------------------------------------------------

    def __call__(self, audio: Any, annotations: Optional[Mapping] = None) -> numpy.ndarray:
        """Embed one utterance.

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
        specs = self.spectrogram(audio)
        return self.extract_embeddings(self.network, specs, 0)

    def embed_many(self, audios: Sequence[Any], batch_size: int = 8) -> numpy.ndarray:
        """Embed many utterances; row ``i`` equals ``self(audios[i])[0]`` within rounding.

        Parameters
        ----------
        audios : sequence of tuple
            ``(rate, samples)`` pairs.
        batch_size : int
            Utterances of equal length are run through the network together,
            at most this many at a time (never padded).

        Returns
        -------
        numpy.ndarray
            float32 ``(len(audios), 128)``.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size!r}")
        if len(audios) == 0:
            return numpy.zeros((0, self.bn_dim), dtype=numpy.float32)
        return numpy.vstack([self(audio) for audio in audios])

    def spectrogram(self, audio: Any) -> numpy.ndarray:
        """The float64 ``(T, 257)`` spectrogram of ``(rate, samples)``, checked to be long enough."""
        signal = prepare_signal(audio)
        win_length, win_shift, _ = frame_geometry(TARGET_RATE)
        if len(signal) < win_length + (MIN_FRAMES - 1) * win_shift:
            raise ValueError(_minimum_audio_message(len(signal)))
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
        return embed_spectrogram(model, specs, L, batch_size, min_length, device=_device_of(model, self.device))

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
    ) -> None:
        if not use_res:
            raise ValueError("ResNetExtractor always uses the ResNet-34; use DltResNetExtractor for the DltResNet")
        super().__init__(
            model_file, num_classes, bn_dim, cuda_flag, test, True, device=device, trust_checkpoint=trust_checkpoint
        )
