"""A layer's page: a card per unit with its label, scores, top images, heatmaps, histogram."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from discover.dissection.records import DissectedLayer, UnitDescription
from discover.dissection.spatial import top_images
from discover.evaluation.groundtruth import LayerGroundTruth
from discover.evaluation.localization import LayerLocalization
from discover.report.figures import draw_heatmap, histogram_png, probe_image, to_pil
from discover.report.inputs import ReportSection
from discover.report.rendering import PageWriter, finite_score

__all__ = ["GalleryLayer", "save_probe", "write_gallery"]


@dataclass
class GalleryLayer:
    """One dissected layer as its page shows it."""

    name: str
    page: str  # the page's file name without ``.html``, unique in its section
    Q: torch.Tensor  # (probe images, units) pooled activations
    info: DissectedLayer
    U: int | None = None  # competitors per block of an LWTA layer
    sae: dict[str, Any] | None = None  # the settings of an SAE's latents
    truth: LayerGroundTruth | None = None
    located: LayerLocalization | None = None


def write_gallery(
    pages: PageWriter,
    section: ReportSection,
    folder: Path,
    layer: GalleryLayer,
    saved: dict[int, str],
) -> dict[str, Any]:
    """Write ``layer``'s page into the section's ``folder``; returns its overview entry.

    ``saved`` maps a probe index to its thumbnail (relative to ``folder``), shared by the
    section's layers so each probe image is written once.
    """
    cfg = pages.config
    rows: list[UnitDescription] = section.dissection.layer(layer.name)
    Q = layer.Q.detach().float().cpu()
    dead = (Q.abs().sum(0) == 0).numpy()
    order = sorted(rows, key=lambda u: (bool(dead[u.unit]), -finite_score(u.score), u.unit))
    shown = order if cfg.max_units is None else order[: cfg.max_units]
    top_index = top_images(Q, cfg.top_images).T  # (k, K), the order the maps were kept in
    top_values = Q.gather(0, top_index)
    (folder / "hist" / layer.page).mkdir(parents=True)
    maps = section.dissection.maps.get(layer.name)
    if maps is not None:
        (folder / "heat" / layer.page).mkdir(parents=True)
    truths = {u.unit: u for u in layer.truth.units} if layer.truth is not None else {}
    where = {r["unit"]: r for r in layer.located.rows()} if layer.located is not None else {}
    cards = []
    for u in shown:
        hist_path = f"hist/{layer.page}/{u.unit}.png"
        hist = histogram_png(Q[:, u.unit].numpy(), folder / hist_path, cfg.histogram_bins)
        images = []
        if not dead[u.unit]:
            top = zip(top_values[:, u.unit].tolist(), top_index[:, u.unit].tolist(), strict=True)
            images = _unit_images(pages, section, folder, layer.page, u.unit, top, maps, saved)
        card = _card(u, bool(dead[u.unit]), images, hist_path, hist)
        cards.append({**card, "truth": truths.get(u.unit), "where": where.get(u.unit)})
    view = _layer_view(layer, rows, len(cards), dead, maps)
    pages.render(
        "layer.html",
        folder / f"{layer.page}.html",
        1,
        section=section.name,
        layer=view,
        cards=cards,
        probe_images=Q.shape[0],
    )
    return view


def _unit_images(
    pages: PageWriter,
    section: ReportSection,
    folder: Path,
    page: str,
    unit: int,
    top: Any,
    maps: Any,
    saved: dict[int, str],
) -> list[dict[str, Any]]:
    """The unit's top probe images (``top``: activation, probe index pairs), each with the
    unit's map drawn over it where the dissection kept one."""
    kept = maps.indices[unit].tolist() if maps is not None else []
    peak = float(maps.maps[unit].max()) if maps is not None else 0.0
    images = []
    for value, idx in top:
        src = save_probe(pages, section, folder, idx, saved)
        heat = None
        if idx in kept and peak > 0:
            heat = f"heat/{page}/{unit}_{idx}.png"
            if not (folder / heat).exists():
                unit_map = maps.maps[unit, kept.index(idx)].float().numpy() / peak
                with Image.open(folder / src) as thumb:
                    draw_heatmap(thumb, unit_map).save(folder / heat)
        images.append({"src": src, "heat": heat, "index": idx, "activation": value})
    return images


def _card(
    u: UnitDescription,
    dead: bool,
    images: list[dict[str, Any]],
    hist_path: str,
    hist: dict[str, Any],
) -> dict[str, Any]:
    """What the unit's card shows."""
    return {
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
        "dead": dead,
        "images": images,
        "hist": hist_path,
        "hist_info": hist,
    }


def _layer_view(
    layer: GalleryLayer, rows: list[UnitDescription], shown: int, dead: np.ndarray, maps: Any
) -> dict[str, Any]:
    """The layer's entry on its page and on the overview."""
    truth, located = layer.truth, layer.located
    return {
        "layer": layer.name,
        "page": f"{layer.page}.html",
        "units": len(rows),
        "shown": shown,
        "maps": maps.note if maps is not None else None,
        "map_size": list(maps.maps.shape[-2:]) if maps is not None else None,
        "U": layer.U,
        "sae": layer.sae,
        "pooling": layer.info.pooling,
        "dead": int(dead[[u.unit for u in rows]].sum()),
        "mean_score": float(np.mean([finite_score(u.score) for u in rows])),
        "truth": truth.summary() if truth is not None else None,
        "localization": located.summary() if located is not None else None,
    }


def save_probe(
    pages: PageWriter, section: ReportSection, folder: Path, index: int, saved: dict[int, str]
) -> str:
    """The thumbnail of probe image ``index`` (written on first use), relative to ``folder``."""
    if index not in saved:
        image = to_pil(
            probe_image(section.probe, index), f"section {section.name!r}: probe image {index}"
        )
        image.thumbnail((pages.config.thumbnail_size,) * 2)
        rel = f"images/{index}.png"
        image.save(folder / rel)
        saved[index] = rel
    return saved[index]
