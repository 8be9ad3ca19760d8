"""Building blocks shared by the speaker-embedding ResNets (pure PyTorch).

The residual blocks, the layer builder, the trunk and the statistics-pooling
head used by :class:`~bob.learn.pytorch.architectures.DltResNet.DltResNet` and
:class:`~bob.learn.pytorch.architectures.ResNet.ResNet`, the depths both are
built at (:data:`DEPTHS`), and the parts of their documentation that they
share. Module creation order and initialisation follow the original networks
exactly, because the random initial weights (``test=True``) and the checkpoint
key names depend on them.
"""
import math
import re
from typing import Callable, Dict, List, Optional, Tuple, Type, TypeVar, Union

import torch
from torch import nn

__all__ = [
    "conv3x3",
    "BasicBlock",
    "Bottleneck",
    "make_layer",
    "statistics_pooling",
    "l2_normalize",
    "initialize_weights",
    "SpeakerEmbeddingNet",
    "FORWARD_MODES",
    "DEPTHS",
    "depth_builder",
    "shared_docs",
]

#: The forward types (``net_type``) understood by the embedding networks.
FORWARD_MODES = ("prefc", "cls", "cls2", "cls3", "emb", "emb2")


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1 and no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (expansion 1).

    Parameters
    ----------
    inplanes : int
        Number of input channels.
    planes : int
        Number of output channels.
    stride : int
        Stride of the first convolution.
    downsample : torch.nn.Module, optional
        Projection applied to the residual when the shape changes.
    """

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += residual
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 → 3x3 → 1x1 convolutions with a residual connection (expansion 4).

    Parameters are those of :class:`BasicBlock`.
    """

    expansion = 4

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += residual
        return self.relu(out)


Block = Union[Type[BasicBlock], Type[Bottleneck]]

#: Block type and number of blocks in ``layer1`` … ``layer4`` of each depth, the same for both networks
#: (the original's counts: its 50 has 14 blocks in ``layer3``).
DEPTHS: Dict[int, Tuple[Block, Tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 14, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}
_DEPTH_NOTES = {34: " (the released VoxCeleb model)", 50: " (the original's counts)"}

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])


def depth_builder(build: Builder, family: str, depth: int) -> Builder:
    """Name and document ``build``, the public function that makes the ``family`` network of ``depth``.

    ``build`` is named ``<family in lower case><depth>`` (``resnet34``), the
    module-level name it is bound to, so that it pickles by reference; its
    docstring states the depth's blocks and layers from :data:`DEPTHS`, e.g.
    "ResNet-34: basic blocks, layers [3, 4, 6, 3] (the released VoxCeleb model)."
    """
    block, layers = DEPTHS[depth]
    kind = "basic" if block is BasicBlock else "bottleneck"
    build.__name__ = build.__qualname__ = f"{family.lower()}{depth}"
    build.__doc__ = f"{family}-{depth}: {kind} blocks, layers {list(layers)}{_DEPTH_NOTES.get(depth, '')}."
    return build


#: Docstring sections that both networks share (see :func:`shared_docs`): the entries of the
#: constructor parameters they document alike, and the example, made with the network's 34-layer builder.
_SHARED_DOCS = {
    "block": """block : type
    :class:`~bob.learn.pytorch.architectures.utils.BasicBlock` or
    :class:`~bob.learn.pytorch.architectures.utils.Bottleneck`.""",
    "layers": """layers : list of int
    Number of blocks in ``layer1`` … ``layer4``.""",
    "bn_dim": """bn_dim : int
    Size of the embedding layer ``em``.""",
    "example": """Examples
--------
>>> import torch
>>> from {module} import {builder}
>>> net = {builder}(num_classes=1211, tp="emb").eval()
>>> with torch.inference_mode():
...     net(torch.randn(2, 1, 300, 257)).shape
torch.Size([2, 128])""",
}
_PLACEHOLDER = re.compile(r"^([ \t]*)\{(\w+)\}[ \t]*$", re.MULTILINE)

NetworkClass = TypeVar("NetworkClass", bound=type)


def shared_docs(cls: NetworkClass) -> NetworkClass:
    """Class decorator: put the sections both networks share into the class docstring.

    Each docstring line that holds only ``{name}`` (``{block}``, ``{layers}``,
    ``{bn_dim}``, ``{example}``) is replaced by that section, at the line's
    indentation; an unknown name raises KeyError when the class is defined.
    The example imports ``<class name in lower case>34`` from the class's module.
    """
    fields = {"module": cls.__module__, "builder": f"{cls.__name__.lower()}34"}

    def section(match: "re.Match[str]") -> str:
        indent, name = match.groups()
        lines = _SHARED_DOCS[name].format(**fields).splitlines()
        return "\n".join(indent + line if line else line for line in lines)

    cls.__doc__ = _PLACEHOLDER.sub(section, cls.__doc__)
    return cls


