"""The registry of pretrained networks: one record per network, everything else asks it.

A record holds what it takes to use a released network: the architecture
that builds it, the front end its weights were trained with, its time
geometry (stride and receptive field), the size of its embedding, where its
weight file is stored and downloaded from, and the user settings that
override those. Adding a network is one :func:`register` call with its record
and its architecture module, or one entry point of the group
:data:`ENTRY_POINT_GROUP` in an installed package (a plug-in, known to every
process); the extractors, the transformer, the command line and the download
machinery take it from here.

Every record is checked once, by :func:`validate_record`, when it is
registered or read from a plug-in: the types of its fields, and its declared
``min_frames`` and ``receptive_field`` against its architecture.

>>> sorted(names())[:2]
['dltresnet34', 'resnet34']
>>> get("drn34").title
'DltResNet-34'
"""
import functools
import importlib.metadata
import math
import os
import re
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from .architectures.DltResNet import dltresnet34
from .architectures.ResNet import resnet34
from .frontend import BOB_AP_FRONT_END, FrontEnd

__all__ = [
    "PretrainedNetwork",
    "DATA_DIR",
    "ENTRY_POINT_GROUP",
    "PluginWarning",
    "register",
    "unregister",
    "get",
    "names",
    "records",
    "validate_record",
    "parameter_shapes",
    "measured_reach",
    "NetworkLike",
]

#: Folder of the package where weight files are stored by default.
DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "preprocessor", "audio", "data")
#: Entry-point group of the networks that other installed packages provide (see :ref:`bob.learn.pytorch.plugins`).
ENTRY_POINT_GROUP = "bob.learn.pytorch.networks"


