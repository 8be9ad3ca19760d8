"""ResNet for speaker embeddings, in pure PyTorch.

The same trunk, pooling and embedding layer as
:class:`~bob.learn.pytorch.architectures.DltResNet.DltResNet`, with a plain
stem: one 5x5 convolution with 64 channels and a max-pool.
"""
from typing import List

import torch
from torch import nn

from .utils import BasicBlock, Block, Bottleneck, SpeakerEmbeddingNet, initialize_weights, l2_normalize, make_layer

__all__ = ["ResNet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


class ResNet(SpeakerEmbeddingNet):
    """Residual network with a [mean, std] pooling and an embedding head.

    Parameters
    ----------
    block : type
        :class:`~bob.learn.pytorch.architectures.utils.BasicBlock` or
        :class:`~bob.learn.pytorch.architectures.utils.Bottleneck`.
    layers : list of int
        Number of blocks in ``layer1`` … ``layer4``.
    num_classes : int
        Number of training speakers (size of ``fc`` and ``fc1``).
    tp : str
        Forward type (``net_type``). ``"emb2"`` here is the L2-normalised
        1024-d pooled vector, unlike DltResNet's; ``"cls3"`` does not exist.
    bn_dim : int
        Size of the embedding layer ``em``.

    Examples
    --------
    >>> import torch
    >>> from bob.learn.pytorch.architectures.ResNet import resnet34
    >>> net = resnet34(num_classes=1211, tp="emb").eval()
    >>> with torch.inference_mode():
    ...     net(torch.randn(2, 1, 100, 257)).shape
    torch.Size([2, 128])
    """

    def __init__(
        self, block: Block, layers: List[int], num_classes: int = 1000, tp: str = "cls", bn_dim: int = 128
    ) -> None:
        super().__init__()
        self._set_net_type(tp)
        self.conv1 = nn.Conv2d(1, 64, kernel_size=5, stride=2, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=(3, 1), stride=(2, 1), padding=0)
        self.layer1, inplanes = make_layer(block, 64, layers[0], stride=2, inplanes=64)
        self.layer2, inplanes = make_layer(block, 128, layers[1], stride=2, inplanes=inplanes)
        self.layer3, inplanes_layer3 = make_layer(block, 256, layers[2], stride=2, inplanes=inplanes)
        self.layer4, _ = make_layer(block, 512, layers[3], stride=2, inplanes=inplanes_layer3)
        self.conv4 = nn.Conv2d(inplanes_layer3, 256, kernel_size=(1, 9), bias=False)
        self.bn4 = nn.BatchNorm2d(256)
        self.conv5 = nn.Conv2d(256, 512, kernel_size=(1, 9), bias=False)
        self.bn5 = nn.BatchNorm2d(512)
        self.fc = nn.Linear(1024, num_classes)
        self.fc1 = nn.Linear(bn_dim, num_classes)
        self.em = nn.Linear(1024, bn_dim)
        self.drp = nn.Dropout(p=0.2)
        initialize_weights(self)

    def _set_net_type(self, tp: str) -> None:
        if tp == "cls3":
            raise ValueError("ResNet has no 'cls3' forward type; use DltResNet for it")
        super()._set_net_type(tp)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """conv1 → BN → ReLU → max-pool."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward_cls3(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("ResNet has no 'cls3' forward type; use DltResNet for it")

    def forward_emb2(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised 1024-d pooled vector."""
        return l2_normalize(self.forward_cnn(x))


def _check_pretrained(pretrained: bool) -> None:
    if pretrained:
        raise ValueError(
            "pretrained=True referred to ImageNet weights, which do not fit this audio network; "
            "load a speaker-embedding checkpoint instead (see DltResNetExtractor)"
        )


def resnet18(pretrained: bool = False, num_classes: int = 1251, tp: str = "cls", bn_dim: int = 128) -> ResNet:
    """ResNet-18: basic blocks, layers [2, 2, 2, 2]."""
    _check_pretrained(pretrained)
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, tp=tp, bn_dim=bn_dim)


def resnet34(pretrained: bool = False, num_classes: int = 1251, tp: str = "cls", bn_dim: int = 128) -> ResNet:
    """ResNet-34: basic blocks, layers [3, 4, 6, 3] (the released VoxCeleb model)."""
    _check_pretrained(pretrained)
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes=num_classes, tp=tp, bn_dim=bn_dim)


def resnet50(pretrained: bool = False, num_classes: int = 1251, tp: str = "cls", bn_dim: int = 128) -> ResNet:
    """ResNet-50: bottleneck blocks, layers [3, 4, 14, 3] (the original's counts)."""
    _check_pretrained(pretrained)
    return ResNet(Bottleneck, [3, 4, 14, 3], num_classes=num_classes, tp=tp, bn_dim=bn_dim)


def resnet101(pretrained: bool = False, num_classes: int = 1251, tp: str = "cls", bn_dim: int = 128) -> ResNet:
    """ResNet-101: bottleneck blocks, layers [3, 4, 23, 3]."""
    _check_pretrained(pretrained)
    return ResNet(Bottleneck, [3, 4, 23, 3], num_classes=num_classes, tp=tp, bn_dim=bn_dim)


def resnet152(pretrained: bool = False, num_classes: int = 1251, tp: str = "cls", bn_dim: int = 128) -> ResNet:
    """ResNet-152: bottleneck blocks, layers [3, 8, 36, 3]."""
    _check_pretrained(pretrained)
    return ResNet(Bottleneck, [3, 8, 36, 3], num_classes=num_classes, tp=tp, bn_dim=bn_dim)
