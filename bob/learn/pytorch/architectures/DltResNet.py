"""Dilated ResNet (DltResNet) for speaker embeddings, in pure PyTorch.

The input is a standardised spectrogram of shape ``(N, 1, T, F)``: time on
axis 2, frequency on axis 3. The stem uses convolutions dilated along time.
``layer4`` and the classifier heads are built so that checkpoints load
strictly, but the embedding path (``tp="emb"``) does not use them.
"""
from typing import List

import torch
from torch import nn

from .utils import (
    BasicBlock,
    Block,
    Bottleneck,
    SpeakerEmbeddingNet,
    initialize_weights,
    l2_normalize,
    make_layer,
)

__all__ = ["DltResNet", "dltresnet18", "dltresnet34", "dltresnet50", "dltresnet101", "dltresnet152"]


class DltResNet(SpeakerEmbeddingNet):
    """Dilated residual network with a [mean, std] pooling and embedding heads.

    Parameters
    ----------
    block : type
        :class:`~bob.learn.pytorch.architectures.utils.BasicBlock` or
        :class:`~bob.learn.pytorch.architectures.utils.Bottleneck`.
    layers : list of int
        Number of blocks in ``layer1`` … ``layer4``.
    num_classes : int
        Number of training speakers (size of ``fc``, ``fc1`` and ``fc2``).
    tp : str
        Forward type (``net_type``): ``"prefc"``, ``"cls"``, ``"cls2"``,
        ``"cls3"``, ``"emb"`` or ``"emb2"``.
    bn_dim : int
        Size of the embedding layer ``em``.
    bn_dim2 : int
        Size of the second embedding layer ``em2``.

    Examples
    --------
    >>> import torch
    >>> from bob.learn.pytorch.architectures.DltResNet import dltresnet34
    >>> net = dltresnet34(num_classes=1211, tp="emb").eval()
    >>> with torch.inference_mode():
    ...     net(torch.randn(1, 1, 300, 257)).shape
    torch.Size([1, 128])
    """

    def __init__(
        self,
        block: Block,
        layers: List[int],
        num_classes: int = 1000,
        tp: str = "cls",
        bn_dim: int = 128,
        bn_dim2: int = 128,
    ) -> None:
        super().__init__()
        self._set_net_type(tp)
        self.conv1 = nn.Conv2d(1, 16, kernel_size=5, stride=2, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=(5, 1), padding=(4, 0), dilation=(2, 1), bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.maxpool = nn.MaxPool2d(kernel_size=(3, 1), stride=(2, 1), padding=0)
        self.conv3 = nn.Conv2d(32, 64, kernel_size=(3, 1), padding=(3, 0), dilation=(3, 1), bias=False)
        self.bn3 = nn.BatchNorm2d(64)
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
        self.fc2 = nn.Linear(bn_dim2, num_classes)
        self.em = nn.Linear(1024, bn_dim)
        self.em2 = nn.Linear(bn_dim, bn_dim2)
        self.bn = nn.BatchNorm2d(bn_dim2)
        self.drp = nn.Dropout(p=0.2)
        initialize_weights(self)

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        """conv1 → conv2 (dilated) → max-pool → conv3 (dilated), each with BN and ReLU."""
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.maxpool(x)
        return self.relu(self.bn3(self.conv3(x)))

    def forward_cls3(self, x: torch.Tensor) -> torch.Tensor:
        """Speaker logits through both embedding layers (``em``, ``em2``, ``bn``).

        The original ran the convolutional body twice here and applied the 2-D
        BatchNorm to a 2-D tensor; both bugs are fixed.
        """
        x = self.em2(self.em(self.drp(self.forward_cnn(x))))
        x = self.relu(self.bn(x[:, :, None, None]).flatten(1))
        return self.fc2(self.drp(x))

    def forward_emb2(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised output of the second embedding layer ``em2``."""
        return l2_normalize(self.em2(self.em(self.forward_cnn(x))))


def _build(block: Block, layers: List[int], num_classes: int, tp: str, bn_dim: int, bn_dim2: int) -> DltResNet:
    return DltResNet(block, layers, num_classes=num_classes, tp=tp, bn_dim=bn_dim, bn_dim2=bn_dim2)


def dltresnet18(num_classes: int = 1251, tp: str = "cls", bn_dim: int = 128, bn_dim2: int = 128) -> DltResNet:
    """DltResNet-18: basic blocks, layers [2, 2, 2, 2]."""
    return _build(BasicBlock, [2, 2, 2, 2], num_classes, tp, bn_dim, bn_dim2)


def dltresnet34(num_classes: int = 1251, tp: str = "cls", bn_dim: int = 128, bn_dim2: int = 128) -> DltResNet:
    """DltResNet-34: basic blocks, layers [3, 4, 6, 3] (the released VoxCeleb model)."""
    return _build(BasicBlock, [3, 4, 6, 3], num_classes, tp, bn_dim, bn_dim2)


def dltresnet50(num_classes: int = 1251, tp: str = "cls", bn_dim: int = 128, bn_dim2: int = 128) -> DltResNet:
    """DltResNet-50: bottleneck blocks, layers [3, 4, 14, 3] (the original's counts)."""
    return _build(Bottleneck, [3, 4, 14, 3], num_classes, tp, bn_dim, bn_dim2)


def dltresnet101(num_classes: int = 1251, tp: str = "cls", bn_dim: int = 128, bn_dim2: int = 128) -> DltResNet:
    """DltResNet-101: bottleneck blocks, layers [3, 4, 23, 3]."""
    return _build(Bottleneck, [3, 4, 23, 3], num_classes, tp, bn_dim, bn_dim2)


def dltresnet152(num_classes: int = 1251, tp: str = "cls", bn_dim: int = 128, bn_dim2: int = 128) -> DltResNet:
    """DltResNet-152: bottleneck blocks, layers [3, 8, 36, 3]."""
    return _build(Bottleneck, [3, 8, 36, 3], num_classes, tp, bn_dim, bn_dim2)