class PluginWarning(RuntimeWarning):
    """A network plug-in (an entry point of :data:`ENTRY_POINT_GROUP`) could not be loaded; the others still work."""


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
        frames that can change it (checked against the network when the
        record is registered, see :func:`measured_reach`).
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
        Other names :func:`get` accepts (the original's short names). A list
        is stored as a tuple.
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

    def __post_init__(self) -> None:
        if isinstance(self.aliases, list):  # a list would make the record unhashable
            object.__setattr__(self, "aliases", tuple(self.aliases))

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


# -- what is derived from a record's architecture, once per record ---------------------------------


@functools.lru_cache(maxsize=None)
def _meta_network(record: PretrainedNetwork) -> nn.Module:
    """The record's network on PyTorch's ``meta`` device: shapes without storage, built once per record."""
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


@functools.lru_cache(maxsize=None)
def _parameter_shapes(record: PretrainedNetwork) -> Tuple[Tuple[str, Tuple[int, ...]], ...]:
    return tuple((key, tuple(value.shape)) for key, value in _meta_network(record).state_dict().items())


def parameter_shapes(record: PretrainedNetwork) -> Dict[str, Tuple[int, ...]]:
    """State-dict keys and tensor shapes of the network ``record.build()`` makes, in state-dict order.

    This is what a weight file of ``record`` must hold (checkpoint validation,
    the download's check and size cap, the hint naming the other network of a
    file that does not fit). Derived once per record, from the one ``meta``
    network of :meth:`PretrainedNetwork.output_steps`.

    >>> shapes = parameter_shapes(get("resnet34"))
    >>> len(shapes), shapes["em.weight"]
    (240, (128, 1024))
    """
    return dict(_parameter_shapes(record))


# -- checking a record once ---------------------------------------------------------------------

_SHA256 = re.compile(r"[0-9a-f]{64}")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(condition: bool, error: type, record: Any, message: str) -> None:
    if not condition:
        name = getattr(record, "name", None)
        label = f"network record {name!r}" if isinstance(name, str) and name else "network record"
        raise error(f"{label}: {message}")


def _check_fields(record: PretrainedNetwork) -> None:
    """Types and ranges of the fields that need no network."""
    _require(isinstance(record, PretrainedNetwork), TypeError, record,
             f"expected a PretrainedNetwork, got {type(record).__name__}")
    name = record.name
    _require(isinstance(name, str) and bool(name) and not re.search(r"[\s,|]", name), TypeError, record,
             f"name must be a non-empty text without spaces, commas or '|', not {name!r}")
    aliases = record.aliases
    _require(not isinstance(aliases, str), TypeError, record,
             f"aliases must be a tuple of names, not the text {aliases!r} (each character would become an alias); "
             f"write aliases=({aliases!r},)")
    _require(isinstance(aliases, tuple) and all(isinstance(alias, str) and alias.strip() == alias and alias
                                                for alias in aliases), TypeError, record,
             f"aliases must be a tuple of non-empty names, not {aliases!r}")
    _require(name not in aliases, ValueError, record, f"its name {name!r} is also one of its aliases")
    for attribute in ("title", "filename", "url", "path_key", "url_key", "sha256_key"):
        value = getattr(record, attribute)
        _require(isinstance(value, str) and bool(value.strip()), TypeError, record,
                 f"{attribute} must be a non-empty text, not {value!r}")
    _require(os.path.basename(record.filename) == record.filename and record.filename not in (".", ".."),
             ValueError, record, f"filename must be a bare file name (it is stored in DATA_DIR), not {record.filename!r}")
    _require(record.url.lower().startswith(("http://", "https://")), ValueError, record,
             f"url must be an http:// or https:// address, not {record.url!r}")
    _require(record.sha256 is None or (isinstance(record.sha256, str) and bool(_SHA256.fullmatch(record.sha256))),
             ValueError, record, f"sha256 must be None or 64 lower-case hexadecimal digits, not {record.sha256!r}")
    _require(callable(record.architecture), TypeError, record,
             f"architecture must be a function that builds the network, not {record.architecture!r}")
    _require(isinstance(record.front_end, FrontEnd), TypeError, record,
             f"front_end must be a FrontEnd, not {type(record.front_end).__name__}")
    for attribute, low in (("time_stride", 1), ("min_frames", 1), ("embedding_dim", 1), ("num_classes", 1),
                           ("receptive_field", 0)):
        value = getattr(record, attribute)
        _require(_is_count(value) and value >= low, ValueError if _is_count(value) else TypeError, record,
                 f"{attribute} must be a whole number >= {low}, not {value!r}")


def _probe_network(record: PretrainedNetwork) -> nn.Module:
    """The record's network with fixed random weights, in float64 on the CPU, for the geometry checks."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return record.build().to(torch.float64).eval()


def _steps(network: nn.Module, record: PretrainedNetwork, n_frames: int) -> int:
    try:
        with torch.inference_mode():
            return int(network.forward_frames(torch.zeros(1, 1, n_frames, record.front_end.bins, dtype=torch.float64)).shape[2])
    except RuntimeError:  # too short for a convolution's kernel
        return 0


def _fewest_frames(network: nn.Module, record: PretrainedNetwork) -> int:
    """The fewest input frames that give two output steps (the number of steps grows with the frames)."""
    low, high = record.min_frames, 2 * record.min_frames
    while _steps(network, record, high) < 2:
        if high > 1 << 16:
            raise ValueError(f"network record {record.name!r}: its network gives fewer than two output steps even "
                             f"for {high} frames; forward_frames must keep a time axis")
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if _steps(network, record, middle) < 2 else (low, middle)
    return high


def _check_min_frames(network: nn.Module, record: PretrainedNetwork) -> None:
    """``min_frames`` must give two output steps: the pooled (unbiased) standard deviation of one step is NaN."""
    steps = _steps(network, record, record.min_frames)
    if steps < 2:
        raise ValueError(
            f"network record {record.name!r}: min_frames={record.min_frames} gives {steps} output step(s), but the "
            "pooled standard deviation needs two (otherwise every embedding of such a recording is NaN); "
            f"set min_frames={_fewest_frames(network, record)}"
        )


def measured_reach(record: PretrainedNetwork, declared: Optional[int] = None, network: Optional[nn.Module] = None) -> int:
    """Input frames beyond an output step's own ``time_stride`` frames that change it, measured on the network.

    The network is built with fixed random weights in float64 on the CPU
    (or ``network`` is used), and the gradient of one output step in the
    middle of a random probe input is taken with respect to every input
    frame: the frames with a non-zero gradient are the ones that change that
    step, which is what the tests measure by perturbing single frames. The
    probe is long enough to show a reach of ``declared`` plus two strides
    (``record.receptive_field`` by default), so a declared value that is too
    small is always seen to be so; a larger true reach is reported as at
    least that much.

    Parameters
    ----------
    record : PretrainedNetwork
        The network to probe.
    declared : int, optional
        The reach to look beyond (default: the record's ``receptive_field``).
    network : torch.nn.Module, optional
        The record's network in float64 (default: built with random weights).

    Returns
    -------
    int
        The largest distance, in frames, from the step's own frames to a frame that changes it.
    """
    network = _probe_network(record) if network is None else network
    stride = record.time_stride
    margin = (record.receptive_field if declared is None else declared) + 2 * stride
    step = math.ceil(margin / stride) + 1
    frames = (2 * step + 1) * stride
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(1, 1, frames, record.front_end.bins, dtype=torch.float64, generator=generator)
    probe.requires_grad_(True)
    with torch.enable_grad():
        features = network.forward_frames(probe)
        step = min(step, features.shape[2] - 1)
        features[:, :, step].sum().backward()
    moved = (probe.grad[0, 0].abs().amax(dim=1) > 0).nonzero().flatten().tolist()
    if not moved:
        return 0
    first, last = step * stride, step * stride + stride - 1
    return max(0, first - moved[0], moved[-1] - last)


def _check_receptive_field(network: nn.Module, record: PretrainedNetwork) -> None:
    reach = measured_reach(record, network=network)
    if reach > record.receptive_field:
        raise ValueError(
            f"network record {record.name!r}: receptive_field={record.receptive_field} is too small: an output step "
            f"changes with input frames up to {reach} frames beyond its own, so long recordings (embedded block by "
            f"block) would get other embeddings than in one pass; set receptive_field={reach}"
        )


def _check_geometry(record: PretrainedNetwork) -> None:
    """``min_frames`` and ``receptive_field`` against the architecture, on one network built for both."""
    try:
        network = _probe_network(record)
    except Exception as error:  # the architecture itself is broken
        raise ValueError(f"network record {record.name!r}: its architecture cannot build the network "
                         f"({type(error).__name__}: {error})") from error
    _check_min_frames(network, record)
    _check_receptive_field(network, record)


def validate_record(record: PretrainedNetwork, *, geometry: bool = True) -> PretrainedNetwork:
    """Check ``record`` once, before it is registered (by :func:`register` and the plug-in loader).

    The fields are checked for type and range (a name that is text, aliases
    that are a tuple of names, a stride of at least one frame...). With
    ``geometry``, the declared time geometry is then checked against the
    architecture, on one network built with random weights in float64 on the
    CPU: ``min_frames`` must give the two output steps the pooled standard
    deviation needs, and ``receptive_field`` must cover the reach
    :func:`measured_reach` finds (one forward and backward pass).

    Returns
    -------
    PretrainedNetwork
        ``record``.

    Raises
    ------
    TypeError
        If a field has the wrong type (naming the field and the fix).
    ValueError
        If a field is out of range, or the declared geometry does not fit the
        architecture (naming the value to set).

    Examples
    --------
    >>> import dataclasses
    >>> validate_record(dataclasses.replace(get("resnet34"), aliases="rn"))
    Traceback (most recent call last):
    ...
    TypeError: network record 'resnet34': aliases must be a tuple of names, not the text 'rn' (each character would become an alias); write aliases=('rn',)
    """
    _check_fields(record)
    if geometry:
        _check_geometry(record)
    return record


# -- the registry -------------------------------------------------------------------------------

_REGISTRY: Dict[str, PretrainedNetwork] = {}
_LOCK = threading.RLock()
#: Entry points of :data:`ENTRY_POINT_GROUP` that could not be loaded: network name -> why.
_BROKEN_PLUGINS: Dict[str, str] = {}
#: Plug-in records whose geometry is checked on their first lookup: network name -> plug-in label.
_GEOMETRY_PENDING: Dict[str, str] = {}
#: "unread", "reading" (by the thread holding the lock), then "read".
_plugins_state = "unread"


def _add(record: PretrainedNetwork, *, geometry: bool = True) -> PretrainedNetwork:
    """Validate ``record`` (fields, names free, then its geometry) and add it to the registry."""
    validate_record(record, geometry=False)
    with _LOCK:
        for name in (record.name, *record.aliases):
            taken = _lookup_registered(name)
            if taken is not None and taken != record:
                raise ValueError(f"network name {name!r} is already registered for {taken.title}")
        if geometry:
            _check_geometry(record)
        _REGISTRY[record.name] = record
    return record


def register(record: PretrainedNetwork) -> PretrainedNetwork:
    """Check ``record`` (:func:`validate_record`), add it to the registry and return it.

    The networks of installed plug-ins are read first, so that a clash with
    one of them is reported here.

    Raises
    ------
    TypeError, ValueError
        If the record is invalid (see :func:`validate_record`), or its name or
        an alias is taken by another record.
    """
    _read_plugins()
    return _add(record)


def unregister(name: str) -> None:
    """Remove the record registered as ``name`` (a no-op if there is none)."""
    with _LOCK:
        record = _lookup_registered(name)
        if record is not None:
            del _REGISTRY[record.name]


def _lookup_registered(name: str) -> Optional[PretrainedNetwork]:
    if name in _REGISTRY:
        return _REGISTRY[name]
    return next((record for record in _REGISTRY.values() if name in record.aliases), None)


def get(network: NetworkLike) -> PretrainedNetwork:
    """The record of ``network``: a registered name or alias, or a record (returned as is).

    Raises
    ------
    ValueError
        If no network of that name is registered (the message lists the names,
        and says why a plug-in of that name could not be loaded).
    TypeError
        If ``network`` is neither a string nor a record.
    """
    if isinstance(network, PretrainedNetwork):
        return network
    if not isinstance(network, str):
        raise TypeError(f"network must be a registered name or a PretrainedNetwork, got {type(network).__name__}")
    _read_plugins()
    record = _lookup_registered(network)
    if record is not None and record.name in _GEOMETRY_PENDING:
        _check_plugin_geometry(record)
        record = _lookup_registered(network)
    if record is None:
        broken = _BROKEN_PLUGINS.get(network)
        reason = f" ({broken})" if broken else ""
        raise ValueError(f"unknown network {network!r}{reason}; registered networks: {', '.join(names())}")
    return record


def names() -> List[str]:
    """Names of the registered networks, in registration order (the built-in ones, then the plug-ins')."""
    _read_plugins()
    return list(_REGISTRY)


def records() -> List[PretrainedNetwork]:
    """The registered records, in registration order."""
    _read_plugins()
    return list(_REGISTRY.values())


# -- plug-ins: networks of other installed packages -------------------------------------------


def _read_plugins() -> None:
    """Register the networks of :data:`ENTRY_POINT_GROUP`, once per process, on the first lookup.

    Other threads wait until every plug-in is read; a plug-in module that looks
    the registry up while it is imported (the same thread) sees it as it is.
    """
    global _plugins_state
    if _plugins_state == "read":
        return
    with _LOCK:  # re-entrant: the thread reading the plug-ins comes back here through a plug-in's import
        if _plugins_state != "unread":
            return
        _plugins_state = "reading"
        try:
            for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                _load_plugin(entry_point)
        finally:
            _plugins_state = "read"


def _plugin_label(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = getattr(entry_point, "dist", None)
    origin = f"distribution {dist.name} {dist.version}" if dist is not None else "an unknown distribution"
    return f"network plug-in '{entry_point.name} = {entry_point.value}' ({origin}, entry point group {ENTRY_POINT_GROUP})"


def _plugin_record(entry_point: importlib.metadata.EntryPoint) -> PretrainedNetwork:
    value = entry_point.load()
    record = value if isinstance(value, PretrainedNetwork) else value() if callable(value) else value
    if not isinstance(record, PretrainedNetwork):
        raise TypeError(f"it names {type(record).__name__}, not a PretrainedNetwork or a function returning one")
    if record.name != entry_point.name:
        raise ValueError(f"its record is named {record.name!r}: name the entry point {record.name!r}")
    return record


def _load_plugin(entry_point: importlib.metadata.EntryPoint) -> None:
    """Register one plug-in's record (its geometry is checked on its first lookup); a broken one is left out."""
    try:
        record = _add(_plugin_record(entry_point), geometry=False)
    except Exception as error:  # any failure of third-party code: the other networks must keep working
        _refuse_plugin(entry_point.name, _plugin_label(entry_point), error)
    else:
        _GEOMETRY_PENDING[record.name] = _plugin_label(entry_point)


def _check_plugin_geometry(record: PretrainedNetwork) -> None:
    """The second half of :func:`validate_record` for a plug-in's record, when it is first asked for by name.

    Building and probing a network takes a forward and backward pass, so a
    process pays it only for the plug-in networks it uses, not for listing them.
    """
    with _LOCK:
        label = _GEOMETRY_PENDING.pop(record.name, None)
        if label is None:
            return
        try:
            _check_geometry(record)
        except ValueError as error:
            unregister(record.name)
            _refuse_plugin(record.name, label, error)


def _refuse_plugin(name: str, label: str, error: BaseException) -> None:
    cause = " ".join(str(error).split()) or type(error).__name__
    message = f"{label} could not be loaded: {type(error).__name__}: {cause}; fix or uninstall that package"
    _BROKEN_PLUGINS[name] = message
    warnings.warn(message, PluginWarning, stacklevel=3)


#: Idiap's folder of the weight files released with the original package.
_IDIAP = "https://www.idiap.ch/software/bob/data/bob/bob.learn.pytorch/master"


def _idiap_release(idiap_file: str, **differing: Any) -> PretrainedNetwork:
    """Register a network released with the original package, its weight file stored by Idiap as ``idiap_file``.

    What the releases share is stated here: trained on VoxCeleb (1211
    speakers) with bob.ap's front end, 128-d embeddings, a time stride of 32
    frames and 37 frames at least. Each record states what differs: its
    names, network, reach, weight file and user settings. Their fields are
    checked as every record's are, but not their geometry when the package is
    imported (building and probing two ResNet-34 would add seconds to every
    import): the tests measure it exactly (``test_pretrained.py``).
    """
    return _add(
        PretrainedNetwork(
            url=f"{_IDIAP}/{idiap_file}",
            front_end=BOB_AP_FRONT_END,
            num_classes=1211,
            embedding_dim=128,
            time_stride=32,
            min_frames=37,
            **differing,
        ),
        geometry=False,
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
