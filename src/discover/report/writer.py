"""A static HTML report of dissected models: overview, unit galleries and explanations.

:func:`write_report` writes a folder that opens from disk (no server, no JavaScript):

* ``index.html``: for every :class:`ReportSection` (one model) its settings, accuracy,
  per-layer sparsity with a bar chart (and the ``1/U`` line of LWTA layers), the dissection
  settings and description scores, with links to
* ``<section>/<layer>.html``: a card per unit with its label, score, runner-up concepts, top
  activating probe images, an activation histogram and, for LWTA layers, how often the unit
  wins its block; where the dissection's folder holds ground-truth scores
  (:func:`~discover.evaluation.groundtruth.evaluate_groundtruth`), the layer's
  monosemanticity and, per unit, the AUPRC, IoU and F1 of its label and whether the label is
  its best ground-truth concept (read from the saved file, never recomputed);
* ``explanations/<i>.html``: one page per explained image (the dictionaries of
  :meth:`discover.explanation.Explanation.to_dict`);
* ``report.json``: the settings and a summary of every page.

Every text is escaped by Jinja2's autoescaping (concept files and file names are untrusted
input) and every page forbids scripts through its Content-Security-Policy. The report is
written to a sibling folder and swapped in with renames: an existing report is replaced
whole or not at all.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from discover._utils import staged_dir
from discover.errors import InputError
from discover.report.explanation_pages import write_explanations
from discover.report.inputs import ReportConfig, ReportSection, check_explanations, check_sections
from discover.report.rendering import (
    RESERVED_NAMES,
    PageWriter,
    flat_rows,
    jsonable,
    slugify,
    unique_name,
)
from discover.report.sections import write_section
from discover.version import __version__

__all__ = ["write_report"]

GENERATOR = "discover.report.writer"
"""The ``generator`` key of ``report.json``: only folders that carry it are ever replaced."""


def write_report(
    out: str | Path,
    sections: Sequence[ReportSection],
    *,
    explanations: Iterable[tuple[Mapping[str, Any], Any]] = (),
    meta: Mapping[str, Any] | None = None,
    config: ReportConfig | None = None,
    progress: bool = True,
    allow_mismatch: bool = False,
    notes: Sequence[str] = (),
) -> Path:
    """Write the static HTML report into the folder ``out``; returns ``out/index.html``.

    Args:
        out: the report folder. An existing report there is replaced atomically (the new one
            is written next to it and swapped in); any other existing, non-empty folder is
            refused, so nothing else is ever deleted.
        sections: one :class:`ReportSection` per model.
        explanations: ``(explanation_dict, image)`` pairs, the dictionary as returned by
            :meth:`discover.explanation.Explanation.to_dict` (or an object with ``to_dict``)
            and the image as a PIL image, an image file or a ``(C, H, W)`` tensor (``None``: none).
        meta: run metadata shown on the overview and saved in ``report.json``.
        config: what to show (:class:`ReportConfig`).
        progress: show tqdm progress bars.
        notes: sentences shown prominently at the top of the overview (and saved in
            ``report.json``), e.g. that the compared models were still learning.
        allow_mismatch: report a section whose dissection does not describe its model
            (other weights, layers or ``U``, see
            :meth:`~discover.dissection.result.Dissection.check_model`) with a warning instead of
            refusing it.

    Example:
        >>> section = ReportSection("CVN (U=4)", model, dissection, probe,
        ...                         accuracy={"top1": 0.91})  # doctest: +SKIP
        >>> write_report("runs/demo/report", [section])  # doctest: +SKIP
        PosixPath('runs/demo/report/index.html')
    """
    config = config or ReportConfig()
    sections = check_sections(sections)
    explanations = check_explanations(explanations)
    out = Path(out)
    _check_destination(out)
    for section in sections:
        if section.model is not None:
            section.dissection.check_model(section.model, allow_mismatch=allow_mismatch)
    with staged_dir(out) as staging:  # a failure (disk full too) leaves the old report intact
        _Writer(staging, config, progress).write(
            sections, explanations, dict(meta or {}), [str(n) for n in notes]
        )
    return out / "index.html"


def _check_destination(out: Path) -> None:
    """Refuse a destination that is a file, or a non-empty folder that is not a report."""
    if out.exists() and not out.is_dir():
        raise InputError(f"report destination {out} is a file, expected a folder")
    if out.is_dir() and any(out.iterdir()):
        marker = out / "report.json"
        try:
            generator = json.loads(marker.read_text()).get("generator")
        except (OSError, ValueError, AttributeError):
            generator = None
        if generator != GENERATOR:
            raise InputError(
                f"report destination {out} exists and is not a discover report (no "
                f"{marker.name} written by {GENERATOR}); refusing to replace it. Choose an "
                "empty or new folder"
            )


class _Writer:
    """Writes every page of one report into ``root`` (a fresh staging folder)."""

    def __init__(self, root: Path, config: ReportConfig, progress: bool) -> None:
        self.root, self.config = root, config
        self.pages = PageWriter(root, config, progress)

    def write(
        self,
        sections: list[ReportSection],
        explanations: list[tuple[dict[str, Any], Any]],
        meta: dict[str, Any],
        notes: list[str],
    ) -> None:
        t0 = time.time()
        env = self.pages.env
        (self.root / "style.css").write_text(
            env.loader.get_source(env, "style.css")[0], encoding="utf-8"
        )
        taken = set(RESERVED_NAMES)  # a section named "index.html" gets another folder
        views = [
            self._section(i, s, unique_name(slugify(s.name, f"section-{i}"), taken))
            for i, s in enumerate(sections)
        ]
        pages = self._explanations(explanations)
        self.pages.render(
            "index.html",
            self.root / "index.html",
            0,
            sections=views,
            explanations=pages,
            meta=flat_rows(meta),
            notes=notes,
        )
        summary = {
            "generator": GENERATOR,
            "version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.time() - t0, 3),
            "config": dataclasses.asdict(self.config),
            "meta": jsonable(meta),
            "notes": notes,
            "sections": [v["summary"] for v in views],
            "explanations": [
                {
                    "page": p["page"],
                    "image": p["data"]["image"],
                    "prediction": p["data"]["prediction"],
                }
                for p in pages
            ],
        }
        (self.root / "report.json").write_text(
            json.dumps(jsonable(summary), indent=2), encoding="utf-8"
        )

    def _section(self, index: int, section: ReportSection, slug: str) -> dict[str, Any]:
        return write_section(self.pages, index, section, slug)

    def _explanations(self, explanations: list[tuple[dict[str, Any], Any]]) -> list[dict[str, Any]]:
        return write_explanations(self.pages, explanations)
