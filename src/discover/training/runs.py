"""Training runs read back: :func:`load_run` returns a typed :class:`Run`.

A run folder (written by :func:`discover.training.train`) holds ``config.json`` (the
training, recipe, data and model settings), ``best``/``last`` weights with their metadata
and ``log.jsonl`` (one record per epoch). Later stages (evaluation, dissection, the report)
read the run through :class:`Run` instead of digging in its files.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from discover._utils import dataclass_from_dict, read_json, require_file
from discover.data.transforms import DataConfig
from discover.errors import InputError
from discover.nn.models import create_model
from discover.training.config import TrainConfig
from discover.training.recipes import Recipe

__all__ = ["Run", "UntrustedConfigError", "load_run", "saved_model_options"]


class UntrustedConfigError(InputError):
    """A saved configuration asks for something a file may not decide: a download, another
    file, or a value of an unexpected kind."""


_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,100}")
_LARGEST = 1 << 16
_BUILD = frozenset({"U", "num_classes", "tau", "temperature", "eval_policy", "include", "exclude"})
_FORBIDDEN = (
    "pretrained", "checkpoint", "weights", "cache", "hf_", "file", "url", "path", "root",
    "download",
)  # fmt: skip


def _plain(value: Any, depth: int = 0) -> bool:
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, (int, float)):  # sizes beyond this are not a saved model's
        return math.isfinite(value) and abs(value) <= _LARGEST
    if isinstance(value, str):
        return bool(_NAME.fullmatch(value)) and ".." not in value
    if isinstance(value, list) and depth < 2 and len(value) <= 64:
        return all(_plain(v, depth + 1) for v in value)
    return False


def saved_model_options(name: Any, options: Any, source: str | Path) -> tuple[str, dict[str, Any]]:
    """A model name and builder options read from a saved file, checked as untrusted data:
    the name is a plain model name (no ``hf-hub:`` or other location), and each option is a
    number of magnitude at most 65536, a boolean, null, a short plain name or a short list
    of those, under a key that is not one of the model section's own (``U``, ``tau``, ...) and
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
    _check_saved_options(options, source, "model", "model_kwargs")
    return name, dict(options)


