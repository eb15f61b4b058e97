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
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jinja2 import Environment, PackageLoader, StrictUndefined
from PIL import Image, ImageDraw
from torch import nn
from torch.utils.data import Dataset

from discover._utils import staged_dir
from discover.data.folders import ImageTooLargeError, open_image
from discover.dissection.core import DissectedLayer, Dissection, UnitDescription
from discover.dissection.recording import GALLERY_SIZE, top_images
from discover.errors import InputError
from discover.evaluation.explanations import ExplanationScores
from discover.evaluation.groundtruth import GroundTruthReport, LayerGroundTruth, saved_groundtruth
from discover.evaluation.localization import LayerLocalization, saved_localization
from discover.nn.checkpoints import count_parameters
from discover.version import __version__

__all__ = ["draw_heatmap", "ReportSection", "ReportConfig", "write_report"]

GENERATOR = "discover.report.writer"
"""The ``generator`` key of ``report.json``: only folders that carry it are ever replaced."""

_EXPLANATION_KEYS = ("image", "model", "prediction", "layers")
_PREDICTION_KEYS = ("index", "label", "probability")
_LAYER_KEYS = ("layer", "kind", "units", "active", "active_fraction", "winners")
_WINNER_KEYS = ("unit", "activation")
_CONTRIBUTION_KEYS = ("layer", "class_label", "logit", "bias", "explained_share", "units")


@dataclass
class ReportSection:
    """One model of the report, with its dissection and what was measured on it.

    The report is written from saved results: the probe activations come from the dissection
    (or ``activations``), the layers' ``U`` and the model's description from its metadata.
    No model runs.

    Args:
        name: shown as the section title, e.g. ``"CVN (U=4)"`` or ``"dense twin"``.
        model: the dissected model, if at hand: the dissection is then checked against it
            (weights, layers, ``U``); ``None`` trusts the saved dissection.
        dissection: its :class:`~discover.dissection.core.Dissection`.
        probe: the dissection's probe set of raw ``(image, label, ...)`` items; an image is a
            PIL image, a ``uint8`` tensor or a float ``(C, H, W)`` tensor in ``[0, 1]``.
        accuracy: fractions in ``[0, 1]``, e.g. ``{"top1": 0.83, "top5": 0.99}``.
        sparsity: measured active fraction per layer.
        settings: model, training and dissection settings shown on the overview.
        description_scores: final-layer description figures shown on the overview.
        activations: ``{layer: (N, K)}`` pooled probe activations to show instead of the
            dissection's own.
        groundtruth: ground-truth scores of the dissection's labels to show on the layer
            pages; default: the ones saved in the dissection's folder by
            :func:`~discover.evaluation.groundtruth.evaluate_groundtruth`, if any (a saved
            report of another dissection is ignored with a warning).
        explanation_scores: how often the explanations' labels were true of held-out images
            (:func:`~discover.evaluation.explanations.score_explanations`), shown on the
            overview with chance and the shuffled-labels baseline.
    """

    name: str
    model: nn.Module | None
    dissection: Dissection
    probe: Dataset
    accuracy: dict[str, float] | None = None
    sparsity: dict[str, float] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    description_scores: dict[str, Any] | None = None
    activations: dict[str, torch.Tensor] | None = None
    groundtruth: GroundTruthReport | None = None
    explanation_scores: ExplanationScores | None = None


