"""The :class:`Explanation` of one image, read back from JSON, printed and saved."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from discover._utils import printable, write_atomic
from discover.errors import InputError
from discover.explanation import render
from discover.explanation.rows import Contributions, LayerExplanation, UnitContribution, Winner

__all__ = ["Explanation", "print_explanations", "explanations_to_json"]


@dataclass
class Explanation:
    """Why the model predicted what it did for one image, through the units that fired.

    ``to_dict()`` gives the JSON schema the report reads; ``str()`` a plain-text table; in a
    ``rich`` console it renders as tables.
    """

    image: str
    model: str
    prediction: dict[str, Any]  # {"index", "label", "probability"}
    target: dict[str, Any] | None
    policy: str | None
    layers: list[LayerExplanation]
    contributions: Contributions | None = None
    class_evidence: dict[str, Any] | None = None
    """Where the image holds evidence for the predicted class: ``{"method", "layer",
    "class", "map"}`` (Grad-CAM, ``h x w``) or ``{"note"}`` saying why there is none."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (:mod:`discover.explanation` gives the fields' meaning)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Explanation:
        """Inverse of :meth:`to_dict`."""
        layers = [
            LayerExplanation(**{**l, "winners": [_with_pairs(Winner, w) for w in l["winners"]]})
            for l in data["layers"]  # noqa: E741
        ]
        contributions = data.get("contributions")
        if contributions is not None:
            contributions = Contributions(
                **{
                    **contributions,
                    "units": [_with_pairs(UnitContribution, u) for u in contributions["units"]],
                }
            )
        return cls(**{**data, "layers": layers, "contributions": contributions})

    def layer(self, name: str) -> LayerExplanation:
        """The explanation of layer ``name``."""
        for row in self.layers:
            if row.layer == name:
                return row
        raise InputError(
            f"no layer {name!r} in this explanation; it has "
            f"{', '.join(r.layer for r in self.layers) or 'no layers'}"
        )

    def headline(self) -> str:
        """One line: the image, the model, its prediction (and the true class if known)."""
        p = self.prediction
        target = f"  (true: {self.target['label']})" if self.target else ""
        policy = f", LWTA policy {self.policy}" if self.policy else ""
        return (
            f"{self.image}: {self.model} predicts {p['label']!r} "
            f"({100 * p['probability']:.1f} %){target}{policy}"
        )

    def to_text(self) -> str:
        """A plain-text rendering: one block of rows per layer, then the contributions."""
        lines = [self.headline()]
        for row in self.layers:
            lines.append(render.layer_title(row))
            lines.extend(render.winner_line(w) for w in row.winners)
        c = self.contributions
        if c is not None:
            lines.append(render.contributions_title(c))
            lines.extend(render.contribution_line(u) for u in c.units)
        if self.class_evidence is not None:
            lines.append(render.evidence_line(self.prediction["label"], self.class_evidence))
        return printable("\n".join(lines))  # labels and file names are untrusted

    __str__ = to_text

    def __rich__(self) -> Any:
        from rich.console import Group

        parts: list[Any] = [f"[bold]{render.escape(self.headline())}[/bold]"]
        parts.extend(render.layer_table(row) for row in self.layers)
        if self.contributions is not None:
            parts.append(render.contributions_table(self.contributions))
        return Group(*parts)


def _with_pairs(cls: type, data: dict[str, Any]) -> Any:
    """``cls(**data)`` with ``seen`` as (concept, score) tuples again (JSON gives lists)."""
    seen = data.get("seen")
    return cls(**{**data, "seen": None if seen is None else [tuple(p) for p in seen]})


def print_explanations(explanations: Sequence[Explanation], file: Any = None) -> None:
    """Print explanations as tables (``rich``; plain text when rich is unavailable).

    Example:
        >>> print_explanations(explain(model, images, dissection))  # doctest: +SKIP
    """
    try:
        from rich.console import Console
    except ImportError:  # pragma: no cover - rich is a dependency; plain text otherwise
        for e in explanations:
            print(e.to_text() + "\n", file=file)
        return
    console = Console(file=file, highlight=False, soft_wrap=True)
    for e in explanations:
        console.print(e)
        console.print()


def explanations_to_json(explanations: Sequence[Explanation], path: str | Path) -> Path:
    """Write ``[e.to_dict(), ...]`` as JSON, atomically."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, json.dumps([e.to_dict() for e in explanations], indent=2))
