"""ResNet for speaker embeddings, in pure PyTorch.

The same trunk, pooling and embedding layer as
:class:`~bob.learn.pytorch.architectures.DltResNet.DltResNet`, with a plain
stem: one 5x5 convolution with 64 channels and a max-pool.
"""
from typing import Callable, List

import torch
from torch import nn

from .utils import DEPTHS, Block, SpeakerEmbeddingNet, depth_builder, initialize_weights, l2_normalize, shared_docs

__all__ = ["ResNet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


@shared_docs
class ResNet(SpeakerEmbeddingNet):
    """Residual network with a [mean, std] pooling and an embedding head.

    The stem is one 5x5 convolution with 64 channels and a max-pool; there is
    no second embedding layer.

    Parameters
    ----------
    {block}
    {layers}
    num_classes : int
        Number of training speakers (size of ``fc`` and ``fc1``).
    tp : str
        Forward type (``net_type``). ``"emb2"`` here is the L2-normalised
        1024-d pooled vector, unlike DltResNet's; ``"cls3"`` does not exist.
    {bn_dim}

    {example}
    """

    def __init__(
        self, block: Block, layers: List[int], num_classes: int = 1000, tp: str = "cls", bn_dim: int = 128
    ) -> None:
        super().__init__(tp)
        self.conv1 = nn.Conv2d(1, 64, kernel_size=5, stride=2, padding=2, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=(3, 1), stride=(2, 1), padding=0)
        self.make_trunk(block, layers)
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


def _builder(depth: int) -> Callable[..., ResNet]:
    """The public function building the ResNet of ``depth``."""
    block, layers = DEPTHS[depth]

    def build(pretrained: bool = False, num_classes: int = 1251, tp: str = "cls", bn_dim: int = 128) -> ResNet:
        _check_pretrained(pretrained)
        return ResNet(block, list(layers), num_classes=num_classes, tp=tp, bn_dim=bn_dim)

    return depth_builder(build, "ResNet", depth)


resnet18, resnet34, resnet50, resnet101, resnet152 = map(_builder, (18, 34, 50, 101, 152))
