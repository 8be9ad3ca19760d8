"""The registry of pretrained networks: one record per network, everything else asks it.

A record holds what it takes to use a released network: the architecture
that builds it, the front end its weights were trained with, its time
geometry (stride and receptive field), the size of its embedding, where its
weight file is stored and downloaded from, and the user settings that
override those. Adding a network is one :func:`register` call with its record
and its architecture module; the extractors, the transformer, the command
line and the download machinery take it from here.

>>> sorted(names())
['dltresnet34', 'resnet34']
>>> get("drn34").title
'DltResNet-34'
"""
import functools
import math
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from .architectures.DltResNet import dltresnet34
from .architectures.ResNet import resnet34
from .frontend import BOB_AP_FRONT_END, FrontEnd

__all__ = ["PretrainedNetwork", "DATA_DIR", "register", "unregister", "get", "names", "records", "NetworkLike"]

#: Folder of the package where weight files are stored by default.
DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "preprocessor", "audio", "data")


@dataclass(frozen=True)
class PretrainedNetwork:
    """A released network and everything needed to use it.

    Attributes
    ----------
    name : str
        Registry name (``dltresnet34``), also the command line's ``--network``.
    title : str
        Human-readable name, used in messages.
    architecture : callable
        Builds the network: ``architecture(num_classes=..., tp="emb", bn_dim=...)``
        returns a :class:`~bob.learn.pytorch.architectures.utils.SpeakerEmbeddingNet`
        (``forward_frames`` up to the pooling, ``em`` the embedding layer).
    front_end : FrontEnd
        Sampling rate and spectrogram settings the weights expect.
    time_stride : int
        Input frames per output step of ``forward_frames``.
    receptive_field : int
        Input frames on each side of an output step's own ``time_stride``
        frames that can change it (checked against the network by the tests).
    min_frames : int
        Fewest input frames that give an embedding: two output steps, for the
        pooled standard deviation (checked against :meth:`output_steps`).
    embedding_dim, num_classes : int
        Sizes the weight file was trained with.
    filename : str
        Name of the weight file in :data:`DATA_DIR`.
    url : str
        Default download address.
    sha256 : str or None
        Digest of the file at ``url``, when known.
    path_key, url_key, sha256_key : str
        User settings (``bob config set``) overriding the file, the address and the digest.
    aliases : tuple of str
        Other names :func:`get` accepts (the original's short names).
    """

    name: str
    title: str
    architecture: Callable[..., nn.Module]
    filename: str
    url: str
    path_key: str
    url_key: str
    sha256_key: str
    front_end: FrontEnd = BOB_AP_FRONT_END
    time_stride: int = 32
    receptive_field: int = 600
    min_frames: int = 37
    embedding_dim: int = 128
    num_classes: int = 1211
    sha256: Optional[str] = None
    aliases: Tuple[str, ...] = field(default=())

    @property
    def default_path(self) -> str:
        """Where the weight file is stored when no setting overrides it."""
        return os.path.join(DATA_DIR, self.filename)

    @property
    def halo_steps(self) -> int:
        """Output steps of context that cover the receptive field, plus a margin of two."""
        return math.ceil(self.receptive_field / self.time_stride) + 2

    def output_steps(self, n_frames: int) -> int:
        """Time steps of ``forward_frames`` for ``n_frames`` input frames, derived from the architecture.

        Computed once per length on PyTorch's ``meta`` device (shapes only, no arithmetic).
        """
        return _output_steps(self, int(n_frames))

    @property
    def bn_dim(self) -> int:
        """The original's name of :attr:`embedding_dim`."""
        return self.embedding_dim

    def build(self, num_classes: Optional[int] = None, bn_dim: Optional[int] = None, tp: str = "emb") -> nn.Module:
        """A randomly initialised network of this record's architecture."""
        return self.architecture(
            num_classes=self.num_classes if num_classes is None else num_classes,
            tp=tp,
            bn_dim=self.embedding_dim if bn_dim is None else bn_dim,
        )


NetworkLike = Union[str, PretrainedNetwork]


@functools.lru_cache(maxsize=None)
def _meta_network(record: PretrainedNetwork) -> nn.Module:
    with torch.device("meta"):
        return record.build().eval()


