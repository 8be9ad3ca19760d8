"""Network architectures (pure PyTorch).

Import the networks by module, as in the original package::

    from bob.learn.pytorch.architectures.DltResNet import DltResNet, dltresnet34
    from bob.learn.pytorch.architectures.ResNet import ResNet, resnet34
"""
from . import DltResNet, ResNet, utils

__all__ = ["DltResNet", "ResNet", "utils"]
