"""A training run's data: the held-out split, the per-image and batch transforms, the loaders."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from discover.data.transforms import BatchAugment, DataConfig, build_transforms
from discover.errors import InputError
from discover.training.config import TrainConfig
from discover.training.distributed import DistContext, GlobalBatchSampler
from discover.training.recipes import Recipe

__all__ = [
    "Loaders",
    "TransformedSubset",
    "build_loaders",
    "run_data_config",
    "skipped_images",
    "split_holdout",
    "train_transform",
]


class TransformedSubset(Dataset):
    """``dataset[indices[i]]`` with ``transform`` applied to the image (one raw data set can
    feed a training view and an evaluation view)."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], transform) -> None:
        self.dataset, self.indices, self.transform = dataset, list(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        image, label, *rest = self.dataset[self.indices[i]]
        return self.transform(image), label


def split_holdout(
    n: int, fraction: float, seed: int, subset: int | None = None
) -> tuple[list[int], list[int]]:
    """Seeded split of ``range(n)`` (or a random ``subset`` of it) into (training, held-out)."""
    if not 0 <= fraction < 1:
        raise InputError(f"holdout must be in [0, 1), got {fraction}")
    if subset is not None and not 0 < subset <= n:
        raise InputError(f"train_subset={subset} must be between 1 and the {n} training images")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7)).tolist()
    order = order[:subset] if subset is not None else order
    n_val = int(round(len(order) * fraction)) if fraction else 0
    n_val = max(1, n_val) if fraction else 0
    if n_val >= len(order):
        raise InputError(f"holdout={fraction} leaves no training images out of {len(order)}")
    return sorted(order[n_val:]), sorted(order[:n_val])


def run_data_config(model: nn.Module, recipe: Recipe) -> DataConfig:
    """The model's data configuration with the recipe's augmentation."""
    base = DataConfig.from_model(model)
    size = base.input_size[1]
    if recipe.augment == "basic":
        return dataclasses.replace(base, padding=max(2, size // 16), hflip=0.0)
    if recipe.augment in ("none", "randaugment"):
        return base
    raise InputError(
        f"unknown augment {recipe.augment!r}; expected 'basic', 'randaugment' or 'none'"
    )


def train_transform(config: DataConfig, recipe: Recipe):
    """The per-image part (up to the ``uint8`` image); :class:`BatchAugment` does the rest."""
    transform = build_transforms(config, train=True, batch_augment=True)
    if recipe.augment == "randaugment":
        from torchvision.transforms import v2

        # RandAugment on uint8 images, before the configured crop/flip/normalisation.
        return v2.Compose([v2.ToImage(), v2.RandAugment(num_ops=2, magnitude=9), transform])
    return transform


def skipped_images(dataset: Dataset) -> dict[str, str]:
    """Unreadable files the data set skipped (path -> reason); empty for generated data."""
    skipped = getattr(dataset, "skipped", None) or {}
    return (
        {str(k): str(v) for k, v in skipped.items()}
        if isinstance(skipped, dict)
        else {str(k): "unreadable" for k in skipped}
    )


@dataclass
class Loaders:
    """The loaders of a run and the batch transforms that finish their images."""

    sampler: GlobalBatchSampler
    train: DataLoader
    val: DataLoader | None
    generator: torch.Generator  # the training loader's own (worker seeds), reseeded per epoch
    augment: BatchAugment  # training crop, flip and normalisation on whole batches
    finish: BatchAugment  # the evaluation counterpart
    data_config: DataConfig  # what the transforms follow

    def steps_per_epoch(self, cap: int | None) -> int:
        """Optimizer steps in one epoch, at most ``cap`` (a smoke run's limit)."""
        steps = len(self.sampler)
        return min(steps, cap) if cap else steps


def build_loaders(
    train_set: Dataset,
    data_config: DataConfig,
    config: TrainConfig,
    recipe: Recipe,
    device: torch.device,
    ctx: DistContext,
) -> Loaders:
    """Split ``train_set`` into training and held-out images and load both in global batches."""
    fit_idx, val_idx = split_holdout(
        len(train_set), config.holdout, config.seed, subset=config.train_subset
    )
    fit_set = TransformedSubset(train_set, fit_idx, train_transform(data_config, recipe))
    val_set = (
        TransformedSubset(
            train_set, val_idx, build_transforms(data_config, train=False, batch_augment=True)
        )
        if val_idx
        else None
    )
    # crop, flip and normalisation on whole batches (per-image transforms cost about as much
    # as a small network's training step on a CPU)
    augment = BatchAugment(data_config, train=True)
    finish = BatchAugment(data_config, train=False)
    sampler = GlobalBatchSampler(len(fit_set), recipe.batch_size, config.seed, ctx.rank, ctx.world)
    options: dict[str, Any] = dict(
        num_workers=config.workers, pin_memory=device.type == "cuda", persistent_workers=False
    )
    # The loader's own generator (worker seeds) is reseeded every epoch, so creating an
    # iterator never draws from the global RNG and a resumed epoch sees the same seeds.
    generator = torch.Generator()
    train_loader = DataLoader(fit_set, batch_sampler=sampler, generator=generator, **options)
    val_loader = None
    if val_set is not None:
        val_sampler = GlobalBatchSampler(
            len(val_set), recipe.batch_size, 0, ctx.rank, ctx.world, shuffle=False, drop_last=False
        )
        val_loader = DataLoader(val_set, batch_sampler=val_sampler, **options)
    return Loaders(sampler, train_loader, val_loader, generator, augment, finish, data_config)