@functools.lru_cache(maxsize=1024)
def _output_steps(record: PretrainedNetwork, n_frames: int) -> int:
    if n_frames < 1:
        return 0
    probe = torch.empty((1, 1, n_frames, record.front_end.bins), device="meta")
    try:
        return int(_meta_network(record).forward_frames(probe).shape[2])
    except RuntimeError:  # too short for a convolution's kernel
        return 0


_REGISTRY: Dict[str, PretrainedNetwork] = {}
_LOCK = threading.Lock()


def register(record: PretrainedNetwork) -> PretrainedNetwork:
    """Add ``record`` to the registry and return it.

    Raises
    ------
    ValueError
        If its name or an alias is taken by another record.
    """
    with _LOCK:
        for name in (record.name, *record.aliases):
            taken = _lookup(name)
            if taken is not None and taken is not record:
                raise ValueError(f"network name {name!r} is already registered for {taken.title}")
        _REGISTRY[record.name] = record
    return record


def unregister(name: str) -> None:
    """Remove the record registered as ``name`` (a no-op if there is none)."""
    with _LOCK:
        record = _lookup(name)
        if record is not None:
            del _REGISTRY[record.name]


def _lookup(name: str) -> Optional[PretrainedNetwork]:
    if name in _REGISTRY:
        return _REGISTRY[name]
    return next((record for record in _REGISTRY.values() if name in record.aliases), None)


def get(network: NetworkLike) -> PretrainedNetwork:
    """The record of ``network``: a registered name or alias, or a record (returned as is).

    Raises
    ------
    ValueError
        If no network of that name is registered (the message lists the names).
    TypeError
        If ``network`` is neither a string nor a record.
    """
    if isinstance(network, PretrainedNetwork):
        return network
    if not isinstance(network, str):
        raise TypeError(f"network must be a registered name or a PretrainedNetwork, got {type(network).__name__}")
    record = _lookup(network)
    if record is None:
        raise ValueError(f"unknown network {network!r}; registered networks: {', '.join(names())}")
    return record


def names() -> List[str]:
    """Names of the registered networks, in registration order."""
    return list(_REGISTRY)


def records() -> List[PretrainedNetwork]:
    """The registered records, in registration order."""
    return list(_REGISTRY.values())


#: Idiap's folder of the weight files released with the original package.
_IDIAP = "https://www.idiap.ch/software/bob/data/bob/bob.learn.pytorch/master"


def _idiap_release(idiap_file: str, **differing: Any) -> PretrainedNetwork:
    """Register a network released with the original package, its weight file stored by Idiap as ``idiap_file``.

    What the releases share is stated here: trained on VoxCeleb (1211
    speakers) with bob.ap's front end, 128-d embeddings, a time stride of 32
    frames and 37 frames at least. Each record states what differs: its
    names, network, reach, weight file and user settings.
    """
    return register(
        PretrainedNetwork(
            url=f"{_IDIAP}/{idiap_file}",
            front_end=BOB_AP_FRONT_END,
            num_classes=1211,
            embedding_dim=128,
            time_stride=32,
            min_frames=37,
            **differing,
        )
    )


# Per line: names and network, weight file (local name, name at Idiap), then the settings overriding it.
DLTRESNET34 = _idiap_release(
    name="dltresnet34", title="DltResNet-34", aliases=("drn34", "drn"), architecture=dltresnet34, receptive_field=554,
    filename="drn34.pth.tar", idiap_file="models_emb128_2drp_dlt_aug_relu__voxceleb___rn34-best.cls.pth.tar",
    path_key="bob.learn.pytorch.extractor.audio.drn_modelpath", url_key="bob.learn.pytorch.extractor.audio.drn_url",
    sha256_key="bob.learn.pytorch.extractor.audio.drn_sha256",
)
RESNET34 = _idiap_release(
    name="resnet34", title="ResNet-34", aliases=("rn34", "rn"), architecture=resnet34, receptive_field=534,
    filename="rn34.pth.tar", idiap_file="models_emb128_2drp_aug_relu__voxceleb___rn34-best.cls.pth.tar",
    path_key="bob.learn.pytorch.extractor.audio.rn_modelpath", url_key="bob.learn.pytorch.extractor.audio.rn_url",
    sha256_key="bob.learn.pytorch.extractor.audio.rn_sha256",
)
