"""The released VoxCeleb models: one record per weight file.

Each record keeps together where the file comes from, which network and
arguments it needs, the user settings that override it, and the front-end
settings the weights were trained with.
"""
import os
from dataclasses import dataclass
from typing import Callable, Optional

from torch import nn

from ...architectures.DltResNet import dltresnet34
from ...architectures.ResNet import resnet34

__all__ = ["PretrainedModel", "DLTRESNET34_VOXCELEB", "RESNET34_VOXCELEB", "DATA_DIR", "RC_PREFIX"]

#: Folder of the package where the models are stored by default.
DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
#: Prefix of the user settings (``bob config set``) of the audio extractors.
RC_PREFIX = "bob.learn.pytorch.extractor.audio"
_IDIAP = "https://www.idiap.ch/software/bob/data/bob/bob.learn.pytorch/master"


@dataclass(frozen=True)
class PretrainedModel:
    """A released weight file and everything needed to use it.

    Attributes
    ----------
    name : str
        Short name, also the default file's stem (``drn34``, ``rn34``).
    title : str
        Human-readable network name.
    builder : callable
        Architecture builder taking ``num_classes``, ``tp`` and ``bn_dim``.
    url : str
        Default download address.
    sha256 : str or None
        Expected digest of the file, when known.
    num_classes, bn_dim : int
        Architecture arguments the file was trained with.
    sample_rate, win_length_ms, win_shift_ms, pre_emphasis_coeff
        Front-end settings the weights expect.
    """

    name: str
    title: str
    builder: Callable[..., nn.Module]
    url: str
    sha256: Optional[str] = None
    num_classes: int = 1211
    bn_dim: int = 128
    sample_rate: int = 16000
    win_length_ms: float = 25.0
    win_shift_ms: float = 10.0
    pre_emphasis_coeff: float = 0.97

    @property
    def filename(self) -> str:
        """Name of the file in the package data folder."""
        return f"{self.name}.pth.tar"

    @property
    def default_path(self) -> str:
        """Where the file is stored when no setting overrides it."""
        return os.path.join(DATA_DIR, self.filename)

    @property
    def path_key(self) -> str:
        """User setting holding a path to the file (``…drn_modelpath`` / ``…rn_modelpath``)."""
        return f"{RC_PREFIX}.{self.name[:-2]}_modelpath"

    @property
    def url_key(self) -> str:
        """User setting overriding the download address (``…drn_url`` / ``…rn_url``)."""
        return f"{RC_PREFIX}.{self.name[:-2]}_url"

    def build(self, num_classes: Optional[int] = None, bn_dim: Optional[int] = None, tp: str = "emb") -> nn.Module:
        """A randomly initialised network of this record's architecture."""
        return self.builder(
            num_classes=self.num_classes if num_classes is None else num_classes,
            tp=tp,
            bn_dim=self.bn_dim if bn_dim is None else bn_dim,
        )


DLTRESNET34_VOXCELEB = PretrainedModel(
    name="drn34",
    title="DltResNet-34",
    builder=dltresnet34,
    url=f"{_IDIAP}/models_emb128_2drp_dlt_aug_relu__voxceleb___rn34-best.cls.pth.tar",
)

RESNET34_VOXCELEB = PretrainedModel(
    name="rn34",
    title="ResNet-34",
    builder=resnet34,
    url=f"{_IDIAP}/models_emb128_2drp_aug_relu__voxceleb___rn34-best.cls.pth.tar",
)
