"""One path from samples to embeddings, shared by single calls, batches, long files and the command line.

:class:`EmbeddingPipeline` holds a network (its registry record and its
module) and the runtime its frame body runs in. Every embedding the package
computes goes through it:

1. **samples to frames**: :meth:`~EmbeddingPipeline.source` checks a
   ``(rate, samples)`` pair, applies the original's ``2**15`` rule and
   resampling, and gives a frame source whose spectrogram is computed on
   demand (:mod:`~bob.learn.pytorch.streaming`), with the network's front end
   (:class:`~bob.learn.pytorch.frontend.FrontEnd`);
2. **frames to embedding**: :meth:`~EmbeddingPipeline.embed_source` is the one
   place that chooses how: a recording of at least :data:`STREAMING_MIN_FRAMES`
   frames is embedded block by block in bounded memory
   (:func:`~bob.learn.pytorch.streaming.embed_long`), anything shorter in one
   pass (:func:`~bob.learn.pytorch.embedding.embed_chunks`); chunked
   embeddings (``L > 0``) follow the original's chunk and batch plan
   (:func:`~bob.learn.pytorch.embedding.embed_spectrogram`);
3. **the network**: the frame body runs in the runtime built when the model
   was loaded (:mod:`~bob.learn.pytorch.runtimes`), the pooling and the
   embedding layer in NumPy behind it. A network in train mode (any submodule), or not
   in ``emb`` mode, runs exactly as it is, eagerly, one utterance per pass.

The runtime holds the weights of the moment it was built: after changing the
weights in place, build a new one (``EmbeddingExtractor.rebuild_runtime``).
"""
import logging
import os
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy
import torch

from .architectures.utils import SpeakerEmbeddingNet
from .embedding import as_list, check_specs, embed_chunks, embed_spectrogram, whole_number
from .frontend import warn_if_silent
from .pretrained import PretrainedNetwork
from .runtimes import EagerRuntime, Runtime, check_forked_child, embedding_head, runtime_name
from .streaming import STREAMING_MIN_FRAMES, SignalSpectrogram, SpectrogramArray, embed_long, signal_source

__all__ = ["EmbeddingPipeline", "MAX_BATCH_FRAMES", "STREAMING_MIN_FRAMES"]

logger = logging.getLogger(__name__)

#: Most spectrogram frames per forward pass in :meth:`EmbeddingPipeline.embed_many`: batching
#: short utterances up to about this size is 1.3x faster on the CPU; larger batches only cost memory.
MAX_BATCH_FRAMES = 3000

Forward = Callable[[torch.Tensor], torch.Tensor]


