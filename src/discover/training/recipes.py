"""Training recipes: optimiser, schedule and loss settings, chosen by name.

``resnet`` and ``deit`` are the reference code's effective settings (docs/method.md §5); the
``*_small`` variants keep their shape (SGD + step decay; AdamW + warm-up + cosine + label
smoothing) at a size that trains on small data sets and CPUs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from discover._utils import Registry
from discover.errors import InputError

__all__ = [
    "Recipe",
    "RECIPES",
    "register_recipe",
    "get_recipe",
    "build_optimizer",
    "build_scheduler",
]


@dataclass(frozen=True)
class Recipe:
    """Optimiser, schedule and loss settings of a training run (everything epoch-based)."""

    name: str
    optimizer: str  # "sgd" or "adamw"
    lr: float
    batch_size: int
    epochs: int
    weight_decay: float
    schedule: str  # "step" or "cosine"
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    step_size: int = 30  # step schedule: epochs between decays
    gamma: float = 0.1  # step schedule: decay factor
    warmup_epochs: int = 0  # cosine schedule
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    label_smoothing: float = 0.0
    augment: str = "basic"  # "basic" (crop + flip), "randaugment" (timm), or "none"
    # CVNs: anneal the competition temperature from 1 to this over the first 75 % of the
    # steps, so deterministic (argmax) winners lose nothing; None keeps T = 1 (the reference)
    temperature_final: float | None = None
    description: str = ""

    def replace(self, **changes: Any) -> Recipe:
        """A copy with some fields changed (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


RECIPES: Registry[Recipe] = Registry("recipe")


def register_recipe(recipe: Recipe) -> Recipe:
    """Make ``recipe`` available by its name; registering a name twice raises.

    Example:
        >>> register_recipe(Recipe("sgd_fast", "sgd", lr=0.2, batch_size=512, epochs=5,
        ...                        weight_decay=5e-4, schedule="step", step_size=2))  # doctest: +SKIP
    """
    return RECIPES.register(recipe.name, recipe)


def get_recipe(name: str) -> Recipe:
    """The registered recipe ``name``; unknown names list the close matches."""
    return RECIPES.get(name)


register_recipe(
    Recipe(
        "resnet",
        "sgd",
        lr=0.1,
        batch_size=256,
        epochs=90,
        weight_decay=1e-4,
        schedule="step",
        step_size=30,
        gamma=0.1,
        augment="basic",
        description="reference ResNet-18/Places365: SGD 0.1, momentum 0.9, wd 1e-4, x0.1 every 30 of 90 epochs",
    )
)
register_recipe(
    Recipe(
        "resnet_small",
        "sgd",
        lr=0.05,
        batch_size=128,
        epochs=12,
        weight_decay=5e-4,
        schedule="step",
        step_size=5,
        gamma=0.2,
        augment="basic",
        description="the resnet recipe scaled to small data: 12 epochs, lr 0.05, x0.2 every 5 epochs",
    )
)
register_recipe(
    Recipe(
        "cvn_small",
        "adamw",
        lr=2e-3,
        batch_size=128,
        epochs=15,
        weight_decay=0.02,
        schedule="cosine",
        warmup_epochs=1,
        warmup_lr=2e-4,
        min_lr=1e-5,
        label_smoothing=0.1,
        augment="basic",
        temperature_final=0.02,
        description="CVNs that keep their accuracy and deploy with fixed winners (the converged "
        "study of benchmarks/accuracy.py): AdamW 2e-3, 1 warm-up epoch at 2e-4, cosine, label "
        "smoothing 0.1, competition temperature annealed 1 -> 0.02 over 75 % of the steps; "
        "15 epochs (the study trains its small ViTs for 20)",
    )
)
register_recipe(
    Recipe(
        "deit",
        "adamw",
        lr=2.5e-4,
        batch_size=256,
        epochs=300,
        weight_decay=0.02,
        schedule="cosine",
        warmup_epochs=5,
        warmup_lr=1e-6,
        min_lr=1e-5,
        label_smoothing=0.1,
        augment="randaugment",
        description="reference DeiT CVN: AdamW 5e-4 x batch/512, wd 0.02, 5 warm-up epochs, cosine, "
        "label smoothing 0.1, RandAugment, no mixup, drop-path 0",
    )
)
register_recipe(
    Recipe(
        "deit_small",
        "adamw",
        lr=1e-3,
        batch_size=128,
        epochs=20,
        weight_decay=0.02,
        schedule="cosine",
        warmup_epochs=2,
        warmup_lr=1e-5,
        min_lr=1e-5,
        label_smoothing=0.1,
        augment="basic",
        description="the deit recipe scaled to small data: 20 epochs, AdamW 1e-3, 2 warm-up epochs",
    )
)


def build_optimizer(recipe: Recipe, model: nn.Module) -> torch.optim.Optimizer:
    """The recipe's optimiser over ``model``'s trainable parameters.

    Weight decay skips biases and normalisation parameters (1-D tensors) for AdamW, as timm
    does; SGD decays everything, as the reference ResNet trainer does.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
        )
    if recipe.optimizer == "adamw":
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        groups = [
            {"params": decay, "weight_decay": recipe.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=recipe.lr, betas=recipe.betas, eps=recipe.eps)
    raise InputError(
        f"recipe {recipe.name!r}: unknown optimizer {recipe.optimizer!r}; expected 'sgd' or 'adamw'"
    )


def build_scheduler(
    recipe: Recipe, optimizer: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LRScheduler:
    """The recipe's learning-rate schedule, stepped once per epoch."""
    from torch.optim import lr_scheduler

    if recipe.schedule == "step":
        return lr_scheduler.StepLR(optimizer, step_size=recipe.step_size, gamma=recipe.gamma)
    if recipe.schedule == "cosine":
        cosine = lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, recipe.epochs - recipe.warmup_epochs), eta_min=recipe.min_lr
        )
        if recipe.warmup_epochs <= 0:
            return cosine
        warmup = lr_scheduler.LinearLR(
            optimizer,
            start_factor=recipe.warmup_lr / recipe.lr,
            end_factor=1.0,
            total_iters=recipe.warmup_epochs,
        )
        return lr_scheduler.SequentialLR(
            optimizer, [warmup, cosine], milestones=[recipe.warmup_epochs]
        )
    raise InputError(
        f"recipe {recipe.name!r}: unknown schedule {recipe.schedule!r}; expected 'step' or 'cosine'"
    )
