"""How explanation rows read: plain-text lines and ``rich`` tables."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from discover._utils import printable
from discover.explanation.maps import where
from discover.explanation.rows import Contributions, LayerExplanation, UnitContribution, Winner


def shown(label: str | None, abstained: str | None, candidates: Sequence[str]) -> str:
    """How a listed unit's label reads: the label, or why it is unlabelled and its
    candidates."""
    if label is not None:
        return label
    if abstained is None:
        return "-"
    listed = ", ".join(candidates[:3])
    return f"(unlabelled: {abstained}{'; ' + listed if listed else ''})"


def seen_text(seen: list[tuple[str, float]] | None) -> str:
    """The three candidates the embedder sees most in the image, with their scores."""
    if not seen:
        return ""
    return "  sees " + ", ".join(f"{c} ({z:+.1f})" for c, z in seen[:3])


def escape(text: str) -> str:
    """``text`` made printable and safe as ``rich`` markup (labels and names are untrusted)."""
    from rich.markup import escape as escape_markup

    return escape_markup(printable(text))


def layer_title(row: LayerExplanation) -> str:
    """The line above a layer's winners: how many units fired, how many are listed."""
    if row.kind == "lwta":
        what = f"{row.active} of {row.units} units won"
    elif row.kind == "sae":
        what = f"{row.active} of {row.units} SAE latents active"
    else:
        what = f"{row.active} of {row.units} units above |a| > {row.threshold:g}"
    listed = f", top {len(row.winners)} by |activation|" if len(row.winners) < row.active else ""
    return (
        f"  {row.layer} [{row.kind}]: {what}{listed}; active fraction "
        f"{100 * row.active_fraction:.2f} %"
    )


def contributions_title(c: Contributions) -> str:
    """The line above the contributions: the logit, its bias and the share explained."""
    return (
        f"  contributions of {c.layer} to the logit of {c.class_label!r}: logit "
        f"{c.logit:+.4f} = bias {c.bias:+.4f} + units; the {len(c.units)} listed explain "
        f"{100 * c.explained_share:.1f} % of logit - bias"
    )


def winner_line(w: Winner) -> str:
    """One winner as a plain-text row."""
    block = "" if w.block is None else f"block {w.block:>4}  "
    score = "" if w.score is None else f"  ({w.score:.3g})"
    pct = "" if w.probe_percentile is None else f"  p{100 * w.probe_percentile:.0f}"
    at = f"  [{w.where}]" if w.where else ""
    return (
        f"    unit {w.unit:>5}  {block}{w.activation:>+10.4f}{pct}  "
        f"{shown(w.label, w.abstained, w.candidates)}{score}{at}{seen_text(w.seen)}"
    )


def contribution_line(u: UnitContribution) -> str:
    """One contribution as a plain-text row."""
    at = f"  [{u.where}]" if u.where else ""
    return (
        f"    unit {u.unit:>5}  {u.activation:>+9.4f} x {u.weight:>+8.4f} = "
        f"{u.contribution:>+9.4f}  {shown(u.label, u.abstained, u.candidates)}"
        f"{at}{seen_text(u.seen)}"
    )


def evidence_line(label: str, evidence: dict[str, Any]) -> str:
    """Where the image holds evidence for the predicted class ``label``, or why unknown."""
    if "map" in evidence:
        return (
            f"  evidence for {label!r} ({evidence['method']} at "
            f"{evidence['layer']}): strongest at the {where(evidence['map'])}"
        )
    return f"  evidence for {label!r}: {evidence['note']}"


def _table(title: str, columns: list[str], conditioned: bool) -> Any:
    """A ``rich`` table with ``columns`` (labels left-aligned, numbers right-aligned) and an
    ``in this image`` column when the rows are conditioned on the image."""
    from rich.table import Table

    table = Table(title=escape(title.strip()), title_justify="left")
    for name in columns + (["in this image"] if conditioned else []):
        table.add_column(name, justify="left" if "label" in name or "image" in name else "right")
    return table


def layer_table(row: LayerExplanation) -> Any:
    """A layer's winners as a ``rich`` table."""
    conditioned = any(w.seen for w in row.winners)
    columns = ["unit", "block", "activation", "probe pct", "label", "score"]
    table = _table(layer_title(row), columns, conditioned)
    for w in row.winners:
        table.add_row(
            str(w.unit),
            "-" if w.block is None else str(w.block),
            f"{w.activation:+.4f}",
            "-" if w.probe_percentile is None else f"{100 * w.probe_percentile:.0f}",
            escape(shown(w.label, w.abstained, w.candidates)),
            "-" if w.score is None else f"{w.score:.3g}",
            *([escape(seen_text(w.seen).strip())] if conditioned else []),
        )
    return table


def contributions_table(c: Contributions) -> Any:
    """The logit contributions as a ``rich`` table."""
    conditioned = any(u.seen for u in c.units)
    columns = ["unit", "activation", "weight", "contribution", "label"]
    table = _table(contributions_title(c), columns, conditioned)
    for u in c.units:
        table.add_row(
            str(u.unit),
            f"{u.activation:+.4f}",
            f"{u.weight:+.4f}",
            f"{u.contribution:+.4f}",
            escape(shown(u.label, u.abstained, u.candidates)),
            *([escape(seen_text(u.seen).strip())] if conditioned else []),
        )
    return table