@dataclass
class ReportConfig:
    """How much the report shows; saved in ``report.json``.

    Args:
        top_images: top activating probe images per unit.
        max_units: units shown per layer gallery, best scores first (``None``: all of them);
            the page says how many it leaves out.
        max_winners: winners listed per layer on an explanation page.
        histogram_bins: bins of each unit's activation histogram.
        thumbnail_size: probe images larger than this (pixels) are downscaled to fit.
        title: the report's title.
    """

    top_images: int = GALLERY_SIZE
    max_units: int | None = 128
    max_winners: int = 64
    histogram_bins: int = 40
    thumbnail_size: int = 128
    title: str = "DISCOVER report"

    def __post_init__(self) -> None:
        checks = {
            "top_images": self.top_images >= 1,
            "max_units": self.max_units is None or self.max_units >= 1,
            "max_winners": self.max_winners >= 1,
            "histogram_bins": self.histogram_bins >= 2,
            "thumbnail_size": self.thumbnail_size >= 8,
        }
        for name, ok in checks.items():
            if not ok:
                raise InputError(
                    f"ReportConfig: {name}={getattr(self, name)!r} is out of range "
                    "(top_images, max_units, max_winners >= 1; "
                    "histogram_bins >= 2; thumbnail_size >= 8)"
                )


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
            :meth:`~discover.dissection.core.Dissection.check_model`) with a warning instead of
            refusing it.

    Example:
        >>> section = ReportSection("CVN (U=4)", model, dissection, probe,
        ...                         accuracy={"top1": 0.91})  # doctest: +SKIP
        >>> write_report("runs/demo/report", [section])  # doctest: +SKIP
        PosixPath('runs/demo/report/index.html')
    """
    config = config or ReportConfig()
    sections = _check_sections(sections)
    explanations = _check_explanations(explanations)
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


# -- validation ---------------------------------------------------------------------------------
def _check_sections(sections: Sequence[ReportSection]) -> list[ReportSection]:
    sections = list(sections)
    if not sections:
        raise InputError("write_report: no sections given (need at least one ReportSection)")
    for i, section in enumerate(sections):
        if not isinstance(section, ReportSection):
            raise InputError(
                f"write_report: section {i} is a {type(section).__name__}, expected a "
                "discover.report.writer.ReportSection"
            )
        if not isinstance(section.dissection, Dissection):
            raise InputError(
                f"section {section.name!r}: dissection is a {type(section.dissection).__name__}, "
                "expected a discover.dissection.core.Dissection"
            )
        if len(section.probe) == 0:
            raise InputError(f"section {section.name!r}: the probe set is empty")
        if not section.dissection.units:
            raise InputError(f"section {section.name!r}: the dissection has no units")
        truth = section.groundtruth
        if truth is not None:
            if not isinstance(truth, GroundTruthReport):
                raise InputError(
                    f"section {section.name!r}: groundtruth is a {type(truth).__name__}, "
                    "expected a discover.evaluation.groundtruth.GroundTruthReport"
                )
            for name, layer in truth.layers.items():
                units = len(section.dissection.layer(name))  # an unknown layer is named
                if len(layer.units) != units:
                    raise InputError(
                        f"section {section.name!r}: groundtruth of layer {name!r} has "
                        f"{len(layer.units)} units, the dissection {units}"
                    )
        for field_name in ("accuracy", "sparsity"):
            values = getattr(section, field_name) or {}
            bad = [k for k, v in values.items() if not _is_number(v)]
            if bad:
                raise InputError(
                    f"section {section.name!r}: {field_name} values must be numbers; "
                    f"{', '.join(map(repr, bad))} are not"
                )
    return sections


def _check_explanations(
    explanations: Iterable[tuple[Mapping[str, Any], Any]],
) -> list[tuple[dict[str, Any], Any]]:
    checked = []
    for i, pair in enumerate(explanations):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise InputError(
                f"explanation {i}: expected an (explanation_dict, image) pair, got "
                f"{type(pair).__name__}"
            )
        data, image = pair
        if callable(getattr(data, "to_dict", None)):
            data = data.to_dict()
        if not isinstance(data, Mapping):
            raise InputError(
                f"explanation {i}: expected a dict from Explanation.to_dict(), got "
                f"{type(data).__name__}"
            )
        missing = [k for k in _EXPLANATION_KEYS if k not in data]
        missing += [
            f"prediction.{k}"
            for k in _PREDICTION_KEYS
            if isinstance(data.get("prediction"), Mapping) and k not in data["prediction"]
        ]
        if not isinstance(data.get("prediction", {}), Mapping):
            missing.append("prediction (a dict)")
        for j, layer in enumerate(data.get("layers") or []):
            if not isinstance(layer, Mapping):
                missing.append(f"layers[{j}] (a dict)")
                continue
            missing += [f"layers[{j}].{k}" for k in _LAYER_KEYS if k not in layer]
            for w, winner in enumerate(layer.get("winners") or []):
                if not isinstance(winner, Mapping) or not all(k in winner for k in _WINNER_KEYS):
                    missing.append(f"layers[{j}].winners[{w}].unit/activation")
                    break
        contributions = data.get("contributions")
        if contributions is not None:
            if not isinstance(contributions, Mapping):
                missing.append("contributions (a dict or None)")
            else:
                missing += [
                    f"contributions.{k}" for k in _CONTRIBUTION_KEYS if k not in contributions
                ]
                if not all(
                    isinstance(u, Mapping) and "unit" in u and "contribution" in u
                    for u in contributions.get("units") or []
                ):
                    missing.append("contributions.units[].unit/contribution")
        if missing:
            raise InputError(
                f"explanation {i} ({data.get('image', '?')}): missing {', '.join(missing)}; "
                "see discover.explanation.Explanation.to_dict for the expected keys"
            )
        data = {"target": None, "policy": None, "contributions": None, **data}
        data["layers"] = [
            {
                "threshold": None,
                **layer,
                "winners": [
                    {"block": None, "label": None, "score": None, **w}
                    for w in layer.get("winners") or []
                ],
            }
            for layer in data["layers"]
        ]
        checked.append((data, image))
    return checked


def _check_destination(out: Path) -> None:
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


# -- small helpers ------------------------------------------------------------------------------
RESERVED_NAMES = frozenset({"explanations", "index.html", "style.css", "report.json"})
"""What the report's folder holds besides its sections' folders."""


def _slug(text: str, fallback: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:60]
    return slug or fallback


def _unique(slug: str, taken: set[str]) -> str:
    candidate, n = slug, 2
    while candidate.lower() in taken:
        candidate, n = f"{slug}-{n}", n + 1
    taken.add(candidate.lower())
    return candidate


def _fmt(value: Any, digits: int = 4) -> str:
    """Numbers with ``digits`` significant digits, containers as compact JSON."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return f"{value:.{digits}g}" if math.isfinite(value) else str(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return _fmt(value.item(), digits)
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return str(value)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * float(value):.1f} %"


