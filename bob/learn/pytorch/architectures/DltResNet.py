"""Dilated ResNet (DltResNet) for speaker embeddings, in pure PyTorch.

The input is a standardised spectrogram of shape ``(N, 1, T, F)``: time on
axis 2, frequency on axis 3. The stem uses convolutions dilated along time.
``layer4`` and the classifier heads are built so that checkpoints load
strictly, but the embedding path (``tp="emb"``) does not use them.
"""
from typing import Callable, List

import torch
from torch import nn

from .utils import DEPTHS, Block, SpeakerEmbeddingNet, depth_builder, initialize_weights, l2_normalize, shared_docs

__all__ = ["DltResNet", "dltresnet18", "dltresnet34", "dltresnet50", "dltresnet101", "dltresnet152"]


@shared_docs
class DltResNet(SpeakerEmbeddingNet):
    """Dilated residual network with a [mean, std] pooling and embedding heads.

    Two of the stem's three convolutions are dilated along time. A second
    embedding layer ``em2`` (with ``bn`` and ``fc2``) serves the ``"cls3"``
    and ``"emb2"`` forward types.

    Parameters
    ----------
    {block}
    {layers}
    num_classes : int
        Number of training speakers (size of ``fc``, ``fc1`` and ``fc2``).
    tp : str
        Forward type (``net_type``): ``"prefc"``, ``"cls"``, ``"cls2"``,
        ``"cls3"``, ``"emb"`` or ``"emb2"``.
    {bn_dim}
    bn_dim2 : int
        Size of the second embedding layer ``em2``.

    {example}
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
        super().__init__(tp)
        self.conv1 = nn.Conv2d(1, 16, kernel_size=5, stride=2, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=(5, 1), padding=(4, 0), dilation=(2, 1), bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.maxpool = nn.MaxPool2d(kernel_size=(3, 1), stride=(2, 1), padding=0)
        self.conv3 = nn.Conv2d(32, 64, kernel_size=(3, 1), padding=(3, 0), dilation=(3, 1), bias=False)
        self.bn3 = nn.BatchNorm2d(64)
        self.make_trunk(block, layers)
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


def _builder(depth: int) -> Callable[..., DltResNet]:
    """The public function building the DltResNet of ``depth``."""
    block, layers = DEPTHS[depth]

    def build(num_classes: int = 1251, tp: str = "cls", bn_dim: int = 128, bn_dim2: int = 128) -> DltResNet:
        return DltResNet(block, list(layers), num_classes=num_classes, tp=tp, bn_dim=bn_dim, bn_dim2=bn_dim2)

    return depth_builder(build, "DltResNet", depth)


dltresnet18, dltresnet34, dltresnet50, dltresnet101, dltresnet152 = map(_builder, (18, 34, 50, 101, 152))
