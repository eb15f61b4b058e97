"""How a dissection is stored: the files of its folder, its tensors as safetensors with a
header that pairs them with ``dissection.json``, and where a training run keeps it."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save

from discover.dissection.records import ConceptStats
from discover.dissection.rows import RowWriter
from discover.dissection.streaming import BLOCK_ROWS
from discover.errors import InputError

__all__ = [
    "CSV_COLUMNS",
    "SCORES_FILE",
    "ACTIVATIONS_FILE",
    "MAPS_FILE",
    "OLD_SCORES_FILE",
    "ROWS_DIR",
    "DISSECTION_FILES",
    "DISSECTION_DIR",
    "default_dissection_dir",
    "save_tensors",
    "read_tensors",
    "read_old_scores",
    "read_concept_stats",
    "copy_rows",
    "replaceable",
]

CSV_COLUMNS = (
    "layer",
    "unit",
    "block",
    "position",
    "label",
    "abstained",
    "score",
    "match",
    "top5",
    "z",
    "p_null",
)
SCORES_FILE = "scores.safetensors"  # optional: the full score matrices (keep_scores=True)
ACTIVATIONS_FILE = "activations.safetensors"  # Q and the winner fractions per layer
MAPS_FILE = "maps.safetensors"  # spatial maps of each unit's top probe images
OLD_SCORES_FILE = "scores.pt"  # the score matrices as written by discover 0.1; still read
ROWS_DIR = "rows"  # a streamed dissection's Q, one folder of row files per layer
DISSECTION_FILES = (
    "descriptions.csv",
    "dissection.json",
    SCORES_FILE,
    ACTIVATIONS_FILE,
    MAPS_FILE,
    OLD_SCORES_FILE,
)
DISSECTION_DIR = "dissection"  # a training run's dissection: RUN/dissection
# Results computed from a dissection and saved beside it: they go when it is replaced.
_DERIVED_PREFIXES = ("description_scores", "simulation_scores-", "groundtruth")


def default_dissection_dir(run: str | Path) -> Path:
    """Where the dissection of a training run lives unless told otherwise: ``RUN/dissection``.

    :func:`discover.explanation.explain_run` (``discover explain``) looks for it there.

    Example:
        >>> default_dissection_dir("runs/shapes-u8").as_posix()
        'runs/shapes-u8/dissection'
    """
    return Path(run) / DISSECTION_DIR


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, head: dict[str, Any]) -> None:
    """safetensors bytes written through Python, so a full disk is an ``OSError``."""
    Path(path).write_bytes(save(tensors, {k: str(v) for k, v in head.items()}))


def read_tensors(
    path: Path, stamp: str | None, what: str
) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """The tensors and header of a dissection's safetensors file, or ``None`` (missing, or
    ignored with a warning: unreadable or another dissection's)."""
    if not path.is_file():
        return None
    try:
        with safe_open(path, framework="pt") as f:
            head = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        problem = None if head.get("id") == stamp else f"another dissection's {what}"
    except Exception as error:  # noqa: BLE001  (safetensors raises several types)
        problem = f"unreadable ({type(error).__name__}: {error})"
    if problem is None:
        return tensors, head
    hint = (
        "keep_scores=True (`discover dissect --keep-scores`) for exact ranks"
        if what == "score matrices"
        else "to recreate it"
    )
    warnings.warn(f"ignoring {path}: {problem}; redissect with {hint}", UserWarning, stacklevel=3)
    return None


def read_old_scores(path: Path, stamp: str | None) -> tuple[dict[str, torch.Tensor], Any]:
    """``scores.pt`` of discover 0.1 (tensors and strings only: ``weights_only=True``)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        problem = None if saved.get("id") == stamp else "another dissection's"
    except Exception as error:  # noqa: BLE001  (torch.load raises many types)
        problem = f"unreadable ({type(error).__name__}: {error})"
    if problem is None:
        return dict(saved["scores"]), saved["concepts"]
    warnings.warn(
        f"ignoring {path}: {problem} score matrices; redissect with keep_scores=True "
        "(`discover dissect --keep-scores`) for exact ranks",
        UserWarning,
        stacklevel=3,
    )
    return {}, None


def read_concept_stats(
    tensors: dict[str, torch.Tensor], head: dict[str, str]
) -> ConceptStats | None:
    """The concept statistics saved with the activations (``None``: absent or damaged)."""
    try:
        names = json.loads(head["concepts"])
        mean, std = tensors["P/mean"], tensors["P/std"]
    except (KeyError, ValueError):
        return None
    if not isinstance(names, list) or not len(names) == len(mean) == len(std):
        return None
    return ConceptStats([str(n) for n in names], mean, std)


def copy_rows(sources: dict[str, Any], folders: dict[str, str], out: Path) -> None:
    """Write the rows of a streamed dissection's ``Q`` into ``out`` (row files are copied,
    other row sources, such as the shards of a merge, written block by block)."""
    for name, source in sources.items():
        target = out / folders[name]
        folder = getattr(source, "folder", None)
        if folder is not None:
            if target.resolve() != Path(folder).resolve():
                shutil.copytree(folder, target, dirs_exist_ok=True)
            continue
        with RowWriter(target) as writer:
            for _, block in source.blocks(BLOCK_ROWS):
                writer.append(block)


def replaceable(out: Path) -> bool:
    """Whether ``out`` is missing or holds nothing but a dissection and its derived results."""
    if not out.exists():
        return True
    if not out.is_dir():
        raise InputError(f"dissection destination {out} is a file, expected a folder")
    return all(
        (entry.is_dir() and entry.name == ROWS_DIR)
        or entry.is_file()
        and (
            entry.name in DISSECTION_FILES
            or entry.name.startswith(_DERIVED_PREFIXES)
            or (entry.name.startswith(".") and entry.name.endswith(".tmp"))
        )
        for entry in out.iterdir()
    )
