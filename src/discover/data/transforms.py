"""Input transforms: :class:`DataConfig` and the torchvision v2 pipelines built from it.

:class:`DataConfig` turns a model's ``pretrained_cfg`` (or a training run's saved settings)
into preprocessing and train-time augmentation; :func:`build_transforms` and
:func:`eval_transform` build the pipelines from ``uint8`` tensors or PIL images.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torchvision.transforms import InterpolationMode, v2

from discover.errors import InputError

__all__ = ["BatchAugment", "DataConfig", "build_transforms", "eval_transform"]

_INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic")


@dataclass
class DataConfig:
    """Input preprocessing of a model, saved with it; also the train-time augmentation.

    The first five fields mirror ``model.pretrained_cfg`` (timm's keys). ``mean`` and ``std``
    default to 0.5 and 0.25 per channel (discover's small networks); a single value is
    repeated for every channel.

    Args:
        input_size: ``(C, H, W)``; ``C`` is 1 or 3.
        mean: per-channel mean, on the [0, 1] scale.
        std: per-channel standard deviation.
        interpolation: ``"bilinear"``, ``"bicubic"``, ``"nearest"`` or ``"nearest-exact"``.
        crop_pct: evaluation resizes to ``size / crop_pct`` and centre-crops ``size``.
        hflip: training horizontal-flip probability (off by default: flips change the Shapes
            world's position concepts).
        scale: training random-resized-crop scale range; ``None`` resizes as in evaluation.
        ratio: random-resized-crop aspect-ratio range.
        padding: training random crop after zero padding by this many pixels (CIFAR style).

    Example:
        >>> cfg = DataConfig(input_size=(1, 28, 28), padding=2)
        >>> DataConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    input_size: tuple[int, int, int] = (3, 64, 64)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    hflip: float = 0.0
    scale: tuple[float, float] | None = None
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    padding: int = 0

    def __post_init__(self) -> None:
        self.input_size = tuple(int(x) for x in self.input_size)
        if len(self.input_size) != 3 or self.input_size[0] not in (1, 3):
            raise InputError(
                f"DataConfig: input_size must be (C, H, W) with C in (1, 3), got {self.input_size}"
            )
        channels = self.input_size[0]
        for attr, default in (("mean", 0.5), ("std", 0.25)):
            value = tuple(float(x) for x in (getattr(self, attr) or (default,)))
            if len(value) == 1:
                value *= channels
            if len(value) != channels:
                raise InputError(
                    f"DataConfig: {attr} has {len(value)} values for {channels} channel(s)"
                )
            setattr(self, attr, value)
        if self.interpolation not in _INTERPOLATIONS:
            raise InputError(
                f"DataConfig: interpolation must be one of {_INTERPOLATIONS}, "
                f"got {self.interpolation!r}"
            )
        if not 0 < self.crop_pct <= 1 or not 0 <= self.hflip <= 1 or self.padding < 0:
            raise InputError("DataConfig: need 0 < crop_pct <= 1, 0 <= hflip <= 1, padding >= 0")
        if self.scale is not None:
            self.scale = (float(self.scale[0]), float(self.scale[1]))
        self.ratio = (float(self.ratio[0]), float(self.ratio[1]))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-friendly dict (tuples become lists)."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in fields(self)
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise InputError(f"DataConfig.from_dict: unknown keys {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def from_model(cls, model: torch.nn.Module, **overrides: Any) -> DataConfig:
        """Read ``model.pretrained_cfg`` (input_size, mean, std, interpolation, crop_pct).

        Example:
            >>> from discover import create_model
            >>> model = create_model("small_resnet", U=4, num_classes=10, in_chans=1, img_size=28)
            >>> DataConfig.from_model(model, hflip=0.5).input_size
            (1, 28, 28)
        """
        cfg = getattr(model, "pretrained_cfg", None)
        if not cfg:
            raise InputError(
                f"DataConfig.from_model: {type(model).__name__} has no "
                "pretrained_cfg; build a DataConfig by hand"
            )
        keys = ("input_size", "mean", "std", "interpolation", "crop_pct")
        return cls(**{**{k: cfg[k] for k in keys if cfg.get(k) is not None}, **overrides})


def eval_transform(model: torch.nn.Module) -> v2.Compose:
    """The evaluation transform of ``model``: from ``model.data_config`` (set by training runs
    and kept in their checkpoints), else from its ``pretrained_cfg``.

    Example:
        >>> tf = eval_transform(create_model("small_resnet", img_size=32))  # doctest: +SKIP
    """
    config = getattr(model, "data_config", None) or DataConfig.from_model(model)
    return build_transforms(config, train=False)


def build_transforms(
    config: DataConfig, train: bool = False, batch_augment: bool = False
) -> v2.Compose:
    """A v2 pipeline: ``uint8`` tensor or PIL image -> normalised float ``config.input_size``.

    Greyscale inputs are replicated to 3 channels, RGB is converted to luma for 1 channel.
    Evaluation resizes to ``size / crop_pct`` and centre-crops; training applies the
    configured random-resized-crop (or the evaluation resize), padded random crop and flip.

    With ``batch_augment=True`` the pipeline stops at the ``uint8`` image of the right size
    and :class:`BatchAugment` does the padded crop, the flip and the normalisation on whole
    batches (the same distribution; on a CPU about 1 ms less per image).

    Example:
        >>> tf = build_transforms(DataConfig(input_size=(3, 32, 32)), train=True)
        >>> tf(torch.zeros(1, 28, 28, dtype=torch.uint8)).shape
        torch.Size([3, 32, 32])
    """
    channels, height, width = config.input_size
    interpolation = InterpolationMode(config.interpolation)
    ops: list[Callable[[Any], Any]] = [v2.ToImage(), v2.RGB() if channels == 3 else v2.Grayscale(1)]
    if train and config.scale is not None:
        ops.append(
            v2.RandomResizedCrop(
                (height, width),
                scale=config.scale,
                ratio=config.ratio,
                interpolation=interpolation,
                antialias=True,
            )
        )
    else:
        resize = (
            math.floor(height / config.crop_pct)
            if height == width
            else (math.floor(height / config.crop_pct), math.floor(width / config.crop_pct))
        )
        ops += [
            v2.Resize(resize, interpolation=interpolation, antialias=True),
            v2.CenterCrop((height, width)),
        ]
    if batch_augment:
        return v2.Compose([*ops, v2.ToPureTensor()])
    if train and config.padding:
        ops.append(v2.RandomCrop((height, width), padding=config.padding))
    if train and config.hflip:
        ops.append(v2.RandomHorizontalFlip(config.hflip))
    ops += [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(config.mean, config.std),
        v2.ToPureTensor(),
    ]
    return v2.Compose(ops)


class BatchAugment:
    """Train-time augmentation of a whole ``uint8`` batch ``(B, C, H, W)`` at once: the padded
    random crop (zero padding, every offset in ``[0, 2 * padding]`` equally likely, as
    ``v2.RandomCrop``), the horizontal flip and the normalisation of :func:`build_transforms`.

    Per-image torchvision transforms cost about as much as a small network's training step on
    a CPU; on the batch they cost almost nothing. Runs on the batch's device with torch's
    random generator there, so seeded runs repeat.

    Example:
        >>> augment = BatchAugment(DataConfig(input_size=(1, 28, 28), padding=2))
        >>> augment(torch.zeros(8, 1, 28, 28, dtype=torch.uint8)).shape
        torch.Size([8, 1, 28, 28])
    """

    def __init__(self, config: DataConfig, train: bool = True) -> None:
        self.padding = config.padding if train else 0
        self.hflip = config.hflip if train else 0.0
        self.mean = torch.tensor(config.mean).view(1, -1, 1, 1)
        self.std = torch.tensor(config.std).view(1, -1, 1, 1)
        self.size = config.input_size

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.dim() != 4 or tuple(images.shape[1:]) != self.size:
            raise InputError(
                f"BatchAugment: expected a uint8 batch (B, {', '.join(map(str, self.size))}), "
                f"got {images.dtype} {tuple(images.shape)}"
            )
        n, _, height, width = images.shape
        device = images.device
        if self.padding:
            p = self.padding
            padded = torch.nn.functional.pad(images, (p, p, p, p)).permute(0, 2, 3, 1)
            top = torch.randint(0, 2 * p + 1, (n, 1, 1), device=device)
            left = torch.randint(0, 2 * p + 1, (n, 1, 1), device=device)
            rows = top + torch.arange(height, device=device).view(1, -1, 1)
            cols = left + torch.arange(width, device=device).view(1, 1, -1)
            batch = torch.arange(n, device=device).view(-1, 1, 1)
            images = padded[batch, rows, cols].permute(0, 3, 1, 2)
        if self.hflip:
            flip = torch.rand(n, device=device) < self.hflip
            images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
        x = images.to(torch.float32).div_(255)
        x = x.sub_(self.mean.to(device)).div_(self.std.to(device))
        return x.contiguous()
