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

The parts: :mod:`~discover.training.config` (the options), :mod:`~discover.training.distributed`
(processes and global batches), :mod:`~discover.training.data` (split and loaders),
:mod:`~discover.training.loop` (steps, epochs, validation) and :mod:`~discover.training.state`
(the run folder, checkpoints and resuming).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from discover._utils import write_atomic
from discover.data.registry import build_dataset
from discover.errors import InputError
from discover.nn.models import create_model
from discover.training.config import TrainConfig, TrainResult
from discover.training.data import Loaders, build_loaders, run_data_config, skipped_images
from discover.training.distributed import (
    DistContext,
    init_distributed,
    local_device,
    unwrap,
)
from discover.training.loop import (
    Position,
    RunSetup,
    end_epoch,
    model_buffers,
    restore_buffers,
    train_epoch,
)
from discover.training.recipes import Recipe, build_optimizer, build_scheduler
from discover.training.state import RunFolder, holds_run, load_state, rng_state, save_state

__all__ = ["train"]


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
    device = local_device(config.device)
    final_out = _checked_out(config)
    ctx = init_distributed(device)
    folder = RunFolder.prepare(final_out, overwrite=config.overwrite, ctx=ctx)
    _seed(config.seed + ctx.rank)  # LWTA noise differs per process, as it should

    train_set = build_dataset(
        config.dataset, "train", root=config.data_root, **config.dataset_kwargs
    )
    class_names = list(train_set.class_names)
    if not class_names:
        raise InputError(f"data set {config.dataset!r} has no classes")
    model = _build_model(config, len(class_names), ctx)
    data_config = run_data_config(model, recipe)
    model.data_config = data_config  # travels in every checkpoint's metadata
    loaders = build_loaders(train_set, data_config, config, recipe, device, ctx)
    setup = _build_setup(config, recipe, device, ctx, folder, model, loaders, progress)

    pos = _resume(setup) if config.resume else Position()
    _start_run_folder(setup, train_set, class_names)
    _run_epochs(setup, pos)
    skipped = len(skipped_images(train_set))
    return TrainResult(folder.out, len(pos.history), pos.best, pos.history, skipped)


# -- setting up ---------------------------------------------------------------------------------
def _checked_out(config: TrainConfig) -> Path:
    """``config.out``, checked not to hold a run that the configuration would clobber."""
    out = Path(config.out).expanduser()
    if not config.resume and holds_run(out) and not config.overwrite:
        raise InputError(
            f"{out} already holds a training run; continue it with resume=True or "
            "replace it with overwrite=True, or choose another out folder"
        )
    return out


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _build_model(config: TrainConfig, num_classes: int, ctx: DistContext) -> nn.Module:
    """The model, with identical initial weights on every process."""
    torch.manual_seed(config.seed)
    model = create_model(
        config.model,
        U=config.U,
        num_classes=num_classes,
        tau=config.tau,
        temperature=config.temperature,
        eval_policy=config.eval_policy,
        **config.model_kwargs,
    )
    torch.manual_seed(config.seed + ctx.rank)
    return model


def _build_setup(
    config: TrainConfig,
    recipe: Recipe,
    device: torch.device,
    ctx: DistContext,
    folder: RunFolder,
    model: nn.Module,
    loaders: Loaders,
    progress: bool,
) -> RunSetup:
    """Place the model (DDP on several processes) and build what optimises it."""
    amp = config.amp if config.amp is not None else device.type == "cuda"
    model.to(device)
    if ctx.world > 1:
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    optimizer = build_optimizer(recipe, model)
    return RunSetup(
        config=config,
        recipe=recipe,
        schedule=config.temperature_schedule(),
        device=device,
        amp=amp,
        ctx=ctx,
        folder=folder,
        model=model,
        optimizer=optimizer,
        scheduler=build_scheduler(recipe, optimizer),
        scaler=torch.amp.GradScaler(device.type, enabled=amp and device.type == "cuda"),
        loss_fn=nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing),
        loaders=loaders,
        progress=progress,
    )


def _resume(setup: RunSetup) -> Position:
    """The position of the saved run, with the model, optimizer and RNGs restored to it."""
    model = unwrap(setup.model)
    epoch, step, history, best, partial = load_state(
        setup.folder.out, setup.config, model, setup.trainables, setup.ctx
    )
    return Position(epoch, step, history, best, partial)