class EmbeddingPipeline:
    """Samples, spectrograms and embeddings for one network.

    Parameters
    ----------
    network : PretrainedNetwork
        The network's registry record (front end, geometry, sizes).
    module : SpeakerEmbeddingNet
        The network itself, in ``emb`` mode.
    runtime : callable, optional
        Its frame body in a runtime (:func:`~bob.learn.pytorch.runtimes.build_runtime`);
        eager by default.
    device : torch.device, optional
        Where inputs go when the module has no parameters (CPU by default).
    """

    #: Whole-utterance embeddings of at least this many frames are computed
    #: block by block in bounded memory.
    streaming_min_frames: int = STREAMING_MIN_FRAMES

    def __init__(
        self,
        network: PretrainedNetwork,
        module: torch.nn.Module,
        runtime: Optional[Runtime] = None,
        device: Optional[torch.device] = None,
    ) -> None:
        self.network = network
        self.module = module
        self.runtime = EagerRuntime(module) if runtime is None else runtime
        self._default_device = device or torch.device("cpu")
        #: The process that loaded the network: a child forked from it cannot run every runtime.
        self.loaded_in = os.getpid()

    @property
    def device(self) -> torch.device:
        """Where the module's parameters are, hence where inputs are sent."""
        return _device_of(self.module, self._default_device)

    @property
    def runtime_name(self) -> str:
        """The runtime the frame body runs in: ``"onnxruntime"``, ``"mnn"`` or ``"eager"``."""
        return runtime_name(self.runtime)

    # -- samples to frames: the one entry of a recording ------------------------------------------

    def source(self, audio: Any) -> SignalSpectrogram:
        """Checked frame source of ``(rate, samples)``, long enough for the network.

        Every recording enters the pipeline here: the checks, the ``2**15``
        rule and the resampling are :func:`~bob.learn.pytorch.frontend.checked_samples`,
        with the network's front end; a recording shorter than the network's
        ``min_frames`` is refused and digital silence logged.
        """
        source = signal_source(audio, self.network.front_end)
        self.require_minimum_length(source.n_samples)
        warn_if_silent(source.samples, source.scale)
        return source

    def spectrogram(self, audio: Any) -> numpy.ndarray:
        """The float64 ``(T, bins)`` spectrogram of ``(rate, samples)``, checked to be long enough."""
        source = self.source(audio)
        return source.frames(0, source.n_frames)

    def require_minimum_length(self, n_samples: int) -> None:
        """Raise ``ValueError`` if ``n_samples`` at the network's rate give fewer than its ``min_frames`` frames."""
        front_end, min_frames = self.network.front_end, self.network.min_frames
        needed, rate = front_end.samples_for(min_frames), front_end.sample_rate
        if n_samples >= needed:
            return
        raise ValueError(
            f"audio too short: {n_samples / rate:.3f} s ({n_samples} samples at {rate} Hz, "
            f"{front_end.n_frames(n_samples)} frames); the network needs at least {min_frames} frames, i.e. "
            f"{needed} samples ({needed / rate:.3f} s) at {rate} Hz"
        )

    # -- the network ---------------------------------------------------------------------------

    def runs_as_built(self) -> bool:
        """True when the module is as the runtime was built for: every submodule in eval mode, ``emb`` mode.

        Otherwise every pass runs the module itself, eagerly (train-mode
        BatchNorm, for instance, must see exactly the original's batches).
        """
        module = self.module
        return (
            isinstance(module, SpeakerEmbeddingNet)
            and getattr(module, "net_type", None) == "emb"
            and not any(submodule.training for submodule in module.modules())
        )

    def forward(self) -> Forward:
        """Callable mapping the standardised input ``(B, 1, T, F)`` to embeddings ``(B, D)``."""
        if not self.runs_as_built() or isinstance(self.runtime, EagerRuntime):
            check_forked_child("eager", self.loaded_in)
            return self.module
        check_forked_child(self.runtime_name, self.loaded_in)
        runtime, module = self.runtime, self.module
        return lambda x: embedding_head(module, runtime(x))

    # -- frames to embedding: the one place that chooses how -------------------------------

    def streams(self, n_frames: int) -> bool:
        """Whether a whole-utterance embedding of ``n_frames`` frames is computed block by block.

        The one streaming decision: at least :attr:`streaming_min_frames`
        frames, and a module that runs as built (:meth:`runs_as_built`).
        """
        return n_frames >= self.streaming_min_frames and self.runs_as_built()

    def embed_source(self, source: Any) -> numpy.ndarray:
        """The whole-utterance embedding ``(1, D)`` of a frame source (streamed when long)."""
        if self.streams(source.n_frames):
            check_forked_child(self.runtime_name, self.loaded_in)
            return embed_long(self.module, self.runtime, source, self.network, device=self.device)
        return embed_chunks(self.forward(), [source.frames(0, source.n_frames)], self.device)

    def embed(self, audio: Any) -> numpy.ndarray:
        """float32 ``(1, D)`` unit-norm embedding of one ``(rate, samples)`` recording."""
        return self.embed_source(self.source(audio))

    def embed_spectrogram(
        self, specs: Any, L: int = 0, batch_size: int = 1, min_length: int = 30, forward: Optional[Forward] = None
    ) -> numpy.ndarray:
        """Embed a spectrogram chunk by chunk as the original's ``extract_embeddings`` (one row per chunk).

        With ``forward`` given (another model), it runs exactly as given, chunk
        by chunk; otherwise a single chunk (``L=0`` or ``L >= T``) long enough
        for the network goes through :meth:`embed_source`.
        """
        bins = self.network.front_end.bins
        if forward is None:
            specs = check_specs(specs, bins)
            L = whole_number("L", L)
            min_length = whole_number("min_length", min_length)
            batch_size = whole_number("batch_size", batch_size, minimum=1)
            if (L == 0 or L >= len(specs)) and len(specs) >= self.network.min_frames:
                return self.embed_source(SpectrogramArray(specs, bins))
        device = self.device if forward is None else _device_of(forward, self._default_device)
        return embed_spectrogram(
            forward or self.forward(), specs, L, batch_size, min_length, device=device,
            min_frames=self.network.min_frames, bins=bins,
        )

    def embed_many(self, audios: Any, batch_size: int = 8) -> numpy.ndarray:
        """Embed many recordings; row ``i`` equals ``embed(audios[i])[0]`` within float32 rounding.

        Each recording enters through :meth:`source`. Recordings with the same
        number of frames are standardised one by one and run together, at
        most ``batch_size`` (and about :data:`MAX_BATCH_FRAMES` frames) at a
        time, without padding. A module that does not run as built (train
        mode) embeds one recording per pass. Recordings that stream
        (:meth:`streams`) are embedded one by one through :meth:`embed_source`.
        Errors name the recording's index.
        """
        batch_size = whole_number("batch_size", batch_size, minimum=1)
        if not isinstance(audios, Sequence):
            audios = as_list("audios", audios, "(rate, samples) pairs")
        if len(audios) == 0:
            return numpy.zeros((0, self.network.embedding_dim), dtype=numpy.float32)
        sources = [_indexed(index, self.source, audio) for index, audio in enumerate(audios)]
        groups: Dict[int, List[int]] = {}
        for index, source in enumerate(sources):
            groups.setdefault(source.n_frames, []).append(index)
        result: List[Optional[numpy.ndarray]] = [None] * len(audios)
        as_built, forward = self.runs_as_built(), self.forward()
        for n_frames, members in groups.items():
            if self.streams(n_frames):
                for index in members:
                    result[index] = _indexed(index, self.embed_source, sources[index])[0]
                continue
            size = min(batch_size, max(1, MAX_BATCH_FRAMES // max(n_frames, 1))) if as_built else 1
            for start in range(0, len(members), size):
                batch = members[start : start + size]
                specs = [sources[i].frames(0, n_frames) for i in batch]
                for i, row in zip(batch, embed_chunks(forward, specs, self.device)):
                    result[i] = row
        return numpy.stack(result)


def _indexed(index: int, function: Callable, audio: Any) -> Any:
    """``function(audio)``, with errors naming the recording's index in the batch."""
    try:
        return function(audio)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"audios[{index}]: {exc}") from exc


def _device_of(module: Any, default: torch.device) -> torch.device:
    parameters = getattr(module, "parameters", None)
    if parameters is not None:
        for parameter in parameters():
            return parameter.device
    return default
