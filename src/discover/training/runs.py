"""Training runs read back: :func:`load_run` returns a typed :class:`Run`.

A run folder (written by :func:`discover.training.train`) holds ``config.json`` (the
training, recipe, data and model settings), ``best``/``last`` weights with their metadata
and ``log.jsonl`` (one record per epoch). Later stages (evaluation, dissection, the report)
read the run through :class:`Run` instead of digging in its files.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from discover._utils import read_json, require_file
from discover.data.transforms import DataConfig
from discover.nn.models import create_model
from discover.training.recipes import Recipe
from discover.training.trainer import TrainConfig

__all__ = ["Run", "UntrustedConfigError", "load_run", "saved_model_options"]


class UntrustedConfigError(ValueError):
    """A saved configuration asks for something a file may not decide: a download, another
    file, or a value of an unexpected kind."""


_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,100}")
_FORBIDDEN = ("pretrained", "checkpoint", "weights", "cache", "hf_", "file", "url", "path")


def _plain(value: Any, depth: int = 0) -> bool:
    if value is None or isinstance(value, (bool, int, float)):
        return True
    if isinstance(value, str):
        return bool(_NAME.fullmatch(value)) and ".." not in value
    if isinstance(value, list) and depth < 2 and len(value) <= 64:
        return all(_plain(v, depth + 1) for v in value)
    return False


def saved_model_options(name: Any, options: Any, source: str | Path) -> tuple[str, dict[str, Any]]:
    """A model name and builder options read from a saved file, checked as untrusted data:
    the name is a plain model name (no ``hf-hub:`` or other location), and each option is a
    number, a boolean, null, a short plain name or a short list of those, under a key that
    cannot download weights or name a file (nothing with ``pretrained``, ``checkpoint``,
    ``weights``, ``cache``, ``hf_``, ``file``, ``url`` or ``path`` in it). A run folder
    received from someone else is data, not instructions.

    Raises:
        UntrustedConfigError: naming ``source`` and the key.

    Example:
        >>> saved_model_options("small_vit", {"depth": 6}, "run/config.json")
        ('small_vit', {'depth': 6})
    """
    if not isinstance(name, str) or not re.fullmatch(
        r"(torchvision:)?[A-Za-z0-9_.\-]{1,100}", name
    ):
        raise UntrustedConfigError(
            f"{source}: model name {name!r} is not a plain model name (a saved configuration "
            "may not point at a hub or a location)"
        )
    if not isinstance(options, dict):
        raise UntrustedConfigError(f"{source}: model_kwargs must be an object, got {options!r}")
    for key, value in options.items():
        lowered = str(key).lower()
        if any(word in lowered for word in _FORBIDDEN):
            raise UntrustedConfigError(
                f"{source}: model option {key!r} may not come from a saved configuration (it "
                "could download weights or open a file); remove it, or build the model "
                "yourself with discover.create_model"
            )
        if not _plain(value):
            raise UntrustedConfigError(
                f"{source}: model option {key!r} = {str(value)[:80]!r} is not a number, a "
                "boolean or a short plain name"
            )
    return name, dict(options)


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
    name, model_kwargs = saved_model_options(spec["name"], spec["model_kwargs"], config_file)
    # an annealed run's weights go with the temperature they were saved at
    meta_file = path / f"{weights}.json"
    meta = read_json(meta_file, "checkpoint metadata") if meta_file.is_file() else {}
    temperature = meta.get("temperature")
    model = create_model(
        name,
        U=spec["U"],
        num_classes=spec["num_classes"],
        checkpoint=weights_file,
        tau=spec["tau"],
        temperature=spec.get("temperature", 1.0) if temperature is None else temperature,
        eval_policy=spec["eval_policy"],
        **model_kwargs,
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