def _start_run_folder(setup: RunSetup, train_set: Dataset, class_names: list[str]) -> None:
    """Create the run folder (a new run) and write its ``config.json`` (rank 0)."""
    out, ctx = setup.folder.out, setup.ctx
    try:  # a failure here leaves no staging folder behind
        if not setup.config.resume and ctx.main:
            out.mkdir(parents=True, exist_ok=True)
            (out / "state").mkdir(exist_ok=True)
            (out / "log.jsonl").write_text("")
        if ctx.main:
            record = _config_record(setup, train_set, class_names)
            write_atomic(out / "config.json", json.dumps(record, indent=2, default=str))
            if skipped_images(train_set):
                print(
                    f"note: skipped {len(skipped_images(train_set))} unreadable image(s); "
                    f"listed in {out / 'config.json'}",
                    flush=True,
                )
        if ctx.world > 1:
            dist.barrier()
    except BaseException:
        setup.folder.discard_staging(ctx)
        raise


def _config_record(setup: RunSetup, train_set: Dataset, class_names: list[str]) -> dict:
    """What ``config.json`` holds: the resolved configuration and where the run ran."""
    return {
        "train": setup.config.to_dict(),
        "recipe": setup.recipe.to_dict(),
        "data": setup.loaders.data_config.to_dict(),
        "model": unwrap(setup.model).cvn_config.to_dict(),
        "temperature_schedule": setup.schedule.to_dict(),
        "class_names": class_names,
        "world_size": setup.ctx.world,
        "device": str(setup.device),
        "amp": setup.amp,
        "torch": torch.__version__,
        "skipped_images": skipped_images(train_set),
    }


# -- running ------------------------------------------------------------------------------------
def _run_epochs(setup: RunSetup, pos: Position) -> None:
    """Train the remaining epochs, checkpointing after each; Ctrl-C saves a resume point."""
    pos.sums, pos.rng, pos.buffers = pos.partial, rng_state(), model_buffers(setup.model)
    try:
        for epoch in range(pos.epoch, setup.recipe.epochs):
            pos.epoch = epoch
            started = time.time()
            train_epoch(setup, pos)
            record = end_epoch(setup, pos, started)
            _finish_epoch(setup, pos, record)
    except KeyboardInterrupt:
        _save_interrupted(setup, pos)
        raise
    finally:
        setup.folder.discard_staging(setup.ctx)
        if setup.ctx.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _finish_epoch(setup: RunSetup, pos: Position, record: dict[str, Any]) -> None:
    """Log the epoch, keep the best weights, and save the resume point at the epoch's end."""
    pos.history.append(record)
    pos.step = 0
    score = record.get("val_top1", record["train_top1"])
    improved = score > pos.best
    pos.best = max(pos.best, score)
    _checkpoint(setup, pos, pos.epoch + 1, 0, pos.partial, improved=improved, record=record)
    setup.folder.swap_in(setup.ctx)  # the new run's first checkpoint replaces an old run


def _checkpoint(
    setup: RunSetup,
    pos: Position,
    epoch: int,
    step: int,
    sums: torch.Tensor,
    *,
    improved: bool = False,
    record: dict[str, Any] | None = None,
    rng: dict[str, Any] | None = None,
) -> None:
    """The resume point after ``step`` steps of epoch ``epoch`` (+ checkpoints)."""
    save_state(
        setup.folder.out,
        unwrap(setup.model),
        setup.trainables,
        setup.ctx,
        epoch=epoch,
        step=step,
        history=pos.history,
        best=pos.best,
        partial=sums,
        improved=improved,
        record=record,
        rng=rng,
    )


def _save_interrupted(setup: RunSetup, pos: Position) -> None:
    """Ctrl-C: save a resume point at the last finished step (nothing while still staging)."""
    folder, ctx = setup.folder, setup.ctx
    if folder.staging is not None:  # nothing of the new run is worth keeping yet
        if ctx.main:
            print(f"\ninterrupted before the first checkpoint: {folder.final} is unchanged")
        return
    # The cut batch's forward may have moved BatchNorm statistics: roll them back to the
    # last finished step, so the checkpoint is exactly a batch boundary.
    if pos.buffers is not None:
        restore_buffers(setup.model, pos.buffers)
    _checkpoint(setup, pos, pos.epoch, pos.step, pos.sums, rng=pos.rng)
    if ctx.main:
        print(
            f"\ninterrupted: resumable checkpoint written to {folder.out / 'state'} "
            f"(epoch {pos.epoch + 1}, step {pos.step}); continue with resume=True "
            "(`discover train --resume`)",
            flush=True,
        )