def make_layer(
    block: Block, planes: int, blocks: int, stride: int = 1, inplanes: int = 64
) -> Tuple[nn.Sequential, int]:
    """Stack ``blocks`` residual blocks; return the stage and its output channels.

    The projection of the first block is created before the block itself, as
    in the original, so that random initialisation draws in the same order.
    """
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * block.expansion),
        )
    layers = [block(inplanes, planes, stride, downsample)]
    inplanes = planes * block.expansion
    layers.extend(block(inplanes, planes) for _ in range(1, blocks))
    return nn.Sequential(*layers), inplanes


def statistics_pooling(x: torch.Tensor) -> torch.Tensor:
    """Pool ``(N, C, T, 1)`` feature maps over time into ``(N, 2C)`` [mean, std].

    The standard deviation is the unbiased one (Bessel's correction), as in the
    original; a single time step therefore gives NaN.
    """
    std = torch.std(x, 2)
    mean = torch.mean(x, 2)
    return torch.cat((mean, std), 1).reshape(x.size(0), -1)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Divide each row by its Euclidean norm (no epsilon, as the original)."""
    return x / torch.norm(x, 2, 1, keepdim=True)


def initialize_weights(module: nn.Module) -> None:
    """Redraw convolutions as N(0, 2/(kh*kw*out)) and reset BatchNorms to (1, 0)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            with torch.no_grad():
                m.weight.normal_(0, math.sqrt(2.0 / fan_out))
        elif isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.fill_(1)
                m.bias.zero_()


class SpeakerEmbeddingNet(nn.Module):
    """Shared trunk, pooling and forward-type dispatch of the two networks.

    Subclasses create their modules in ``__init__`` (the order matters: the
    stem, then the trunk with :meth:`make_trunk`, then the heads) and define
    :meth:`forward_stem`; this class provides everything after it.
    ``net_type`` selects what :meth:`forward` returns, see :data:`FORWARD_MODES`.

    Parameters
    ----------
    tp : str, optional
        Forward type, checked and set before any module is made; a subclass
        that does not give it sets ``net_type`` itself.
    """

    net_type: str

    def __init__(self, tp: Optional[str] = None) -> None:
        super().__init__()
        if tp is not None:
            self._set_net_type(tp)

    def _set_net_type(self, tp: str) -> None:
        if tp not in FORWARD_MODES:
            raise ValueError(f"unknown forward type {tp!r}; choose one of {', '.join(FORWARD_MODES)}")
        self.net_type = tp

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def make_trunk(self, block: Block, layers: List[int]) -> None:
        """Create ``layer1`` … ``layer4``, ``conv4``, ``bn4``, ``conv5`` and ``bn5``, in this order, after the stem.

        The stem must end with 64 channels. ``layer4`` is built so that
        checkpoints load strictly, but :meth:`forward_frames` does not use it:
        ``conv4`` takes ``layer3``'s channels.
        """
        self.layer1, inplanes = make_layer(block, 64, layers[0], stride=2, inplanes=64)
        self.layer2, inplanes = make_layer(block, 128, layers[1], stride=2, inplanes=inplanes)
        self.layer3, inplanes_layer3 = make_layer(block, 256, layers[2], stride=2, inplanes=inplanes)
        self.layer4, _ = make_layer(block, 512, layers[3], stride=2, inplanes=inplanes_layer3)
        self.conv4 = nn.Conv2d(inplanes_layer3, 256, kernel_size=(1, 9), bias=False)
        self.bn4 = nn.BatchNorm2d(256)
        self.conv5 = nn.Conv2d(256, 512, kernel_size=(1, 9), bias=False)
        self.bn5 = nn.BatchNorm2d(512)

    def forward_frames(self, x: torch.Tensor) -> torch.Tensor:
        """Frame-level features ``(N, 512, T5, 1)`` of input ``(N, 1, T, F)``, before pooling.

        Every output step depends only on a bounded window of input frames.
        """
        x = self.forward_stem(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.relu(self.bn4(self.conv4(x)))
        return self.relu(self.bn5(self.conv5(x)))

    def forward_cnn(self, x: torch.Tensor) -> torch.Tensor:
        """The ``(N, 1024)`` pooled [mean, unbiased std] vector (``prefc``)."""
        return statistics_pooling(self.forward_frames(x))

    def forward_cls(self, x: torch.Tensor) -> torch.Tensor:
        """Speaker logits straight from the pooled vector."""
        return self.fc(self.forward_cnn(x))

    def forward_cls2(self, x: torch.Tensor) -> torch.Tensor:
        """Speaker logits through dropout → embedding layer → dropout."""
        return self.fc1(self.drp(self.em(self.drp(self.forward_cnn(x)))))

    def forward_emb(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised output of the embedding layer ``em``."""
        return l2_normalize(self.em(self.forward_cnn(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the forward type selected by ``net_type`` (``forward_<type>``; ``prefc`` is :meth:`forward_cnn`)."""
        if self.net_type not in FORWARD_MODES:
            raise ValueError(f"unknown forward type {self.net_type!r}; choose one of {', '.join(FORWARD_MODES)}")
        method = getattr(self, "forward_cnn" if self.net_type == "prefc" else f"forward_{self.net_type}", None)
        if method is None:
            raise ValueError(f"{type(self).__name__} has no forward type {self.net_type!r}")
        return method(x)
