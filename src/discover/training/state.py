"""A run folder on disk: the staging folder of an overwrite, the resume point, its reload.

The resume point (``state/trainer.pt``) holds tensors and plain values only, so it loads with
``weights_only=True``; it is written atomically, so a kill leaves the old or the new point.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from discover._utils import atomic_path, read_json, write_atomic
from discover.errors import InputError
from discover.nn.checkpoints import load_checkpoint, save_checkpoint
from discover.training.config import TrainConfig
from discover.training.distributed import DistContext

__all__ = [
    "RESUME_MAY_CHANGE",
    "RunFolder",
    "atomic_json",
    "atomic_torch_save",
    "holds_run",
    "load_state",
    "load_tensors",
    "model_temperature",
    "rng_state",
    "save_state",
    "set_rng_state",
    "swap_in",
    "truncate_log",
]


# -- the run folder -----------------------------------------------------------------------------
def holds_run(folder: Path) -> bool:
    """Whether ``folder`` holds (part of) a training run."""
    return folder.is_dir() and any(
        (folder / name).exists() for name in ("config.json", "last.safetensors", "state")
    )


def swap_in(staging: Path, final: Path, ctx: DistContext) -> None:
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


@dataclass
class RunFolder:
    """Where a run is written: ``final``, or first a staging folder beside it when the run
    overwrites another. The new run trains there and is swapped in after its first
    checkpoint: until then the old run stays complete and loadable."""

    final: Path
    staging: Path | None = None

    @classmethod
    def prepare(cls, final: Path, *, overwrite: bool, ctx: DistContext) -> RunFolder:
        """The folder for a run in ``final`` (removing what an earlier failed overwrite left)."""
        staging = (
            final.with_name(final.name + ".overwrite-staging")
            if overwrite and holds_run(final)
            else None
        )
        if staging is not None and ctx.main and staging.exists():
            shutil.rmtree(staging)  # left by an earlier failed overwrite
        return cls(final, staging)

    @property
    def out(self) -> Path:
        """The folder the run writes to now."""
        return self.staging or self.final

    def swap_in(self, ctx: DistContext) -> None:
        """Put the staged run in place of the old one (no-op when not staging)."""
        if self.staging is not None:
            swap_in(self.staging, self.final, ctx)
            self.staging = None

    def discard_staging(self, ctx: DistContext) -> None:
        """Remove the staging folder of a run that failed before it was swapped in."""
        if self.staging is not None and ctx.main and self.staging.exists():
            shutil.rmtree(self.staging, ignore_errors=True)


# -- random number generators -------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
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


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore every RNG from :func:`rng_state`'s record."""
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


# -- saving -------------------------------------------------------------------------------------
def atomic_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    write_atomic(path, json.dumps(data, indent=2, default=str))


def atomic_torch_save(path: Path, data: Any) -> None:
    """``torch.save`` to ``path`` atomically (no temporary file survives a failure)."""
    with atomic_path(path) as tmp:
        torch.save(data, tmp)


def model_temperature(model: nn.Module) -> float | None:
    """The competition temperature of ``model``'s LWTA layers (``None`` without any)."""
    from discover.nn.lwta import lwta_layers

    layers = list(lwta_layers(model).values())
    return layers[0].temperature if layers else None


def save_state(
    out: Path,
    model: nn.Module,
    trainables: Mapping[str, Any],
    ctx: DistContext,
    *,
    epoch: int,
    step: int,
    history: list,
    best: float,
    partial: torch.Tensor,
    improved: bool = False,
    record: dict | None = None,
    rng: dict | None = None,
) -> None:
    """Save the resume point and the user-facing checkpoints.

    Rank 0's resume point is one file, ``state/trainer.pt`` (weights, the ``trainables``'
    states: optimizer, scheduler, scaler; its RNG state and partial sums, the position),
    written atomically: a kill at any moment leaves the old or the new point, never a mix.
    Other ranks keep their RNG state in ``state/rng-rank{r}.pt``, tagged with the position so
    a resume can check it. ``rng`` is the RNG state to resume from (default: now); a
    mid-epoch save passes the state right after the last optimizer step, before any of the
    cut batch was loaded.
    """
    position = {"epoch": epoch, "step": step}
    rng_record = {**(rng or rng_state()), "partial": partial, **position}
    if ctx.world > 1:
        dist.barrier()
    if not ctx.main:
        atomic_torch_save(out / "state" / f"rng-rank{ctx.rank}.pt", rng_record)
    if ctx.world > 1:
        dist.barrier()
    if ctx.main:
        meta = {**position, "best_top1": best, "history": history}
        meta["temperature"] = model_temperature(model)
        _save_resume_point(out, model, trainables, rng_record, meta)
        _save_checkpoints(out, model, meta, improved, record)
    if ctx.world > 1:
        dist.barrier()


