"""The options of a training run (:class:`TrainConfig`) and what a run returns."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from discover._utils import dataclass_from_dict, require_int
from discover.errors import InputError
from discover.nn.lwta import TemperatureSchedule
from discover.training.distributed import local_device
from discover.training.recipes import Recipe, get_recipe

__all__ = ["TrainConfig", "TrainResult"]


@dataclass
class TrainConfig:
    """Everything a training run needs; saved as ``config.json`` in the run directory.

    Recipe fields left as ``None`` take the recipe's value.
    """

    model: str = "small_resnet"
    U: int = 1
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset: str = "shapes"
    data_root: str | None = None
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)
    holdout: float = 0.1  # fraction of the training split held out for model selection
    train_subset: int | None = None  # use a seeded random subset of this many training images
    recipe: str = "cvn_small"  # the converged study's recipe (benchmarks/accuracy.py)
    epochs: int | None = None
    batch_size: int | None = None  # global batch (all processes together)
    lr: float | None = None
    weight_decay: float | None = None
    label_smoothing: float | None = None
    warmup_epochs: int | None = None
    warmup_lr: float | None = None  # lr of the warm-up epochs (the schedule steps per epoch)
    step_size: int | None = None
    augment: str | None = None
    tau: float = 1.67
    # Competition temperature T (winners ~ softmax(h/T)): from `temperature` to
    # `temperature_final` over the first `temperature_anneal` of the steps (None: the recipe's;
    # annealed to 0.02 for cvn_small, the default; constant T = 1 for the others, as in the
    # reference code, whose argmax winners lose up to 3 points: accuracy-converged.md).
    temperature: float = 1.0
    temperature_final: float | None = None
    temperature_anneal: float = 0.75
    temperature_shape: str = "cosine"
    eval_policy: str = "sample"
    eval_samples: int = 3  # stochastic passes averaged at validation (reference: 3)
    seed: int = 0
    workers: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    amp: bool | None = None  # None: on for CUDA
    max_steps_per_epoch: int | None = None  # cap for smoke runs
    out: str = "runs/train"
    resume: bool = False
    overwrite: bool = False  # replace an existing run in `out` (after the first new checkpoint)

    def resolved_recipe(self) -> Recipe:
        return get_recipe(self.recipe).replace(
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            label_smoothing=self.label_smoothing,
            warmup_epochs=self.warmup_epochs,
            warmup_lr=self.warmup_lr,
            step_size=self.step_size,
            augment=self.augment,
            temperature_final=self.temperature_final,
        )

    def validate(self) -> Recipe:
        """Check every option before anything runs; returns the resolved recipe.

        Raises:
            ValueError: naming the option and what it expects.
        """
        from discover.nn.lwta import EVAL_POLICIES

        recipe = self.resolved_recipe()

        def positive_int(name: str, value: Any, minimum: int = 1) -> None:
            require_int(value, name, minimum)

        def number(name: str, value: Any, low: float, high: float | None = None) -> None:
            ok = not isinstance(value, bool) and isinstance(value, (int, float))
            if not ok or not value >= low or (high is not None and not value < high):
                bound = f">= {low}" if high is None else f"in [{low}, {high})"
                raise InputError(f"{name} must be a number {bound}, got {value!r}")

        positive_int("U", self.U)
        positive_int("epochs", recipe.epochs)
        positive_int("batch_size", recipe.batch_size)
        positive_int("eval_samples", self.eval_samples)
        positive_int("workers", self.workers, minimum=0)
        positive_int("seed", self.seed, minimum=0)
        positive_int("warmup_epochs", recipe.warmup_epochs, minimum=0)
        for name in ("train_subset", "max_steps_per_epoch"):
            if getattr(self, name) is not None:
                positive_int(name, getattr(self, name))
        number("lr", recipe.lr, 0.0)
        if recipe.lr == 0:
            raise InputError("lr must be > 0, got 0")
        number("weight_decay", recipe.weight_decay, 0.0)
        number("label_smoothing", recipe.label_smoothing, 0.0, 1.0)
        number("holdout", self.holdout, 0.0, 1.0)
        number("warmup_lr", recipe.warmup_lr, 0.0)
        number("tau", self.tau, 0.0)
        if self.tau == 0:
            raise InputError("tau must be > 0, got 0")
        if self.eval_policy not in EVAL_POLICIES:
            raise InputError(
                f"eval_policy must be one of {', '.join(EVAL_POLICIES)}, got {self.eval_policy!r}"
            )
        if self.resume and self.overwrite:
            raise InputError("resume and overwrite exclude each other: continue or replace a run")
        for name in ("model_kwargs", "dataset_kwargs"):
            if not isinstance(getattr(self, name), dict):
                raise InputError(f"{name} must be a mapping, got {getattr(self, name)!r}")
        self.temperature_schedule()
        local_device(self.device)
        return recipe

    def temperature_schedule(self) -> TemperatureSchedule:
        """The competition-temperature schedule of the run (constant unless annealed):
        ``temperature_final`` when given, else the recipe's."""
        final = self.resolved_recipe().temperature_final
        final = self.temperature if final is None else final
        return TemperatureSchedule(
            start=self.temperature,
            final=final,
            anneal=self.temperature_anneal,
            shape=self.temperature_shape,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """From :meth:`to_dict`'s keys; unknown keys raise, naming the closest options."""
        return dataclass_from_dict(cls, data, "training option")

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Load a YAML file; ``overrides`` (e.g. from command-line flags) win over it."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"training config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            detail = " ".join(str(error).split())
            raise InputError(f"training config {path} is not valid YAML: {detail}") from None
        if not isinstance(data, dict):
            raise InputError(
                f"{path}: expected a mapping of training options, got {type(data).__name__}"
            )
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data)


@dataclass
class TrainResult:
    """What :func:`train` returns (rank 0 has the full picture)."""

    out: Path
    epochs_run: int
    best_top1: float
    history: list[dict[str, Any]]
    skipped_images: int = 0
