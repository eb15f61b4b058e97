"""The epoch loop: one optimizer step, one epoch, the held-out evaluation after it."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from discover.data.transforms import BatchAugment
from discover.nn.lwta import TemperatureSchedule, set_temperature
from discover.training.config import TrainConfig
from discover.training.data import Loaders
from discover.training.distributed import DistContext, all_finite, unwrap
from discover.training.recipes import Recipe
from discover.training.state import RunFolder, model_temperature, rng_state

__all__ = [
    "NonFiniteLossError",
    "Position",
    "RunSetup",
    "end_epoch",
    "held_interrupts",
    "model_buffers",
    "progress_bar",
    "restore_buffers",
    "train_epoch",
    "validate",
]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or Inf; the last good checkpoint was kept."""


def _zero_sums() -> torch.Tensor:
    return torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count


@dataclass
class Position:
    """Where a run stands: the epoch and step, the epoch records so far, and what a mid-epoch
    checkpoint needs of the last finished step (its sums, RNG state and model buffers)."""

    epoch: int = 0
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: float = -1.0
    partial: torch.Tensor = field(default_factory=_zero_sums)  # the sums of a cut epoch
    sums: torch.Tensor = field(default_factory=_zero_sums)  # this epoch's, on this process
    rng: dict[str, Any] | None = None
    buffers: dict[str, torch.Tensor] | None = None


@dataclass
class RunSetup:
    """Everything a run's steps share, built once by :func:`~discover.training.train`."""

    config: TrainConfig
    recipe: Recipe
    schedule: TemperatureSchedule
    device: torch.device
    amp: bool
    ctx: DistContext
    folder: RunFolder
    model: nn.Module  # DistributedDataParallel-wrapped on several processes
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    loss_fn: nn.Module
    loaders: Loaders
    progress: bool = True

    @property
    def trainables(self) -> dict[str, Any]:
        """The stateful parts a resume point saves besides the weights, by their saved name."""
        return {"optimizer": self.optimizer, "scheduler": self.scheduler, "scaler": self.scaler}

    @property
    def steps_per_epoch(self) -> int:
        return self.loaders.steps_per_epoch(self.config.max_steps_per_epoch)


def model_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's buffers (BatchNorm statistics: small next to the weights)."""
    return {name: b.detach().clone() for name, b in model.named_buffers()}


def restore_buffers(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    """Put back buffers saved by :func:`model_buffers`."""
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(saved[name])


@contextlib.contextmanager
def held_interrupts() -> Iterator[None]:
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


def progress_bar(enabled: bool, total: int, initial: int, desc: str):
    """A tqdm bar, or ``None`` when not ``enabled``."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)


# -- training -----------------------------------------------------------------------------------
def train_epoch(setup: RunSetup, pos: Position) -> None:
    """Train epoch ``pos.epoch`` from step ``pos.step`` to its end; ``pos`` follows every
    finished step, so an interrupt can save exactly where it stopped."""
    config, recipe, ctx, loaders = setup.config, setup.recipe, setup.ctx, setup.loaders
    loaders.sampler.set_epoch(pos.epoch, start=pos.step)
    loaders.generator.manual_seed(config.seed * 100_003 + pos.epoch * 1_009 + ctx.rank)
    setup.model.train()
    pos.sums = pos.partial.clone()  # loss sum, correct, count on this process
    pos.partial.zero_()
    desc = f"epoch {pos.epoch + 1}/{recipe.epochs}"
    bar = progress_bar(setup.progress and ctx.main, setup.steps_per_epoch, pos.step, desc)
    for images, labels in loaders.train:
        if pos.step >= setup.steps_per_epoch:
            break
        _train_step(setup, pos, images, labels)
        if bar is not None:
            sums = pos.sums
            bar.update(1)
            bar.set_postfix(loss=f"{sums[0] / sums[2]:.3f}", acc=f"{sums[1] / sums[2]:.3f}")
    if bar is not None:
        bar.close()


def _train_step(setup: RunSetup, pos: Position, images: torch.Tensor, labels: torch.Tensor) -> None:
    """One optimizer step; the update and its bookkeeping happen together (Ctrl-C waits)."""
    device, model, steps = setup.device, setup.model, setup.steps_per_epoch
    if not setup.schedule.constant:  # a function of the step: resumes exactly
        done = (pos.epoch * steps + pos.step) / (setup.recipe.epochs * steps)
        set_temperature(model, setup.schedule.at(done))
    images = setup.loaders.augment(images.to(device, non_blocking=True))
    labels = labels.to(device, non_blocking=True)
    with torch.autocast(device.type, enabled=setup.amp):
        logits = model(images)
        loss = setup.loss_fn(logits, labels)
    if not all_finite(loss, setup.ctx):
        raise NonFiniteLossError(
            f"non-finite loss ({loss.item()}) at epoch {pos.epoch + 1}, step {pos.step + 1}; "
            f"stopped. The last good checkpoint is kept in {setup.folder.out} "
            "(lower the learning rate, or check the data)"
        )
    setup.optimizer.zero_grad(set_to_none=True)
    setup.scaler.scale(loss).backward()
    with held_interrupts():
        setup.scaler.step(setup.optimizer)
        setup.scaler.update()
        pos.step += 1
        pos.rng = rng_state()  # what a resume from this step must restore
        pos.buffers = model_buffers(model)
        pos.sums += torch.tensor(
            [
                loss.item() * labels.numel(),
                (logits.argmax(1) == labels).sum().item(),
                labels.numel(),
            ],
            dtype=torch.float64,
        )


def end_epoch(setup: RunSetup, pos: Position, started: float) -> dict[str, Any]:
    """The record of the epoch just trained (begun at time ``started``): training loss and
    accuracy over all processes, learning rate, temperature and held-out scores. Steps the
    learning-rate schedule and, when annealed, sets the temperature the epoch ends with."""
    if setup.ctx.world > 1:
        dist.all_reduce(pos.sums)
    sums = pos.sums
    record = {
        "epoch": pos.epoch + 1,
        "lr": setup.optimizer.param_groups[0]["lr"],
        "train_loss": (sums[0] / sums[2]).item(),
        "train_top1": (sums[1] / sums[2]).item(),
        "seconds": time.time() - started,
    }
    setup.scheduler.step()
    if not setup.schedule.constant:  # validate and save with the temperature reached
        set_temperature(setup.model, setup.schedule.at((pos.epoch + 1) / setup.recipe.epochs))
    record["temperature"] = model_temperature(unwrap(setup.model))
    if setup.loaders.val is not None:
        record.update(
            validate(
                setup.model,
                setup.loaders.val,
                setup.loaders.finish,
                setup.device,
                setup.config.eval_samples,
                setup.amp,
                setup.ctx,
            )
        )
    return record


# -- evaluation ---------------------------------------------------------------------------------
@torch.no_grad()
def validate(
    model: nn.Module,
    loader: DataLoader,
    finish: BatchAugment,
    device: torch.device,
    samples: int,
    amp: bool,
    ctx: DistContext,
) -> dict[str, float]:
    """Held-out loss and top-1 over all processes (``samples`` stochastic passes averaged)."""
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
