"""Training runs read back: :func:`load_run` returns a typed :class:`Run`.

A run folder (written by :func:`discover.training.train`) holds ``config.json`` (the
training, recipe, data and model settings), ``best``/``last`` weights with their metadata
and ``log.jsonl`` (one record per epoch). Later stages (evaluation, dissection, the report)
read the run through :class:`Run` instead of digging in its files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from discover._utils import read_json, require_file
from discover.data.transforms import DataConfig
from discover.nn.models import create_model
from discover.training.recipes import Recipe
from discover.training.trainer import TrainConfig

__all__ = ["Run", "load_run"]


@dataclass
class Run:
    """A training run: its model (with the run's preprocessing as ``model.data_config``),
    the settings it was trained with and its per-epoch history.

    Example:
        >>> run = load_run("runs/shapes-u8")  # doctest: +SKIP
        >>> run.class_names[:2], run.train.U, run.history[-1]["val_top1"]  # doctest: +SKIP
        (['circle', 'square'], 8, 0.97)
    """

    path: Path
    model: nn.Module
    train: TrainConfig
    recipe: Recipe
    data: DataConfig
    class_names: list[str]
    weights: str = "best"
    history: list[dict[str, Any]] = field(default_factory=list)
    """One record per finished epoch (``log.jsonl``): ``train_loss``, ``val_top1``, ..."""
    temperature: float | None = None
    """The LWTA competition temperature the weights were saved at (annealed runs)."""
    info: dict[str, Any] = field(default_factory=dict)
    """The rest of ``config.json``: ``model`` (the CVN spec), ``temperature_schedule``,
    ``world_size``, ``device``, ``amp``, ``torch``, ``skipped_images``."""

    @property
    def dataset(self) -> str:
        """The data set it was trained on."""
        return self.train.dataset


def load_run(run: str | Path, weights: str = "best") -> Run:
    """A training run folder, read back (``best`` or ``last`` weights).

    Raises:
        FileNotFoundError: ``run`` is not a run, or it has no checkpoint yet.

    Example:
        >>> run = load_run("runs/shapes-u8")  # doctest: +SKIP
        >>> model, names = run.model, run.class_names  # doctest: +SKIP
    """
    if weights not in ("best", "last"):
        raise ValueError(f"load_run: weights must be 'best' or 'last', got {weights!r}")
    path = Path(run)
    config_file = require_file(path, "config.json", "a training run", "discover train")
    config = read_json(config_file, "run configuration")
    weights_file = path / f"{weights}.safetensors"
    if not weights_file.is_file():
        raise FileNotFoundError(
            f"run {path} is incomplete: no {weights!r} checkpoint yet ({weights_file} is "
            "missing: its first epoch has not finished); continue it with "
            f"`discover train --resume --out {path}` and the same options"
        )
    spec = config["model"]
    # an annealed run's weights go with the temperature they were saved at
    meta_file = path / f"{weights}.json"
    meta = read_json(meta_file, "checkpoint metadata") if meta_file.is_file() else {}
    temperature = meta.get("temperature")
    model = create_model(
        spec["name"],
        U=spec["U"],
        num_classes=spec["num_classes"],
        checkpoint=weights_file,
        tau=spec["tau"],
        temperature=spec.get("temperature", 1.0) if temperature is None else temperature,
        eval_policy=spec["eval_policy"],
        **spec["model_kwargs"],
    )
    data = DataConfig.from_dict(config["data"])
    model.data_config = data
    log = path / "log.jsonl"
    history = (
        [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        if log.is_file()
        else []
    )
    known = {"train", "recipe", "data", "class_names"}
    return Run(
        path=path,
        model=model,
        train=TrainConfig.from_dict(config["train"]),
        recipe=Recipe(**{**config["recipe"], "betas": tuple(config["recipe"]["betas"])}),
        data=data,
        class_names=list(config["class_names"]),
        weights=weights,
        history=history,
        temperature=temperature if temperature is not None else spec.get("temperature"),
        info={k: v for k, v in config.items() if k not in known},
    )
