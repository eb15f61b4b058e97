"""Per-layer evaluation results that save as a JSON + CSV pair: the shared base of the
ground-truth and localization reports."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from discover._utils import csv_text, read_saved_result, write_files
from discover.errors import InputError

__all__ = ["LayeredReport"]

R = TypeVar("R", bound="LayeredReport")


@dataclass
class LayeredReport:
    """Results of several layers (``{layer: result}`` in layer order, each result with
    ``layer``, ``summary()``, ``rows()``, ``to_dict()`` and ``from_dict``) with their
    provenance ``meta``; saved as ``JSON_NAME`` (everything) and ``CSV_NAME`` (a row per
    unit). ``folder`` is where it was saved to or loaded from (not saved).

    Example:
        >>> report = GroundTruthReport.load(report.save("out"))  # doctest: +SKIP
    """

    JSON_NAME: ClassVar[str] = "report.json"
    CSV_NAME: ClassVar[str] = "report_units.csv"
    WHAT: ClassVar[str] = "report"
    REDO: ClassVar[str] = "discover eval-descriptions DISSECTION"
    LAYER_TYPE: ClassVar[Any] = None

    def __init_subclass__(
        cls, *, files: tuple[str, str], what: str, redo: str, layer_type: Any, **kwargs: Any
    ) -> None:
        """``files``: the JSON and CSV names; ``what`` names it in errors, ``redo`` is the
        command that recomputes it, ``layer_type`` reads one layer back (``from_dict``)."""
        super().__init_subclass__(**kwargs)
        cls.JSON_NAME, cls.CSV_NAME = files
        cls.WHAT, cls.REDO, cls.LAYER_TYPE = what, redo, layer_type

    layers: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, layer in self.layers.items():
            if name != layer.layer:
                raise InputError(f"layers: key {name!r} holds layer {layer.layer!r}")

    def layer(self, name: str) -> Any:
        """The results of layer ``name``."""
        if name not in self.layers:
            raise InputError(f"no layer {name!r} in this report; it has {', '.join(self.layers)}")
        return self.layers[name]

    def summary(self) -> list[dict[str, Any]]:
        """One summary per layer."""
        return [layer.summary() for layer in self.layers.values()]

    def to_csv(self) -> str:
        """One row per (layer, unit)."""
        return csv_text([row for layer in self.layers.values() for row in layer.rows()])

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: ``meta`` and one ``to_dict()`` per layer."""
        return {"meta": self.meta, "layers": [layer.to_dict() for layer in self.layers.values()]}

    def save(self, out: str | os.PathLike[str]) -> Path:
        """Write the JSON and CSV files into folder ``out``, atomically as a pair; returns the
        JSON path."""
        text = json.dumps(self.to_dict(), indent=1) + "\n"
        folder = write_files(out, {self.JSON_NAME: text, self.CSV_NAME: self.to_csv()})
        self.folder = folder
        return folder / self.JSON_NAME

    @classmethod
    def load(cls: type[R], out: str | os.PathLike[str]) -> R:
        """Read a folder written by :meth:`save` (or its JSON file)."""
        layers, meta, folder = read_saved_result(
            out,
            cls.WHAT,
            cls.JSON_NAME,
            lambda data: [cls.LAYER_TYPE.from_dict(d) for d in data["layers"]],
            cls.REDO,
        )
        return cls({layer.layer: layer for layer in layers}, meta, folder)
