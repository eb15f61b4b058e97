"""Values as page text, and the Jinja2 environment and :class:`PageWriter` of the pages."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jinja2 import Environment, PackageLoader, StrictUndefined

from discover.report.inputs import ReportConfig
from discover.version import __version__

__all__ = [
    "RESERVED_NAMES",
    "PageWriter",
    "environment",
    "finite_score",
    "flat_rows",
    "fmt",
    "jsonable",
    "lookup",
    "num",
    "pct",
    "slugify",
    "unique_name",
]

RESERVED_NAMES = frozenset({"explanations", "index.html", "style.css", "report.json"})
"""What the report's folder holds besides its sections' folders."""


def slugify(text: str, fallback: str) -> str:
    """``text`` as a safe file name (at most 60 characters); ``fallback`` when nothing is left."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:60]
    return slug or fallback


def unique_name(slug: str, taken: set[str]) -> str:
    """``slug``, numbered when ``taken`` already holds it (case-insensitively); added to ``taken``."""
    candidate, n = slug, 2
    while candidate.lower() in taken:
        candidate, n = f"{slug}-{n}", n + 1
    taken.add(candidate.lower())
    return candidate


def fmt(value: Any, digits: int = 4) -> str:
    """Numbers with ``digits`` significant digits, containers as compact JSON."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return f"{value:.{digits}g}" if math.isfinite(value) else str(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return fmt(value.item(), digits)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return str(value)


def pct(value: float | None) -> str:
    """A fraction as a percentage to one decimal; ``-`` for a missing one."""
    return "-" if value is None else f"{100 * float(value):.1f} %"


def num(value: float | None, digits: int = 3) -> str:
    """A figure to ``digits`` decimals; ``n/a`` for a missing or undefined (NaN) one."""
    if value is None or not math.isfinite(float(value)):
        return "n/a"
    return f"{float(value):.{digits}f}"


def flat_rows(mapping: Mapping[str, Any] | None, prefix: str = "") -> list[tuple[str, str]]:
    """Flatten nested dicts into ``(dotted key, formatted value)`` rows."""
    rows: list[tuple[str, str]] = []
    for key, value in (mapping or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            rows += flat_rows(value, f"{name}.")
        else:
            rows.append((name, fmt(value)))
    return rows


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data (anything else as its text)."""
    return json.loads(json.dumps(value, default=str))


def lookup(mapping: Any, *keys: str) -> Any:
    """``mapping[k1][k2]...``, or ``None`` where a level is missing or not a dict."""
    for key in keys:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


def finite_score(score: float) -> float:
    """``score``, with NaN as minus infinity (the last place when sorting best first)."""
    return float(score) if math.isfinite(float(score)) else -math.inf


def environment() -> Environment:
    """The pages' Jinja2 environment: autoescaping, strict, with the number filters."""
    env = Environment(
        loader=PackageLoader("discover.report", "templates"),
        autoescape=True,  # every template is HTML; concept strings are untrusted
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = fmt
    env.filters["pct"] = pct
    env.filters["num"] = num
    return env


class PageWriter:
    """Renders the report's pages into ``root`` (a fresh staging folder)."""

    def __init__(self, root: Path, config: ReportConfig, progress: bool) -> None:
        self.root, self.config, self.progress = root, config, progress
        self.env = environment()

    def render(self, template: str, path: Path, depth: int, **context: Any) -> None:
        """Write ``template`` rendered with ``context`` to ``path``, ``depth`` folders down."""
        html = self.env.get_template(template).render(
            title=self.config.title, base="../" * depth, version=__version__, **context
        )
        path.write_text(html, encoding="utf-8")

    def bar(self, items: Iterable[Any], desc: str) -> Iterable[Any]:
        """``items``, with a progress bar when the report shows progress."""
        if not self.progress:
            return items
        from tqdm.auto import tqdm

        return tqdm(items, desc=desc, leave=False, dynamic_ncols=True)