def _save_resume_point(
    out: Path,
    model: nn.Module,
    trainables: Mapping[str, Any],
    rng_record: dict[str, Any],
    meta: dict[str, Any],
) -> None:
    weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    states = {name: part.state_dict() for name, part in trainables.items()}
    atomic_torch_save(
        out / "state" / "trainer.pt", {"model": weights, **states, "rng": rng_record, **meta}
    )


def _save_checkpoints(
    out: Path, model: nn.Module, meta: dict[str, Any], improved: bool, record: dict | None
) -> None:
    """``last`` (and ``best`` when ``improved``) weights with metadata, and the epoch's log line."""
    save_checkpoint(model, out / "last.safetensors")
    atomic_json(out / "last.json", meta)
    if improved:
        save_checkpoint(model, out / "best.safetensors")
        atomic_json(
            out / "best.json",
            {"epoch": meta["epoch"], **(record or {}), "temperature": model_temperature(model)},
        )
    if record is not None:
        with open(out / "log.jsonl", "a") as log:
            log.write(json.dumps(record) + "\n")


# -- resuming -----------------------------------------------------------------------------------
RESUME_MAY_CHANGE = frozenset(
    {"resume", "overwrite", "epochs", "out", "workers", "device", "max_steps_per_epoch"}
)
"""Options a resumed run may change; everything else must match the saved run."""


def load_state(
    out: Path,
    config: TrainConfig,
    model: nn.Module,
    trainables: Mapping[str, Any],
    ctx: DistContext,
) -> tuple[int, int, list, float, torch.Tensor]:
    """Load the resume point of the run in ``out`` into ``model``, the ``trainables`` and the
    RNGs: ``(epoch, step, history, best top-1, partial sums of a cut epoch)``."""
    trainer_file = out / "state" / "trainer.pt"
    if not trainer_file.is_file():
        raise FileNotFoundError(
            f"resume=True: no training state in {out} (looked for {trainer_file}); start the "
            "run without resume=True first"
        )
    _check_same_run(out, config)
    state = load_tensors(trainer_file)
    if "model" in state:  # the weights of the resume point itself
        model.load_state_dict(state["model"])
    else:  # a run saved before the weights moved into the resume point
        load_checkpoint(model, out / "last.safetensors")
    for name, part in trainables.items():
        part.load_state_dict(state[name])
    partial = _restore_rng(out, state, ctx)
    truncate_log(out / "log.jsonl", len(state["history"]))
    return state["epoch"], state["step"], list(state["history"]), state["best_top1"], partial


def _check_same_run(out: Path, config: TrainConfig) -> None:
    """Refuse to resume with options that differ from the saved run's."""
    saved_config = read_json(out / "config.json", "run configuration")
    differs = [
        f"{k}: run has {saved_config['train'].get(k)!r}, now {getattr(config, k)!r}"
        for k in config.to_dict()
        if k not in RESUME_MAY_CHANGE and saved_config["train"].get(k) != getattr(config, k)
    ]
    if differs:
        raise InputError(
            f"resume=True: the configuration differs from the run in {out}: " + "; ".join(differs)
        )


def _restore_rng(out: Path, state: dict[str, Any], ctx: DistContext) -> torch.Tensor:
    """Restore this process's RNG state of the resume point; returns its partial sums."""
    trainer_file = out / "state" / "trainer.pt"
    rng_file = out / "state" / f"rng-rank{ctx.rank}.pt"
    rng = state.get("rng") if ctx.main else None
    if rng is None and rng_file.is_file():
        rng = load_tensors(rng_file)
    if rng is None:
        return torch.zeros(3, dtype=torch.float64)
    if (rng.get("epoch", state["epoch"]), rng.get("step", state["step"])) != (
        state["epoch"],
        state["step"],
    ):
        raise InputError(
            f"resume=True: {rng_file} (epoch {rng.get('epoch')}, step {rng.get('step')}) does "
            f"not match {trainer_file} (epoch {state['epoch']}, step {state['step']}): the "
            "run was stopped while saving; start it again with overwrite=True"
        )
    set_rng_state(rng)
    return rng["partial"]


def load_tensors(path: Path) -> dict[str, Any]:
    """A training-state file: tensors and plain values only, never arbitrary objects."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, corrupted or not ours: name the file
        raise InputError(
            f"cannot read the training state {path}: {type(error).__name__}: {error}. "
            "The run cannot be resumed from it; start it again with overwrite=True"
        ) from None


def truncate_log(path: Path, records: int) -> None:
    """Keep the first ``records`` lines of the epoch log (those of the resume point)."""
    if path.is_file():
        lines = path.read_text().splitlines()[:records]
        path.write_text("".join(line + "\n" for line in lines))
