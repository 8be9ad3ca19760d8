"""The original's extractor classes, kept as thin shims over :class:`.EmbeddingExtractor`.

``DltResNetExtractor(model_file, num_classes, bn_dim, cuda_flag, test, use_res)``
is the original signature, and configuration files written for the original
package keep working: ``use_res`` picks the registry's ``resnet34`` instead of
``dltresnet34``, ``cuda_flag=1`` means ``device="cuda"``.
"""
import warnings
from typing import Any, Optional

import torch

from .extractor import DeviceLike, EmbeddingExtractor, PathLike

__all__ = ["DltResNetExtractor", "ResNetExtractor"]


def _legacy_device(device: Optional[DeviceLike], cuda_flag: int) -> Optional[DeviceLike]:
    """Map the legacy ``cuda_flag`` and the ``device`` argument to one device."""
    if cuda_flag not in (0, 1, False, True):
        raise ValueError(f"cuda_flag must be 0 or 1, got {cuda_flag!r}; prefer device='cpu' or device='cuda'")
    if not cuda_flag:
        return device
    warnings.warn("cuda_flag=1 is deprecated; pass device='cuda' instead", DeprecationWarning, stacklevel=3)
    if device is not None and torch.device(device).type != "cuda":
        raise ValueError(f"cuda_flag=1 conflicts with device={device!r}; pass only device")
    return "cuda" if device is None else device


class DltResNetExtractor(EmbeddingExtractor):
    """Embed speech with the dilated ResNet-34 (or, with ``use_res``, the ResNet-34) trained on VoxCeleb.

    Same as ``EmbeddingExtractor("dltresnet34", ...)`` (``"resnet34"`` with
    ``use_res=True``), with the original's positional arguments.

    Parameters
    ----------
    model_file : str or os.PathLike, optional
        Checkpoint to load (see :class:`.EmbeddingExtractor`).
    num_classes : int
        Training speakers of the checkpoint (1211 for the released models).
    bn_dim : int
        Embedding size (128 for the released models).
    cuda_flag : int
        Deprecated: 1 means ``device="cuda"``.
    test : bool
        Random weights in train mode, as the original's size-only tests.
    use_res : bool
        Use the ResNet-34 instead of the DltResNet-34.
    device, trust_checkpoint, backend
        As for :class:`.EmbeddingExtractor`.

    Examples
    --------
    >>> import numpy
    >>> extractor = DltResNetExtractor(test=True)
    >>> audio = (16000, numpy.random.RandomState(0).randint(-3000, 3000, 16000).astype("int16"))
    >>> embedding = extractor(audio)
    >>> embedding.shape, embedding.dtype
    ((1, 128), dtype('float32'))
    """

    def __init__(
        self,
        model_file: Optional[PathLike] = None,
        num_classes: int = 1211,
        bn_dim: int = 128,
        cuda_flag: int = 0,
        test: bool = False,
        use_res: bool = False,
        *,
        device: Optional[DeviceLike] = None,
        trust_checkpoint: bool = False,
        backend: str = "auto",
    ) -> None:
        device = _legacy_device(device, cuda_flag)
        super().__init__(
            "resnet34" if use_res else "dltresnet34",
            model_file,
            num_classes=num_classes,
            bn_dim=bn_dim,
            device=device,
            trust_checkpoint=trust_checkpoint,
            backend=backend,
            test=test,
        )
        self.cuda_flag = int(cuda_flag)
        self.use_res = bool(use_res)


class ResNetExtractor(DltResNetExtractor):
    """The ResNet-34 variant of :class:`DltResNetExtractor` (``use_res=True``).

    Takes the same arguments (``device``, ``trust_checkpoint`` and
    ``backend`` by keyword); ``use_res`` may only be True.
    """

    def __init__(self, *args: Any, use_res: bool = True, **options: Any) -> None:
        if len(args) > 5:  # the original's positional use_res
            args, use_res = args[:5] + args[6:], args[5]
        if not use_res:
            raise ValueError("ResNetExtractor always uses the ResNet-34; use DltResNetExtractor for the DltResNet")
        super().__init__(*args, use_res=True, **options)
