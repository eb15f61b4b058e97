"""Training CVNs and their dense twins: recipes, the trainer and saved runs.

Imports :mod:`discover.nn` and :mod:`discover.data`.
"""

from __future__ import annotations

from .recipes import (
    RECIPES,
    Recipe,
    build_optimizer,
    build_scheduler,
    get_recipe,
    register_recipe,
)
from .runs import Run, load_run
from .trainer import (
    GlobalBatchSampler,
    NonFiniteLossError,
    TrainConfig,
    TrainResult,
    train,
)

__all__ = [
    "Recipe",
    "RECIPES",
    "register_recipe",
    "get_recipe",
    "build_optimizer",
    "build_scheduler",
    "TrainConfig",
    "TrainResult",
    "train",
    "load_run",
    "Run",
    "NonFiniteLossError",
    "GlobalBatchSampler",
]
