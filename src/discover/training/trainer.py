"""Training CVNs (and their dense twins) on one process or many (torch DDP).

:func:`train` runs a :class:`TrainConfig`: it builds the model and the data, trains with a
named recipe (:mod:`discover.training.recipes`), validates every epoch on a held-out part of the
training split, and writes a run directory::

    OUT/config.json           the complete resolved configuration (+ recipe, data config)
    OUT/log.jsonl             one line per epoch: loss, accuracy, lr, time
    OUT/last.safetensors      weights after the last finished epoch (+ last.json metadata)
    OUT/best.safetensors      weights with the best held-out top-1 (model selection)
    OUT/state/                optimizer, scheduler and RNG state for --resume

Runs are resumable: ``resume=True`` continues from ``OUT/state`` (also after Ctrl-C, which
leaves a mid-epoch checkpoint) and gives the same weights as an uninterrupted run with
the same seed. Under ``torchrun --nproc_per_node=N -m discover train ...`` every process
trains its slice of each *global* batch with DistributedDataParallel.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from discover._utils import (
    atomic_path,
    dataclass_from_dict,
    read_json,
    require_int,
    resolve_device,
    write_atomic,
)
from discover.data.registry import build_dataset
from discover.data.transforms import BatchAugment, DataConfig, build_transforms
from discover.errors import InputError
from discover.nn.checkpoints import load_checkpoint, save_checkpoint
from discover.nn.lwta import TemperatureSchedule, set_temperature
from discover.nn.models import create_model
from discover.training.recipes import Recipe, build_optimizer, build_scheduler, get_recipe

__all__ = [
    "TrainConfig",
    "TrainResult",
    "train",
    "NonFiniteLossError",
    "GlobalBatchSampler",
]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or Inf; the last good checkpoint was kept."""


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
        _resolve_device(self.device)
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


# -- distributed helpers --------------------------------------------------------------------
@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: torch.device) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _resolve_device(spec: str) -> torch.device:
    device = resolve_device(spec)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


class GlobalBatchSampler:
    """Shuffled global batches, each split evenly across processes.

    The order depends only on ``(seed, epoch)``, so one process with global batch B and
    N processes with B / N each see the same samples in every step, and a resumed run can
    skip the batches it already trained on.
    """

    def __init__(
        self,
        size: int,
        global_batch: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        shuffle: bool = True,
        drop_last: bool = True,
    ) -> None:
        if global_batch % world:
            raise InputError(
                f"batch_size {global_batch} must be divisible by the number of processes ({world})"
            )
        if drop_last and size < global_batch:
            raise InputError(
                f"the training set has {size} images, fewer than one batch of "
                f"{global_batch}; lower batch_size"
            )
        self.size, self.global_batch, self.seed = size, global_batch, seed
        self.rank, self.world, self.shuffle, self.drop_last = rank, world, shuffle, drop_last
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order and skip its first ``start`` batches."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        full = self.size // self.global_batch
        return full if self.drop_last else math.ceil(self.size / self.global_batch)

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        per_rank = self.global_batch // self.world
        for step in range(self.start, len(self)):
            batch = order[step * self.global_batch : (step + 1) * self.global_batch]
            if self.world > 1:
                per_rank = math.ceil(len(batch) / self.world)
            yield batch[self.rank * per_rank : (self.rank + 1) * per_rank]


