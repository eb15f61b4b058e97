"""A model's section of the report: its overview entry and its layers' pages."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from discover.dissection.records import DissectedLayer
from discover.errors import InputError
from discover.evaluation.explanations import ExplanationScores
from discover.evaluation.groundtruth import saved_groundtruth
from discover.evaluation.localization import saved_localization
from discover.nn.checkpoints import count_parameters
from discover.report.figures import heat_legend_png, sparsity_plot
from discover.report.gallery import GalleryLayer, write_gallery
from discover.report.inputs import ReportSection
from discover.report.rendering import (
    PageWriter,
    flat_rows,
    fmt,
    lookup,
    pct,
    slugify,
    unique_name,
)

__all__ = ["section_activations", "write_section"]


def write_section(
    pages: PageWriter, index: int, section: ReportSection, slug: str
) -> dict[str, Any]:
    """Write the section's layer pages and figures into ``root/slug``; returns its overview
    entry (with the ``summary`` saved in ``report.json``)."""
    folder = pages.root / slug
    (folder / "images").mkdir(parents=True)
    dissection = section.dissection
    layers = list(dict.fromkeys(u.layer for u in dissection.units))
    activations = section_activations(section, layers)
    infos = {name: dissection.layer_info(name) for name in layers}
    lwta = {  # an SAE's latents are not LWTA units, whatever the layer under them is
        name: info.U for name, info in infos.items() if info.U and not info.sae
    }
    layer_views = _write_layers(pages, section, slug, activations, infos, lwta)
    if dissection.maps:
        heat_legend_png(folder / "heat-legend.png")
    pages_of = {v["layer"]: f"{slug}/{v['page']}" for v in layer_views}
    sparsity_rows = [
        {"layer": name, "fraction": float(frac), "U": lwta.get(name), "page": pages_of.get(name)}
        for name, frac in (section.sparsity or {}).items()
    ]
    plot = None
    if sparsity_rows:
        plot = f"{slug}/sparsity.png"
        sparsity_plot(sparsity_rows, pages.root / plot)
    scores = section.explanation_scores
    view = {
        "index": index,
        "name": section.name,
        "glance": _glance(section, lwta),
        "slug": slug,
        "model": _model_rows(section, lwta),
        "settings": flat_rows(section.settings),
        "accuracy": [(k, pct(v)) for k, v in (section.accuracy or {}).items()],
        "sparsity": sparsity_rows,
        "sparsity_plot": plot,
        "dissection": _dissection_rows(section),
        "scores": flat_rows(section.description_scores),
        "precision": _precision_rows(scores),
        "precision_images": scores.images if scores is not None else None,
        "layers": layer_views,
        "truth": any(v["truth"] is not None for v in layer_views),
    }
    view["summary"] = _summary(section, slug, layer_views)
    return view


def section_activations(section: ReportSection, layers: list[str]) -> dict[str, torch.Tensor]:
    """``{layer: (probe images, units)}``: the section's own activations or the dissection's,
    checked to fit the probe set and the layers."""
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


def _write_layers(
    pages: PageWriter,
    section: ReportSection,
    slug: str,
    activations: dict[str, torch.Tensor],
    infos: dict[str, DissectedLayer],
    lwta: dict[str, int],
) -> list[dict[str, Any]]:
    """Write a page per layer (with the saved ground truth and localization, if any)."""
    dissection = section.dissection
    truth = section.groundtruth or saved_groundtruth(dissection)
    truths = truth.layers if truth is not None else {}
    located = saved_localization(dissection)
    locations = located.layers if located is not None else {}
    saved: dict[int, str] = {}  # probe index -> image path relative to the section folder
    taken: set[str] = {"images"}
    views = []
    for name in pages.bar(list(activations), f"report {section.name}"):
        layer = GalleryLayer(
            name=name,
            page=unique_name(slugify(name, "layer"), taken),
            Q=activations[name],
            info=infos[name],
            U=lwta.get(name),
            sae=dissection.about.sae if infos[name].sae else None,
            truth=truths.get(name),
            located=locations.get(name),
        )
        views.append(write_gallery(pages, section, pages.root / slug, layer, saved))
    return views


def _glance(section: ReportSection, lwta: dict[str, int]) -> dict[str, Any]:
    """The overview table's row of the section."""
    fractions = [float(v) for v in (section.sparsity or {}).values()]
    return {
        "top1": lookup(section.accuracy, "top1"),
        "top5": lookup(section.accuracy, "top5"),
        "active": sum(fractions) / len(fractions) if fractions else None,
        "U": ", ".join(map(str, sorted(set(lwta.values())))) if lwta else "dense",
        "units": len(section.dissection.units),
    }


def _model_rows(section: ReportSection, lwta: dict[str, int]) -> list[tuple[str, str]]:
    """The model's class, size and CVN settings: from the model at hand, else as the
    dissection recorded them."""
    model, about = section.model, section.dissection.about
    if model is not None:
        cvn = getattr(model, "cvn_config", None)
        kind, parameters = type(model).__name__, count_parameters(model)
        cvn_rows = cvn.to_dict() if callable(getattr(cvn, "to_dict", None)) else {}
    else:  # what the dissection recorded about the model
        kind, parameters, cvn_rows = about.model_class, about.parameters, about.cvn
    rows = [
        ("class", kind or "unknown"),
        ("parameters", f"{parameters:,}" if parameters is not None else "unknown"),
        ("LWTA layers dissected", str(len(lwta))),
    ]
    if lwta:
        rows.append(("U", ", ".join(map(str, sorted(set(lwta.values()))))))
    return rows + flat_rows(cvn_rows, "cvn.")


def _dissection_rows(section: ReportSection) -> list[tuple[str, str]]:
    """The dissection's settings and what it ran on."""
    dissection = section.dissection
    about = dissection.about
    rows = flat_rows(dataclasses.asdict(dissection.config))
    for key, value in (
        ("embedder", about.embedder),
        ("concept set", about.concept_set),
        ("probe images", about.probe_images or len(section.probe)),
        ("skipped unreadable", len(about.skipped_images)),
        ("seconds", about.seconds),
    ):
        if value is not None:
            rows.append((key, fmt(value)))
    return rows


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


def _summary(
    section: ReportSection, slug: str, layer_views: list[dict[str, Any]]
) -> dict[str, Any]:
    """The section's entry in ``report.json``."""
    scores = section.explanation_scores
    keys = ("layer", "page", "units", "shown", "U", "pooling", "dead", "truth")
    return {
        "name": section.name,
        "folder": slug,
        "accuracy": section.accuracy,
        "sparsity": section.sparsity,
        "settings": section.settings,
        "description_scores": section.description_scores,
        "explanation_scores": scores.to_dict() if scores is not None else None,
        "dissection": dataclasses.asdict(section.dissection.config),
        "layers": [{k: v[k] for k in keys} for v in layer_views],
    }