def _num(value: float | None, digits: int = 3) -> str:
    """A figure to ``digits`` decimals; ``n/a`` for a missing or undefined (NaN) one."""
    if value is None or not math.isfinite(float(value)):
        return "n/a"
    return f"{float(value):.{digits}f}"


def _rows(mapping: Mapping[str, Any] | None, prefix: str = "") -> list[tuple[str, str]]:
    """Flatten nested dicts into ``(dotted key, formatted value)`` rows."""
    rows: list[tuple[str, str]] = []
    for key, value in (mapping or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            rows += _rows(value, f"{name}.")
        else:
            rows.append((name, _fmt(value)))
    return rows


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def to_pil(image: Any, what: str = "image") -> Image.Image:
    """A PIL image from a PIL image or image file, a ``(C, H, W)`` tensor or an ``(H, W, C)`` array.

    ``uint8`` data is taken as is; float data must lie in ``[0, 1]``.

    Example:
        >>> to_pil(torch.zeros(3, 8, 8)).size
        (8, 8)
    """
    if isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise FileNotFoundError(f"{what}: no image file {image}")
        try:
            with open_image(image) as opened:
                opened.load()
                image = opened.copy()
        except ImageTooLargeError as err:
            raise InputError(f"{what}: image file {image} is too large: {err}") from None
        except OSError as err:
            raise InputError(f"{what}: cannot read image file {image}: {err}") from err
    if isinstance(image, Image.Image):
        return image if image.mode in ("L", "RGB", "RGBA") else image.convert("RGB")
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu()
        if array.dim() == 2:
            array = array[None]
        if array.dim() != 3 or array.shape[0] not in (1, 3, 4):
            raise InputError(
                f"{what}: a tensor image must be (C, H, W) with C in 1, 3, 4 or (H, W); "
                f"got shape {tuple(image.shape)}"
            )
        array = array.permute(1, 2, 0).numpy()
    elif isinstance(image, np.ndarray):
        array = image[..., None] if image.ndim == 2 else image
        if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
            raise InputError(
                f"{what}: an array image must be (H, W, C) with C in 1, 3, 4 or (H, W); "
                f"got shape {image.shape}"
            )
    else:
        raise InputError(
            f"{what}: expected a PIL image, an image file, a (C, H, W) tensor or an (H, W, C) "
            "array, got "
            f"{type(image).__name__}"
        )
    if array.dtype != np.uint8:
        array = array.astype(np.float32)
        lo, hi = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -1e-3 or hi > 1 + 1e-3:
            raise InputError(
                f"{what}: float pixel values span [{lo:.3g}, {hi:.3g}], expected [0, 1]; "
                "pass raw images (the probe set without the model's normalisation)"
            )
        array = np.round(np.clip(array, 0, 1) * 255).astype(np.uint8)
    if array.shape[2] == 1:
        return Image.fromarray(array[:, :, 0], "L")
    return Image.fromarray(np.ascontiguousarray(array), "RGB" if array.shape[2] == 3 else "RGBA")


def _probe_image(probe: Dataset, index: int) -> Any:
    item = probe[index]
    return item[0] if isinstance(item, (tuple, list)) else item


HEAT_COLORMAP = "inferno"
"""The heatmaps' colour map: perceptually uniform, dark (the unit silent) to bright (its
peak), readable in greyscale and by colour-blind readers."""
HEAT_ALPHA = 0.6
HEAT_OUTLINE = 0.5
"""The outline on a heatmap marks where the unit exceeds this fraction of its peak over its
top images (a NetDissect-style thresholded region)."""


def draw_heatmap(image: Any, heat: Any) -> Any:
    """``image`` (PIL) with ``heat`` (an ``h x w`` array in [0, 1]) upsampled over it in
    :data:`HEAT_COLORMAP` and the region above :data:`HEAT_OUTLINE` outlined in cyan; the
    picture the report draws for a unit's map.

    Example:
        >>> from PIL import Image
        >>> draw_heatmap(Image.new("RGB", (32, 32)), np.eye(4)).size
        (32, 32)
    """
    from matplotlib import colormaps

    heat = np.asarray(heat, dtype=np.float32)

    size = image.size
    up = Image.fromarray(heat.astype(np.float32), mode="F").resize(size, Image.BILINEAR)
    values = np.clip(np.asarray(up), 0.0, 1.0)
    colours = (colormaps[HEAT_COLORMAP](values)[..., :3] * 255).astype(np.float32)
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    blend = (1 - HEAT_ALPHA) * base + HEAT_ALPHA * colours
    inside = values > HEAT_OUTLINE
    eroded = inside.copy()
    eroded[1:, :] &= inside[:-1, :]
    eroded[:-1, :] &= inside[1:, :]
    eroded[:, 1:] &= inside[:, :-1]
    eroded[:, :-1] &= inside[:, 1:]
    blend[inside & ~eroded] = (0, 255, 255)
    return Image.fromarray(np.rint(blend).astype(np.uint8))


def _heat_legend_png(path: Path, size=(168, 30)) -> None:
    """The heatmaps' colour bar: 0 (silent) to 1 (the unit's peak), the outline level marked."""
    from matplotlib import colormaps

    width, height = size
    ramp = np.linspace(0.0, 1.0, width)
    bar = (colormaps[HEAT_COLORMAP](ramp)[:, :3] * 255).astype(np.uint8)
    image = Image.new("RGB", size, (255, 255, 255))
    image.paste(Image.fromarray(np.repeat(bar[None], height - 12, axis=0)), (0, 0))
    draw = ImageDraw.Draw(image)
    x = round(HEAT_OUTLINE * (width - 1))
    draw.line([x, 0, x, height - 12], fill=(0, 255, 255), width=2)
    draw.text((0, height - 11), "0", fill=(60, 60, 60))
    draw.text((width - 8, height - 11), "1", fill=(60, 60, 60))
    image.save(path)


def _histogram_png(values: np.ndarray, path: Path, bins: int, size=(168, 44)) -> dict[str, Any]:
    """A small activation histogram drawn straight into a PNG (a few hundred per second).

    Heights are square-root scaled so that a spike at 0 (losing LWTA units) does not hide the
    rest; negative bins are orange, positive ones blue, and a grey line marks 0.
    """
    width, height = size
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    span = hi - lo if hi > lo else 1.0
    counts, edges = np.histogram(finite, bins=bins, range=(lo, lo + span))
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    peak = max(int(counts.max()) if counts.size else 0, 1)
    for i, count in enumerate(counts):
        if not count:
            continue
        x0 = round(i * width / bins)
        x1 = max(x0, round((i + 1) * width / bins) - 1)
        bar = max(1, round(math.sqrt(count / peak) * (height - 3)))
        colour = (235, 130, 40) if edges[i + 1] <= 0 else (55, 110, 200)
        draw.rectangle([x0, height - 1 - bar, x1, height - 1], fill=colour)
    if lo < 0 < hi:
        x = round((0 - lo) / span * (width - 1))
        draw.line([x, 0, x, height - 1], fill=(120, 120, 120))
    image.save(path)
    return {
        "min": lo,
        "max": hi,
        "zero": float((values == 0).mean()) if values.size else 0.0,
    }


def _mpl_text(text: str) -> str:
    """Keep matplotlib from reading ``$...$`` in layer names as mathtext."""
    return text.replace("$", r"\$")


def _sparsity_plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Horizontal bars of the active fraction per layer; a red tick at ``1/U`` for LWTA."""
    from matplotlib.figure import Figure

    height = 1.2 + 0.28 * len(rows)
    fig = Figure(figsize=(7.0, height), dpi=100, layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(rows))
    ax.barh(y, [r["fraction"] for r in rows], color="#3b6fc4", height=0.7)
    marked = False
    for i, r in enumerate(rows):
        if r["U"] and r["U"] > 1:
            ax.plot(
                [1 / r["U"]] * 2,
                [i - 0.45, i + 0.45],
                color="#d62728",
                linewidth=2,
                label="1/U" if not marked else None,
            )
            marked = True
    ax.set_yticks(y, [_mpl_text(r["layer"]) for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("active fraction")
    ax.grid(axis="x", alpha=0.3)
    if marked:
        ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path)


# -- writing ------------------------------------------------------------------------------------
def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("discover.report", "templates"),
        autoescape=True,  # every template is HTML; concept strings are untrusted
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = _fmt
    env.filters["pct"] = _pct
    env.filters["num"] = _num
    return env


class _Writer:
    """Writes every page of one report into ``root`` (a fresh staging folder)."""

    def __init__(self, root: Path, config: ReportConfig, progress: bool) -> None:
        self.root, self.config, self.progress = root, config, progress
        self.env = _environment()

    def _render(self, template: str, path: Path, depth: int, **context: Any) -> None:
        html = self.env.get_template(template).render(
            title=self.config.title, base="../" * depth, version=__version__, **context
        )
        path.write_text(html, encoding="utf-8")

    def _bar(self, items: Iterable[Any], desc: str) -> Iterable[Any]:
        if not self.progress:
            return items
        from tqdm.auto import tqdm

        return tqdm(items, desc=desc, leave=False, dynamic_ncols=True)

    def write(
        self,
        sections: list[ReportSection],
        explanations: list[tuple[dict[str, Any], Any]],
        meta: dict[str, Any],
        notes: list[str],
    ) -> None:
        t0 = time.time()
        (self.root / "style.css").write_text(
            self.env.loader.get_source(self.env, "style.css")[0], encoding="utf-8"
        )
        taken = set(RESERVED_NAMES)  # a section named "index.html" gets another folder
        views = [
            self._section(i, s, _unique(_slug(s.name, f"section-{i}"), taken))
            for i, s in enumerate(sections)
        ]
        pages = self._explanations(explanations)
        self._render(
            "index.html",
            self.root / "index.html",
            0,
            sections=views,
            explanations=pages,
            meta=_rows(meta),
            notes=notes,
        )
        summary = {
            "generator": GENERATOR,
            "version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.time() - t0, 3),
            "config": dataclasses.asdict(self.config),
            "meta": _jsonable(meta),
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
            json.dumps(_jsonable(summary), indent=2), encoding="utf-8"
        )

    # -- sections ---------------------------------------------------------------------------
    def _section(self, index: int, section: ReportSection, slug: str) -> dict[str, Any]:
        folder = self.root / slug
        (folder / "images").mkdir(parents=True)
        dissection = section.dissection
        layers = list(dict.fromkeys(u.layer for u in dissection.units))
        activations = self._activations(section, layers)
        about = dissection.about
        infos = {name: dissection.layer_info(name) for name in layers}
        truth = section.groundtruth or saved_groundtruth(dissection)
        truths = truth.layers if truth is not None else {}
        located = saved_localization(dissection)
        locations = located.layers if located is not None else {}
        lwta = {  # an SAE's latents are not LWTA units, whatever the layer under them is
            name: info.U for name, info in infos.items() if info.U and not info.sae
        }

        saved: dict[int, str] = {}  # probe index -> image path relative to the section folder
        layer_views = []
        taken: set[str] = {"images"}
        for name in self._bar(layers, f"report {section.name}"):
            page = _unique(_slug(name, "layer"), taken)
            view = self._gallery(
                section,
                folder,
                name,
                activations[name],
                lwta.get(name),
                page,
                saved,
                infos[name],
                about.sae if infos[name].sae else None,
                truths.get(name),
                locations.get(name),
            )
            layer_views.append(view)

        if dissection.maps:
            _heat_legend_png(folder / "heat-legend.png")
        pages = {v["layer"]: f"{slug}/{v['page']}" for v in layer_views}
        sparsity_rows = [
            {"layer": name, "fraction": float(frac), "U": lwta.get(name), "page": pages.get(name)}
            for name, frac in (section.sparsity or {}).items()
        ]
        plot = None
        if sparsity_rows:
            plot = f"{slug}/sparsity.png"
            _sparsity_plot(sparsity_rows, self.root / plot)

        model = section.model
        if model is not None:
            cvn = getattr(model, "cvn_config", None)
            kind, parameters = type(model).__name__, count_parameters(model)
            cvn_rows = cvn.to_dict() if callable(getattr(cvn, "to_dict", None)) else {}
        else:  # what the dissection recorded about the model
            kind, parameters, cvn_rows = about.model_class, about.parameters, about.cvn
        model_rows = [
            ("class", kind or "unknown"),
            ("parameters", f"{parameters:,}" if parameters is not None else "unknown"),
            ("LWTA layers dissected", str(len(lwta))),
        ]
        if lwta:
            model_rows.append(("U", ", ".join(map(str, sorted(set(lwta.values()))))))
        model_rows += _rows(cvn_rows, "cvn.")
        dissect_rows = _rows(dataclasses.asdict(dissection.config))
        for key, value in (
            ("embedder", about.embedder),
            ("concept set", about.concept_set),
            ("probe images", about.probe_images or len(section.probe)),
            ("skipped unreadable", len(about.skipped_images)),
            ("seconds", about.seconds),
        ):
            if value is not None:
                dissect_rows.append((key, _fmt(value)))
        fractions = [float(v) for v in (section.sparsity or {}).values()]
        view = {
            "index": index,
            "name": section.name,
            "glance": {
                "top1": _get(section.accuracy, "top1"),
                "top5": _get(section.accuracy, "top5"),
                "active": sum(fractions) / len(fractions) if fractions else None,
                "U": ", ".join(map(str, sorted(set(lwta.values())))) if lwta else "dense",
                "units": len(dissection.units),
            },
            "slug": slug,
            "model": model_rows,
            "settings": _rows(section.settings),
            "accuracy": [(k, _pct(v)) for k, v in (section.accuracy or {}).items()],
            "sparsity": sparsity_rows,
            "sparsity_plot": plot,
            "dissection": dissect_rows,
            "scores": _rows(section.description_scores),
            "precision": _precision_rows(section.explanation_scores),
            "precision_images": section.explanation_scores.images
            if section.explanation_scores is not None
            else None,
            "layers": layer_views,
            "truth": any(v["truth"] is not None for v in layer_views),
        }
        view["summary"] = {
            "name": section.name,
            "folder": slug,
            "accuracy": section.accuracy,
            "sparsity": section.sparsity,
            "settings": section.settings,
            "description_scores": section.description_scores,
            "explanation_scores": section.explanation_scores.to_dict()
            if section.explanation_scores is not None
            else None,
            "dissection": dataclasses.asdict(dissection.config),
            "layers": [
                {
                    k: v[k]
                    for k in ("layer", "page", "units", "shown", "U", "pooling", "dead", "truth")
                }
                for v in layer_views
            ],
        }
        return view

    def _activations(self, section: ReportSection, layers: list[str]) -> dict[str, torch.Tensor]:
        n = len(section.probe)
        if section.activations is not None:
            missing = [name for name in layers if name not in section.activations]
            if missing:
                raise InputError(
                    f"section {section.name!r}: activations lack layer(s) {', '.join(missing)} "
                    f"of the dissection (have {', '.join(section.activations) or 'none'})"
                )
            acts = {name: torch.as_tensor(section.activations[name]) for name in layers}
        else:
            acts = {name: section.dissection.probe_activations(name) for name in layers}
        for name in layers:
            units = len(section.dissection.layer(name))
            shape = tuple(acts[name].shape)
            if len(shape) != 2 or shape[0] != n or shape[1] < units:
                raise InputError(
                    f"section {section.name!r}: activations of layer {name!r} have shape {shape}, "
                    f"expected ({n}, {units}) = (probe images, units)"
                )
        return acts

    def _gallery(
        self,
        section: ReportSection,
        folder: Path,
        name: str,
        Q: torch.Tensor,
        U: int | None,
        page: str,
        saved: dict[int, str],
        info: DissectedLayer,
        sae: dict[str, Any] | None = None,
        truth: LayerGroundTruth | None = None,
        located: LayerLocalization | None = None,
    ) -> dict[str, Any]:
        cfg = self.config
        truths = {u.unit: u for u in truth.units} if truth is not None else {}
        where = {row["unit"]: row for row in located.rows()} if located is not None else {}
        rows: list[UnitDescription] = section.dissection.layer(name)
        Q = Q.detach().float().cpu()
        dead = (Q.abs().sum(0) == 0).numpy()
        order = sorted(rows, key=lambda u: (bool(dead[u.unit]), -_finite(u.score), u.unit))
        shown = order if cfg.max_units is None else order[: cfg.max_units]
        top_index = top_images(Q, cfg.top_images).T  # (k, K), the order the maps were kept in
        top_values = Q.gather(0, top_index)
        hist_dir = folder / "hist" / page
        hist_dir.mkdir(parents=True)
        maps = section.dissection.maps.get(name)
        heat_dir = folder / "heat" / page
        if maps is not None:
            heat_dir.mkdir(parents=True)
        cards = []
        for u in shown:
            column = Q[:, u.unit].numpy()
            hist = _histogram_png(column, hist_dir / f"{u.unit}.png", cfg.histogram_bins)
            images = []
            if not dead[u.unit]:
                kept = maps.indices[u.unit].tolist() if maps is not None else []
                peak = float(maps.maps[u.unit].max()) if maps is not None else 0.0
                for value, idx in zip(
                    top_values[:, u.unit].tolist(), top_index[:, u.unit].tolist(), strict=True
                ):
                    src = self._save_probe(section, folder, idx, saved)
                    heat = None
                    if idx in kept and peak > 0:
                        heat = f"heat/{page}/{u.unit}_{idx}.png"
                        if not (folder / heat).exists():
                            assert maps is not None
                            unit_map = maps.maps[u.unit, kept.index(idx)].float().numpy() / peak
                            with Image.open(folder / src) as thumb:
                                draw_heatmap(thumb, unit_map).save(folder / heat)
                    images.append({"src": src, "heat": heat, "index": idx, "activation": value})
            cards.append(
                {
                    "unit": u.unit,
                    "label": u.label,
                    "abstained": u.abstained,
                    "score": u.score,
                    "top": [(c, s) for c, s in u.top],
                    "block": u.block,
                    "position": u.position,
                    "active_fraction": u.active_fraction,
                    "z": u.z,
                    "above_chance": u.above_chance,
                    "dead": bool(dead[u.unit]),
                    "images": images,
                    "hist": f"hist/{page}/{u.unit}.png",
                    "hist_info": hist,
                    "truth": truths.get(u.unit),
                    "where": where.get(u.unit),
                }
            )
        view = {
            "layer": name,
            "page": f"{page}.html",
            "units": len(rows),
            "shown": len(cards),
            "maps": maps.note if maps is not None else None,
            "map_size": list(maps.maps.shape[-2:]) if maps is not None else None,
            "U": U,
            "sae": sae,
            "pooling": info.pooling,
            "dead": int(dead[[u.unit for u in rows]].sum()),
            "mean_score": float(np.mean([_finite(u.score) for u in rows])),
            "truth": truth.summary() if truth is not None else None,
            "localization": located.summary() if located is not None else None,
        }
        self._render(
            "layer.html",
            folder / f"{page}.html",
            1,
            section=section.name,
            layer=view,
            cards=cards,
            probe_images=Q.shape[0],
        )
        return view

    def _save_probe(
        self, section: ReportSection, folder: Path, index: int, saved: dict[int, str]
    ) -> str:
        if index not in saved:
            image = to_pil(
                _probe_image(section.probe, index), f"section {section.name!r}: probe image {index}"
            )
            image.thumbnail((self.config.thumbnail_size,) * 2)
            rel = f"images/{index}.png"
            image.save(folder / rel)
            saved[index] = rel
        return saved[index]

    # -- explanations -----------------------------------------------------------------------
    def _explanations(self, explanations: list[tuple[dict[str, Any], Any]]) -> list[dict[str, Any]]:
        if not explanations:
            return []
        folder = self.root / "explanations"
        folder.mkdir()
        _heat_legend_png(folder / "heat-legend.png")
        pages = []
        for i, (data, image) in enumerate(self._bar(explanations, "explanations")):
            src = None
            base = None
            if image is not None:
                src = f"{i}.png"
                base = to_pil(image, f"explanation {i}: image")
                base.save(folder / src)

            def heat(grid: Any, stem: str, base: Any = base) -> str | None:
                """The map drawn over the explained image (each map to its own peak)."""
                if base is None or not grid:
                    return None
                values = np.asarray(grid, dtype=np.float32)
                peak = float(values.max())
                if not np.isfinite(peak) or peak <= 0:
                    return None
                draw_heatmap(base, values / peak).save(folder / f"{stem}.png")
                return f"{stem}.png"

            evidence = dict(data.get("class_evidence") or {})
            if evidence.get("map"):
                evidence["heat"] = heat(evidence["map"], f"{i}-evidence")
            layers = []
            for j, layer in enumerate(data["layers"]):
                winners = [
                    {**w, "heat": heat(w.get("map"), f"{i}-l{j}-u{w['unit']}")}
                    for w in list(layer.get("winners") or [])[: self.config.max_winners]
                ]
                layers.append(
                    {
                        **layer,
                        "winners": winners,
                        "total_winners": len(layer.get("winners") or []),
                    }
                )
            contributions = data.get("contributions")
            if contributions:
                units = list(contributions.get("units") or [])
                peak = max((abs(float(u.get("contribution", 0.0))) for u in units), default=0.0)
                contributions = {
                    **contributions,
                    "units": [
                        {
                            "label": None,
                            "activation": None,
                            "weight": None,
                            **u,
                            "bar": 100 * abs(float(u.get("contribution", 0.0))) / peak
                            if peak
                            else 0,
                            "heat": heat(u.get("map"), f"{i}-c{u.get('unit')}"),
                        }
                        for u in units
                    ],
                }
            page = {
                "page": f"explanations/{i}.html",
                "src": f"explanations/{src}" if src else None,
                "data": data,
            }
            self._render(
                "explanation.html",
                folder / f"{i}.html",
                1,
                data=data,
                src=src,
                layers=layers,
                contributions=contributions,
                evidence=evidence,
                number=i,
                total=len(explanations),
            )
            pages.append(page)
        return pages


def _precision_rows(scores: ExplanationScores | None) -> list[dict[str, Any]]:
    """The overview's rows of explanation precision: contributions, then each layer."""
    if scores is None:
        return []
    tables = [("logit contributions", scores.contributions)] if scores.contributions else []
    tables += [(f"winners of {layer}", t) for layer, t in scores.winners.items()]
    return [
        {
            "table": name,
            "precision": t.precision,
            "shuffled": t.shuffled,
            "chance": scores.chance,
            "conditioned": t.conditioned,
            "control": t.control_random_units,
            "unlabelled": t.abstained,
            "shown": t.shown,
        }
        for name, t in tables
    ]


def _is_number(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _get(mapping: Any, *keys: str) -> Any:
    """``mapping[k1][k2]...``, or ``None`` where a level is missing or not a dict."""
    for key in keys:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


def _finite(score: float) -> float:
    return float(score) if math.isfinite(float(score)) else -math.inf