# -- data -----------------------------------------------------------------------------------
class _Transformed(Dataset):
    """``dataset[indices[i]]`` with ``transform`` applied to the image (one raw data set can
    feed a training view and an evaluation view)."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], transform) -> None:
        self.dataset, self.indices, self.transform = dataset, list(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        image, label, *rest = self.dataset[self.indices[i]]
        return self.transform(image), label


def _split_holdout(
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


def _data_config(model: nn.Module, recipe: Recipe) -> DataConfig:
    base = DataConfig.from_model(model)
    size = base.input_size[1]
    if recipe.augment == "basic":
        return dataclasses.replace(base, padding=max(2, size // 16), hflip=0.0)
    if recipe.augment in ("none", "randaugment"):
        return base
    raise InputError(
        f"unknown augment {recipe.augment!r}; expected 'basic', 'randaugment' or 'none'"
    )


def _train_transform(config: DataConfig, recipe: Recipe):
    """The per-image part (up to the ``uint8`` image); :class:`BatchAugment` does the rest."""
    transform = build_transforms(config, train=True, batch_augment=True)
    if recipe.augment == "randaugment":
        from torchvision.transforms import v2

        # RandAugment on uint8 images, before the configured crop/flip/normalisation.
        return v2.Compose([v2.ToImage(), v2.RandAugment(num_ops=2, magnitude=9), transform])
    return transform


def _skipped(dataset: Dataset) -> dict[str, str]:
    """Unreadable files the data set skipped (path -> reason); empty for generated data."""
    skipped = getattr(dataset, "skipped", None) or {}
    return (
        {str(k): str(v) for k, v in skipped.items()}
        if isinstance(skipped, dict)
        else {str(k): "unreadable" for k in skipped}
    )


# -- state ----------------------------------------------------------------------------------
def _rng_state() -> dict[str, Any]:
    """Every RNG state as tensors and plain values (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (
            n["kind"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=str))


def _atomic_torch_save(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:  # no temporary file survives a failure (disk full)
        torch.save(data, tmp)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# -- evaluation during training -------------------------------------------------------------
@torch.no_grad()
def _validate(
    model: nn.Module,
    loader: DataLoader,
    finish: BatchAugment,
    device: torch.device,
    samples: int,
    amp: bool,
    ctx: _Dist,
) -> dict[str, float]:
    from discover.nn.lwta import average_logits

    model.eval()
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count
    for images, labels in loader:
        images, labels = finish(images.to(device)), labels.to(device)
        with torch.autocast(device.type, enabled=amp):
            logits = average_logits(model, images, samples=samples)
        totals += torch.tensor(
            [
                nn.functional.cross_entropy(logits.float(), labels, reduction="sum").item(),
                (logits.argmax(1) == labels).sum().item(),
                labels.numel(),
            ],
            dtype=torch.float64,
        )
    if ctx.world > 1:
        dist.all_reduce(totals)
    loss, correct, count = totals.tolist()
    return {"val_loss": loss / max(count, 1), "val_top1": correct / max(count, 1)}


# -- the loop -------------------------------------------------------------------------------
def train(config: TrainConfig, *, progress: bool = True) -> TrainResult:
    """Train ``config.model`` on ``config.dataset`` and write the run directory ``config.out``.

    Raises:
        NonFiniteLossError: the loss became NaN/Inf (the last good checkpoint is kept).
        KeyboardInterrupt: after writing a resumable mid-epoch checkpoint.

    Example:
        >>> result = train(TrainConfig(model="small_resnet", U=4, dataset="shapes",
        ...                            dataset_kwargs={"n": 2000}, epochs=2, out="runs/demo"))  # doctest: +SKIP
        >>> result.best_top1  # doctest: +SKIP
    """
    recipe = config.validate()  # every option is checked before anything is touched
    schedule = config.temperature_schedule()
    device = _resolve_device(config.device)
    final_out = Path(config.out).expanduser()
    if not config.resume and _holds_run(final_out) and not config.overwrite:
        raise InputError(
            f"{final_out} already holds a training run; continue it with resume=True or "
            "replace it with overwrite=True, or choose another out folder"
        )
    ctx = _init_distributed(device)
    amp = config.amp if config.amp is not None else device.type == "cuda"
    # Overwriting trains into a staging folder and swaps it in after the first checkpoint:
    # until then the old run stays complete and loadable.
    staging = (
        final_out.with_name(final_out.name + ".overwrite-staging")
        if config.overwrite and _holds_run(final_out)
        else None
    )
    out = staging or final_out
    if staging is not None and ctx.main and staging.exists():
        shutil.rmtree(staging)  # left by an earlier failed overwrite
    state_dir = out / "state"
    torch.manual_seed(config.seed + ctx.rank)  # LWTA noise differs per process, as it should
    np.random.seed(config.seed + ctx.rank)
    random.seed(config.seed + ctx.rank)

    train_set = build_dataset(
        config.dataset, "train", root=config.data_root, **config.dataset_kwargs
    )
    class_names = list(train_set.class_names)
    if not class_names:
        raise InputError(f"data set {config.dataset!r} has no classes")
    torch.manual_seed(config.seed)  # identical initial weights on every process
    model = create_model(
        config.model,
        U=config.U,
        num_classes=len(class_names),
        tau=config.tau,
        temperature=config.temperature,
        eval_policy=config.eval_policy,
        **config.model_kwargs,
    )
    torch.manual_seed(config.seed + ctx.rank)
    data_config = _data_config(model, recipe)
    model.data_config = data_config  # travels in every checkpoint's metadata
    fit_idx, val_idx = _split_holdout(
        len(train_set), config.holdout, config.seed, subset=config.train_subset
    )
    fit_set = _Transformed(train_set, fit_idx, _train_transform(data_config, recipe))
    val_set = (
        _Transformed(
            train_set, val_idx, build_transforms(data_config, train=False, batch_augment=True)
        )
        if val_idx
        else None
    )
    # crop, flip and normalisation on whole batches (per-image transforms cost about as much
    # as a small network's training step on a CPU)
    augment = BatchAugment(data_config, train=True)
    finish = BatchAugment(data_config, train=False)

    model.to(device)
    if ctx.world > 1:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = build_optimizer(recipe, model)
    scheduler = build_scheduler(recipe, optimizer)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda")
    loss_fn = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)

    sampler = GlobalBatchSampler(len(fit_set), recipe.batch_size, config.seed, ctx.rank, ctx.world)
    loader_kwargs = dict(
        num_workers=config.workers, pin_memory=device.type == "cuda", persistent_workers=False
    )
    # The loader's own generator (worker seeds) is reseeded every epoch, so creating an
    # iterator never draws from the global RNG and a resumed epoch sees the same seeds.
    loader_rng = torch.Generator()
    train_loader = DataLoader(fit_set, batch_sampler=sampler, generator=loader_rng, **loader_kwargs)
    val_loader = None
    if val_set is not None:
        val_sampler = GlobalBatchSampler(
            len(val_set), recipe.batch_size, 0, ctx.rank, ctx.world, shuffle=False, drop_last=False
        )
        val_loader = DataLoader(val_set, batch_sampler=val_sampler, **loader_kwargs)

    start_epoch, start_step, history, best = 0, 0, [], -1.0
    partial = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count of a cut epoch
    if config.resume:
        start_epoch, start_step, history, best, partial = _load_state(
            out, config, _unwrap(model), optimizer, scheduler, scaler, ctx
        )

    def checkpoint(
        epoch_done: int,
        step_done: int,
        sums: torch.Tensor,
        *,
        improved: bool = False,
        record: dict[str, Any] | None = None,
        rng: dict[str, Any] | None = None,
    ) -> None:
        """The resume point after ``step_done`` steps of epoch ``epoch_done`` (+ checkpoints)."""
        _save_state(
            out,
            _unwrap(model),
            optimizer,
            scheduler,
            scaler,
            ctx,
            epoch_done,
            step_done,
            history,
            best,
            improved,
            record,
            sums,
            rng=rng,
        )

    try:  # a failure here leaves no staging folder behind
        if not config.resume and ctx.main:
            out.mkdir(parents=True, exist_ok=True)
            state_dir.mkdir(exist_ok=True)
            (out / "log.jsonl").write_text("")
        if ctx.main:
            _atomic_json(
                out / "config.json",
                {
                    "train": config.to_dict(),
                    "recipe": recipe.to_dict(),
                    "data": data_config.to_dict(),
                    "model": _unwrap(model).cvn_config.to_dict(),
                    "temperature_schedule": schedule.to_dict(),
                    "class_names": class_names,
                    "world_size": ctx.world,
                    "device": str(device),
                    "amp": amp,
                    "torch": torch.__version__,
                    "skipped_images": _skipped(train_set),
                },
            )
            if _skipped(train_set):
                print(
                    f"note: skipped {len(_skipped(train_set))} unreadable image(s); listed in "
                    f"{out / 'config.json'}",
                    flush=True,
                )
        if ctx.world > 1:
            dist.barrier()
    except BaseException:
        if staging is not None and ctx.main:
            shutil.rmtree(staging, ignore_errors=True)
        raise

    steps_per_epoch = len(sampler)
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    epoch, step, sums, rng_at_step = start_epoch, start_step, partial, _rng_state()
    buffers_at_step = _buffers(model)
    try:
        for epoch in range(start_epoch, recipe.epochs):
            sampler.set_epoch(epoch, start=step)
            loader_rng.manual_seed(config.seed * 100_003 + epoch * 1_009 + ctx.rank)
            model.train()
            t0 = time.time()
            sums = partial.clone()  # loss sum, correct, count on this process
            partial.zero_()
            bar = _progress(
                progress and ctx.main, steps_per_epoch, step, f"epoch {epoch + 1}/{recipe.epochs}"
            )
            for images, labels in train_loader:
                if step >= steps_per_epoch:
                    break
                if not schedule.constant:  # a function of the step: resumes exactly
                    done = (epoch * steps_per_epoch + step) / (recipe.epochs * steps_per_epoch)
                    set_temperature(model, schedule.at(done))
                images = augment(images.to(device, non_blocking=True))
                labels = labels.to(device, non_blocking=True)
                with torch.autocast(device.type, enabled=amp):
                    logits = model(images)
                    loss = loss_fn(logits, labels)
                if not _all_finite(loss, ctx):
                    raise NonFiniteLossError(
                        f"non-finite loss ({loss.item()}) at epoch {epoch + 1}, step {step + 1}; "
                        f"stopped. The last good checkpoint is kept in {out} "
                        "(lower the learning rate, or check the data)"
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                with _held_interrupts():  # the update and its bookkeeping happen together
                    scaler.step(optimizer)
                    scaler.update()
                    step += 1
                    rng_at_step = _rng_state()  # what a resume from this step must restore
                    buffers_at_step = _buffers(model)
                    sums += torch.tensor(
                        [
                            loss.item() * labels.numel(),
                            (logits.argmax(1) == labels).sum().item(),
                            labels.numel(),
                        ],
                        dtype=torch.float64,
                    )
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{sums[0] / sums[2]:.3f}", acc=f"{sums[1] / sums[2]:.3f}")
            if bar is not None:
                bar.close()
            if ctx.world > 1:
                dist.all_reduce(sums)
            record = {
                "epoch": epoch + 1,
                "lr": optimizer.param_groups[0]["lr"],
                "train_loss": (sums[0] / sums[2]).item(),
                "train_top1": (sums[1] / sums[2]).item(),
                "seconds": time.time() - t0,
            }
            scheduler.step()
            if not schedule.constant:  # validate and save with the temperature reached
                set_temperature(model, schedule.at((epoch + 1) / recipe.epochs))
            record["temperature"] = _temperature(_unwrap(model))
            if val_loader is not None:
                record.update(
                    _validate(model, val_loader, finish, device, config.eval_samples, amp, ctx)
                )
            history.append(record)
            step = 0
            improved = record.get("val_top1", record["train_top1"]) > best
            best = max(best, record.get("val_top1", record["train_top1"]))
            checkpoint(epoch + 1, 0, partial, improved=improved, record=record)
            if staging is not None:
                _swap_in(staging, final_out, ctx)
                out, state_dir, staging = final_out, final_out / "state", None
    except KeyboardInterrupt:
        if staging is not None:  # nothing of the new run is worth keeping yet
            if ctx.main:
                print(f"\ninterrupted before the first checkpoint: {final_out} is unchanged")
            raise
        # The cut batch's forward may have moved BatchNorm statistics: roll them back to the
        # last finished step, so the checkpoint is exactly a batch boundary.
        if buffers_at_step is not None:
            _restore_buffers(model, buffers_at_step)
        checkpoint(epoch, step, sums, rng=rng_at_step)
        if ctx.main:
            print(
                f"\ninterrupted: resumable checkpoint written to {state_dir} "
                f"(epoch {epoch + 1}, step {step}); continue with resume=True "
                "(`discover train --resume`)",
                flush=True,
            )
        raise
    finally:
        if staging is not None and ctx.main and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
        if ctx.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    return TrainResult(out, len(history), best, history, len(_skipped(train_set)))


def _holds_run(folder: Path) -> bool:
    """Whether ``folder`` holds (part of) a training run."""
    return folder.is_dir() and any(
        (folder / name).exists() for name in ("config.json", "last.safetensors", "state")
    )


def _swap_in(staging: Path, final: Path, ctx: _Dist) -> None:
    """Replace the run in ``final`` by the one in ``staging`` (rank 0; all ranks wait)."""
    if ctx.world > 1:
        dist.barrier()
    if ctx.main:
        aside = final.with_name(final.name + f".replaced-{os.getpid()}")
        os.replace(final, aside)
        os.replace(staging, final)
        shutil.rmtree(aside, ignore_errors=True)
    if ctx.world > 1:
        dist.barrier()


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's buffers (BatchNorm statistics: small next to the weights)."""
    return {name: b.detach().clone() for name, b in model.named_buffers()}


def _restore_buffers(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(saved[name])


@contextlib.contextmanager
def _held_interrupts() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) during the block and raise it when the block has finished."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt


def _temperature(model: nn.Module) -> float | None:
    """The competition temperature of ``model``'s LWTA layers (``None`` without any)."""
    from discover.nn.lwta import lwta_layers

    layers = list(lwta_layers(model).values())
    return layers[0].temperature if layers else None


def _all_finite(loss: torch.Tensor, ctx: _Dist) -> bool:
    """Whether the loss is finite on every process (all of them stop together)."""
    finite = torch.isfinite(loss.detach()).to(torch.int32).reshape(1)
    if ctx.world > 1:
        finite = finite.cpu() if dist.get_backend() == "gloo" else finite
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item())


def _progress(enabled: bool, total: int, initial: int, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)


def _save_state(
    out: Path,
    model: nn.Module,
    optimizer,
    scheduler,
    scaler,
    ctx: _Dist,
    epoch: int,
    step: int,
    history: list,
    best: float,
    improved: bool,
    record: dict | None,
    partial: torch.Tensor,
    rng: dict | None = None,
) -> None:
    """Save the resume point and the user-facing checkpoints.

    Rank 0's resume point is one file, ``state/trainer.pt`` (weights, optimizer, scheduler,
    scaler, its RNG state and partial sums, the position), written atomically: a kill at any
    moment leaves the old or the new point, never a mix. Other ranks keep their RNG state in
    ``state/rng-rank{r}.pt``, tagged with the position so a resume can check it. ``rng`` is
    the RNG state to resume from (default: now); a mid-epoch save passes the state right
    after the last optimizer step, before any of the cut batch was loaded.
    """
    state_dir = out / "state"
    position = {"epoch": epoch, "step": step}
    rng_state = {**(rng or _rng_state()), "partial": partial, **position}
    if ctx.world > 1:
        dist.barrier()
    if not ctx.main:
        _atomic_torch_save(state_dir / f"rng-rank{ctx.rank}.pt", rng_state)
    if ctx.world > 1:
        dist.barrier()
    if ctx.main:
        meta = {
            **position,
            "best_top1": best,
            "history": history,
            "temperature": _temperature(model),
        }
        weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        _atomic_torch_save(
            state_dir / "trainer.pt",
            {
                "model": weights,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": rng_state,
                **meta,
            },
        )
        save_checkpoint(model, out / "last.safetensors")
        _atomic_json(out / "last.json", meta)
        if improved:
            save_checkpoint(model, out / "best.safetensors")
            _atomic_json(
                out / "best.json",
                {"epoch": epoch, **(record or {}), "temperature": _temperature(model)},
            )
        if record is not None:
            with open(out / "log.jsonl", "a") as log:
                log.write(json.dumps(record) + "\n")
    if ctx.world > 1:
        dist.barrier()


# Options a resumed run may change; everything else must match the saved run.
_RESUME_MAY_CHANGE = frozenset(
    {"resume", "overwrite", "epochs", "out", "workers", "device", "max_steps_per_epoch"}
)


def _load_state(
    out: Path, config: TrainConfig, model: nn.Module, optimizer, scheduler, scaler, ctx: _Dist
) -> tuple[int, int, list, float, torch.Tensor]:
    trainer_file = out / "state" / "trainer.pt"
    if not trainer_file.is_file():
        raise FileNotFoundError(
            f"resume=True: no training state in {out} (looked for {trainer_file}); start the "
            "run without resume=True first"
        )
    saved_config = read_json(out / "config.json", "run configuration")
    differs = [
        f"{k}: run has {saved_config['train'].get(k)!r}, now {getattr(config, k)!r}"
        for k in config.to_dict()
        if k not in _RESUME_MAY_CHANGE and saved_config["train"].get(k) != getattr(config, k)
    ]
    if differs:
        raise InputError(
            f"resume=True: the configuration differs from the run in {out}: " + "; ".join(differs)
        )
    state = _load_tensors(trainer_file)
    if "model" in state:  # the weights of the resume point itself
        model.load_state_dict(state["model"])
    else:  # a run saved before the weights moved into the resume point
        load_checkpoint(model, out / "last.safetensors")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    rng_file = out / "state" / f"rng-rank{ctx.rank}.pt"
    rng = state.get("rng") if ctx.main else None
    if rng is None and rng_file.is_file():
        rng = _load_tensors(rng_file)
    partial = torch.zeros(3, dtype=torch.float64)
    if rng is not None:
        if (rng.get("epoch", state["epoch"]), rng.get("step", state["step"])) != (
            state["epoch"],
            state["step"],
        ):
            raise InputError(
                f"resume=True: {rng_file} (epoch {rng.get('epoch')}, step {rng.get('step')}) does "
                f"not match {trainer_file} (epoch {state['epoch']}, step {state['step']}): the "
                "run was stopped while saving; start it again with overwrite=True"
            )
        _set_rng_state(rng)
        partial = rng["partial"]
    _truncate_log(out / "log.jsonl", len(state["history"]))
    return state["epoch"], state["step"], list(state["history"]), state["best_top1"], partial


def _load_tensors(path: Path) -> dict[str, Any]:
    """A training-state file: tensors and plain values only, never arbitrary objects."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, corrupted or not ours: name the file
        raise InputError(
            f"cannot read the training state {path}: {type(error).__name__}: {error}. "
            "The run cannot be resumed from it; start it again with overwrite=True"
        ) from None


def _truncate_log(path: Path, records: int) -> None:
    if path.is_file():
        lines = path.read_text().splitlines()[:records]
        path.write_text("".join(line + "\n" for line in lines))