def _check_saved_options(options: Any, source: str | Path, what: str, section: str) -> None:
    if not isinstance(options, dict):
        raise UntrustedConfigError(f"{source}: {section} must be an object, got {options!r}")
    for key, value in options.items():
        lowered = str(key).lower()
        if any(word in lowered for word in _FORBIDDEN):
            raise UntrustedConfigError(
                f"{source}: {what} option {key!r} may not come from a saved configuration (it "
                "could download something or open a file); remove it, or build the "
                f"{what} yourself"
            )
        if what == "model" and key in _BUILD:
            raise UntrustedConfigError(
                f"{source}: model option {key!r} belongs in the model section itself, not "
                "among its builder options"
            )
        if not _plain(value):
            raise UntrustedConfigError(
                f"{source}: {what} option {key!r} = {str(value)[:80]!r} is not a number of at "
                f"most {_LARGEST}, a boolean or a short plain name"
            )


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
        raise InputError(f"load_run: weights must be 'best' or 'last', got {weights!r}")
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
    spec = _checked_spec(config, config_file)
    name, model_kwargs = saved_model_options(spec["name"], spec["model_kwargs"], config_file)
    # an annealed run's weights go with the temperature they were saved at
    meta_file = path / f"{weights}.json"
    meta = read_json(meta_file, "checkpoint metadata") if meta_file.is_file() else {}
    temperature = meta.get("temperature") if isinstance(meta, dict) else None
    if temperature is not None and not _number(temperature, positive=True):
        raise UntrustedConfigError(
            f"{meta_file}: temperature must be a positive number, got {temperature!r}"
        )
    build = {"U": spec["U"], "num_classes": spec["num_classes"], "tau": spec["tau"]}
    _check_fits_checkpoint(name, build, model_kwargs, weights_file, config_file)
    model = create_model(
        name,
        checkpoint=weights_file,
        temperature=spec.get("temperature", 1.0) if temperature is None else temperature,
        eval_policy=spec["eval_policy"],
        **build,
        **model_kwargs,
    )
    _check_saved_options(config["train"].get("dataset_kwargs", {}), config_file, "data set",
                         "train.dataset_kwargs")  # fmt: skip
    try:
        data = DataConfig.from_dict(config["data"])
        train = TrainConfig.from_dict(config["train"])
        recipe = dataclass_from_dict(
            Recipe, {**config["recipe"], "betas": tuple(config["recipe"]["betas"])}, "recipe option"
        )
    except (InputError, TypeError, KeyError) as error:
        raise UntrustedConfigError(
            f"{config_file}: damaged run configuration ({type(error).__name__}: {error})"
        ) from None
    model.data_config = data
    log = path / "log.jsonl"
    try:
        history = (
            [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
            if log.is_file()
            else []
        )
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UntrustedConfigError(f"{log}: not a JSON line per epoch ({error})") from None
    known = {"train", "recipe", "data", "class_names"}
    return Run(
        path=path,
        model=model,
        train=train,
        recipe=recipe,
        data=data,
        class_names=list(config["class_names"]),
        weights=weights,
        history=history,
        temperature=temperature if temperature is not None else spec.get("temperature"),
        info={k: v for k, v in config.items() if k not in known},
    )


def _number(value: Any, positive: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return value > 0 if positive else True


def _checked_spec(config: Any, source: Path) -> dict[str, Any]:
    """The ``model`` section of a run's ``config.json``, every field checked; a missing or
    odd field is an :class:`UntrustedConfigError` naming the file and the key."""

    def bad(key: str, expected: str, value: Any = None) -> UntrustedConfigError:
        got = "it is missing" if value is None else f"got {str(value)[:80]!r}"
        return UntrustedConfigError(f"{source}: {key} must be {expected}; {got}")

    if not isinstance(config, dict):
        raise bad("the file", "a JSON object", type(config).__name__)
    for section in ("model", "data", "train", "recipe"):
        if not isinstance(config.get(section), dict):
            raise bad(section, "an object", config.get(section))
    names = config.get("class_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise bad("class_names", "a list of class names", names)
    if not isinstance(config["recipe"].get("betas"), list):
        raise bad("recipe.betas", "a list of two numbers", config["recipe"].get("betas"))
    spec = config["model"]
    for key in ("U", "num_classes"):
        value = spec.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad(f"model.{key}", "an integer >= 1", value)
    if spec["num_classes"] != len(names):
        raise UntrustedConfigError(
            f"{source}: model.num_classes is {spec['num_classes']} but class_names lists "
            f"{len(names)} classes"
        )
    if not _number(spec.get("tau"), positive=True):
        raise bad("model.tau", "a positive number", spec.get("tau"))
    if "temperature" in spec and not _number(spec["temperature"], positive=True):
        raise bad("model.temperature", "a positive number", spec["temperature"])
    if not isinstance(spec.get("eval_policy"), str):
        raise bad("model.eval_policy", "the name of an evaluation policy", spec.get("eval_policy"))
    if "name" not in spec or "model_kwargs" not in spec:
        raise bad("model.name and model.model_kwargs", "present")
    return spec


def _check_fits_checkpoint(
    name: str, build: dict[str, Any], options: dict[str, Any], weights: Path, source: Path
) -> None:
    """Refuse a configuration whose model would hold more values than ``weights`` does,
    before any memory is allocated for it: the model is sized on the meta device."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            stored = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    except Exception as error:  # a damaged file: load_checkpoint names it in its own words
        if isinstance(error, OSError):
            raise
        return
    with torch.device("meta"):
        probe = create_model(name, **{**build, "U": 1}, **options)
    needed = sum(t.numel() for t in probe.state_dict().values())
    if needed > stored:
        raise UntrustedConfigError(
            f"{source}: the configuration describes a model with {needed:,} values but "
            f"{weights.name} holds {stored:,}: the configuration does not belong to these "
            "weights (nothing was allocated for it)"
        )
