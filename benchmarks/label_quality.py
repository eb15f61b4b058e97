"""Label quality end to end: are the words a user reads true of the units and the images?

On the Shapes world every probe and held-out image carries its concepts, so the labels
discover prints can be checked, not only scored. For every similarity function x embedder
x converged Shapes model (dense and CVN, every seed trained) x layer, on a *validation*
split (Shapes ``val``) and a *test* split (Shapes ``test``):

* **probe**: 2,000 images (seed 0) to dissect on; **held-out images**: 500 others (seed 1)
  to judge on. Labels are chosen on the probe, judged only on held-out images.
* **unit label precision**: a unit *detects* a concept when its activation ranks the
  held-out images with that concept first: AUPRC lift ``(AP - prevalence) / (1 -
  prevalence)`` of at least 0.5 (lift, not AP: AP favours common concepts such as "small"
  and "large", which half of the images have). Among the units that detect some concept,
  the share of *shown* labels (not abstained) that the unit detects; ``label_is_best``:
  the share equal to its best concept (highest lift).
* **explanation precision**: ``discover.explain`` on the held-out images (its default of
  10 rows per table); the share of shown labels true of the explained image, in the
  contribution table (``explanation_precision``, the layer that feeds the classifier) and
  among the listed winners of each layer (``winner_precision``).
* **image-conditioned precision** (``conditioned_precision``): the same rows' image-
  conditioned label (the candidate the embedder sees most in this image, ``explain(...,
  embedder=)``), for the contribution table; ``conditioned_winner_precision`` for the
  winners. With the annotations embedder the image's row of ``P`` is the ground truth (an
  oracle): reported, but no target counts it.
* **abstention**: the share of units shown unlabelled (dead, tied, ``p_null`` above
  the threshold or ``match`` below it); ``abstained_detecting``: among the units that detect some concept.
* **baselines**, beside every figure: ``chance`` = 6/46 (each image has one concept of
  each of its six factors); ``shuffled`` = the same rows with labels drawn from the other
  shown units of the layer (the expectation over a random permutation of the labels, so
  frequent labels get no credit for being frequent); for conditioned labels the embedder
  choosing among 5 random concepts (``control_random_concepts``) and among the
  candidates of a random shown unit of the same layer (``control_random_units``): the
  margin over the latter is what the unit adds to what the embedder sees anyway.

* **IoU labels** (``similarity`` ``iou (Network Dissection)``, annotations only): every
  unit labelled with its best-IoU concept against the probe's pixel masks
  (:func:`discover.evaluation.iou_labelled`; no detector above IoU 0.04: unlabelled),
  scored exactly like the text labels beside them (issue 23). Their units carry no
  ``p_null`` or ``match``, so only the percentile rule applies to them; they are never a
  candidate default.

Three abstention rules are tuned, all applied after dissecting and explaining (the labels,
``p_null``, ``match`` and the listed rows do not depend on them), so one dissection per
(model, embedder, similarity, split) serves every setting of :data:`SETTINGS`: a unit
abstains when its label's ``p_null`` is above ``abstain_p`` (:data:`ABSTAIN_P`) or its
``match`` is below ``min_match`` (:data:`MIN_MATCH`), and a listed unit is shown unlabelled
in one image when it fires there below ``min_percentile`` of the probe
(:data:`MIN_PERCENTILE`; ``explain(min_percentile=)``). ``shown_label_precision`` is the
share of *all* labelled units whose label the unit detects (units that detect no concept
count against it, as a reader of their card would be misled).

**Defaults** (:data:`discover.dissection.labels.LABEL_DEFAULTS`) are chosen on the
validation split only: per embedder kind, the similarity and setting with the highest mean
of explanation precision (contribution tables) and unit label precision (:data:`OBJECTIVE`,
the two measures the targets of issue 21 are set on), among those that abstain on at most
30 % of the units that detect a concept and still label at least half of the
contribution-table rows. The test split then reports every similarity at its tuned setting,
the paper's soft WPMI (every unit labelled) and paired 95 % intervals over the models.
ViTs: no explained (LWTA) layer feeds the classifier, so their final norm is dissected too
(:func:`discover.explanation.classifier_input_layer`) for the contribution table. The JSON keeps the rows of each similarity's tuned setting (``setting: tuned``)
and of the paper's (``setting: paper``); ``grid`` has every setting's means.

Run (about 1 h on 2 cores, two models at a time; the Shapes CLIP is trained first, about
40 min, and cached; an interrupted run continues where it stopped, ``--cache``):
    python benchmarks/label_quality.py --runs benchmarks/runs/converged
    python benchmarks/label_quality.py --runs DIR --quick   # a plumbing check, minutes
Results: ``benchmarks/results/label_quality.{md,json,png}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from common import (
    ci95_half_width,
    load_average,
    markdown_table,
    percent,
    portable,
    process_pool,
    provenance,
    report_header,
    write_json,
)

SPLITS = {"validation": "val", "test": "test"}
PROBE_N, HELD_N = 2000, 500
SIMILARITIES = ("cos", "corr", "cos3", "wpmi", "soft_wpmi", "rank_reorder", "jsd")
ABSTAIN_P: tuple[float | None, ...] = (None, 1e-3)
MIN_MATCH: tuple[float | None, ...] = (None, 0.1, 0.2, 0.3, 0.4)
MIN_PERCENTILE: tuple[float | None, ...] = (None, 0.75, 0.9)
SETTINGS = [(p, r, q) for p in ABSTAIN_P for r in MIN_MATCH for q in MIN_PERCENTILE]
MIN_SHOWN = 0.5  # a setting must still label at least half of the contribution-table rows
LIFT_BAR = 0.5
MAX_ABSTAINED = 0.30
TOP = 10
CANDIDATES = 5
NULL_REPEATS = 16
TARGETS = {
    "explanation_precision": {"annotations": 0.70, "clip": 0.55},
    "conditioned_precision": {"clip": 0.80},
    "unit_label_precision": {"annotations": 0.70, "clip": 0.70},
}
EMBEDDER_KIND = {"annotations": "annotations", "clip": "vlm"}
ROWS_VERSION = 3  # bump when measure_subject's rows change meaning
ALT_POOLING = {"resnet": "max", "vit": "mean"}
"""Validation only: hidden layers pooled otherwise than ``auto`` (avg for conv maps, the class
token for ViT tokens), with :data:`ALT_POOLING_SIMILARITY`; the contribution table keeps
the pooling that feeds the classifier (its labels would otherwise describe other numbers)."""
ALT_POOLING_SIMILARITY = "corr"
IOU_LABELS = "iou (Network Dissection)"
"""The labels of :func:`discover.evaluation.iou_labelled`: each unit's best-IoU concept with
the probe's pixel masks (annotations embedder only; every layer has spatial extent here),
scored like a similarity's labels but never a candidate default (no text similarity)."""
IOU_BASE_SIMILARITY = "jsd"  # the dissection whose activations and rows IoU labels replace


@dataclass(frozen=True)
class Subject:
    family: str
    U: int
    seed: int

    @property
    def name(self) -> str:
        variant = "" if self.U == 1 else "-anneal"
        return f"shapes-{self.family}-u{self.U}{variant}-s{self.seed}"


def find_subjects(
    runs: Path, families: list[str], Us: list[int], seeds: list[int]
) -> list[Subject]:
    """Every converged Shapes run that finished training (``record.json``)."""
    found = []
    for family in families:
        for U in Us:
            for seed in seeds:
                subject = Subject(family, U, seed)
                if (runs / subject.name / "record.json").is_file():
                    found.append(subject)
    return found


# -- data --------------------------------------------------------------------------------------
def worlds(split: str, quick: bool) -> tuple[Any, Any]:
    """The probe (seed 0) and the held-out images (seed 1) of a Shapes split, 32 px."""
    from discover.data import ShapesWorld

    probe_n, held_n = (400, 120) if quick else (PROBE_N, HELD_N)
    return (
        ShapesWorld(n=probe_n, image_size=32, split=SPLITS[split], seed=0),
        ShapesWorld(n=held_n, image_size=32, split=SPLITS[split], seed=1),
    )


def lifts(Q: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """AUPRC lift ``(AP - prevalence) / (1 - prevalence)`` of every unit for every concept."""
    from discover.evaluation.detection import average_precision

    prevalence = truth.double().mean(dim=0)
    return (average_precision(Q, truth) - prevalence) / (1 - prevalence)


# -- measuring ---------------------------------------------------------------------------------


WINNER_KEYS = (
    "winner_precision",
    "winner_shuffled",
    "conditioned_winner_precision",
    "winner_control_random_units",
    "winner_control_random_concepts",
    "winners_shown",
)


def measure_dissection(
    dissection: Any,
    explanations: Any,
    truth_held: torch.Tensor,
    names: list[str],
    Z_held: torch.Tensor,
    lift: dict[str, torch.Tensor],
    abstain_p: float | None,
    min_match: float | None,
    min_percentile: float | None,
    no_winners: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Every figure of one dissection at one setting, per layer (``no_winners``: a layer
    whose winner figures are left out)."""
    from discover.evaluation.explanations import label_shown, score_explanations

    scores = score_explanations(
        explanations,  # ExplanationRows: the explanations read once for every setting
        dissection,
        truth_held,
        names,
        image_scores=Z_held,
        abstain_p=abstain_p,
        min_match=min_match,
        min_percentile=min_percentile,
        candidates=CANDIDATES,
    )
    column = {c: j for j, c in enumerate(names)}
    results: dict[str, dict[str, Any]] = {}
    contribution_layer = explanations.contribution_layer
    for layer in dissection.layers:
        units = dissection.layer(layer)
        shown = torch.tensor([label_shown(u, abstain_p, min_match) for u in units])
        label_idx = torch.tensor([column[u.label] for u in units])
        L = lift[layer]  # (K, C) on the held-out images
        detecting = L.amax(dim=1) >= LIFT_BAR
        judged = detecting & shown
        label_lift = L.gather(1, label_idx[:, None]).squeeze(1)
        any_judged = bool(judged.any())
        winners = scores.winners[layer]
        row: dict[str, Any] = {
            "units": len(units),
            "detecting": float(detecting.float().mean()),
            "abstained": float(1 - shown.float().mean()),
            "abstained_detecting": float(1 - shown[detecting].float().mean())
            if detecting.any()
            else None,
            "unit_label_precision": float((label_lift[judged] >= LIFT_BAR).float().mean())
            if any_judged
            else None,
            "shown_label_precision": float((label_lift[shown] >= LIFT_BAR).float().mean())
            if shown.any()
            else None,
            "label_is_best": float((label_idx[judged] == L.argmax(dim=1)[judged]).float().mean())
            if any_judged
            else None,
            "chance": scores.chance,
            "winner_precision": winners.precision,
            "winner_shuffled": winners.shuffled,
            "conditioned_winner_precision": winners.conditioned,
            "winner_control_random_units": winners.control_random_units,
            "winner_control_random_concepts": winners.control_random_concepts,
            "winners_shown": None if not winners.listed else winners.shown / winners.listed,
        }
        if layer == no_winners:  # a layer added for its contribution table only
            row.update(dict.fromkeys(WINNER_KEYS))
        table = scores.contributions if layer == contribution_layer else None
        row.update(
            explanation_precision=table.precision if table else None,
            explanation_shuffled=table.shuffled if table else None,
            conditioned_precision=table.conditioned if table else None,
            control_random_units=table.control_random_units if table else None,
            control_random_concepts=table.control_random_concepts if table else None,
            contributions_shown=table.shown / table.listed if table and table.listed else None,
        )
        results[layer] = row
    return results


def setting_rows(
    subject: Subject, about: dict[str, Any], dissection: Any, listed: Any,
    truth_held: torch.Tensor, names: list[str], Z_held: torch.Tensor,
    lift: dict[str, torch.Tensor], pooling: dict[str, str], added: str | None,
    extra: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """One row per abstention setting and layer of one dissection: ``about`` (split,
    embedder, similarity), the setting, the model, the layer, ``extra`` and the figures."""
    rows = []
    for abstain_p, min_match, min_percentile in SETTINGS:
        per_layer = measure_dissection(
            dissection, listed, truth_held, names, Z_held, lift, abstain_p, min_match,
            min_percentile, no_winners=added,
        )  # fmt: skip
        for layer, figures in per_layer.items():
            rows.append(
                {
                    "dataset": "shapes",
                    **about,
                    "abstain_p": abstain_p,
                    "min_match": min_match,
                    "min_percentile": min_percentile,
                    "model": subject.family,
                    "U": subject.U,
                    "seed": subject.seed,
                    "layer": layer,
                    "pooling": pooling[layer],
                    **(extra or {}),
                    **figures,
                }
            )
    return rows


def head_layers(model: Any, layers: list[str]) -> tuple[list[str], str | None, str | None]:
    """``layers`` plus, if none of them feeds the classifier, the module that does (a ViT's
    final norm, :func:`discover.explanation.classifier_input_layer`), so that ViT
    contribution tables are labelled and judged too; the contribution layer; the added
    layer (or ``None``), whose rows count for units and the contribution table, not
    winners."""
    from discover.explanation import classifier_input_layer

    head = classifier_input_layer(model, layers)
    if head is None or head in layers:
        return layers, head, None
    return [*layers, head], head, head


def measure_subject(
    subject: Subject,
    runs: Path,
    split: str,
    embedders: dict[str, Any],
    similarities: list[str],
    cache: Path,
    quick: bool,
) -> list[dict[str, Any]]:
    """Every row of one model on one split: embedders x similarities x settings x layers."""
    from discover.dissection.core import dissect
    from discover.dissection.embedders import AnnotationEmbedder, build_embedder
    from discover.dissection.recording import model_view, record
    from discover.evaluation.explanations import ExplanationRows
    from discover.explanation import default_layers, explain
    from discover.training.runs import load_run

    run = load_run(runs / subject.name)
    model = run.model.eval()
    layers, head_layer, added = head_layers(model, default_layers(model))
    probe, held = worlds(split, quick)
    names = list(probe.concept_names)
    truth_held = held.concepts_table()
    images = [held[i][0] for i in range(len(held))]
    rows = []
    lift_cache: dict[str, dict[str, torch.Tensor]] = {}
    for emb_name, spec in embedders.items():
        emb = build_embedder(spec)
        # the model that looks at each explained image: the embedder itself, or for the
        # annotations the images' own ground truth (an oracle)
        looker = AnnotationEmbedder(truth_held, names) if emb_name == "annotations" else emb
        P_held = looker.concept_matrix(images, names, progress=False)
        variants = [(similarity, "auto", similarity) for similarity in similarities]
        if split == "validation" and ALT_POOLING_SIMILARITY in similarities:
            alt = ALT_POOLING[subject.family]
            pooling = {n: (alt if n != head_layer else "auto") for n in layers}
            name = f"{ALT_POOLING_SIMILARITY} (pooling {alt})"
            variants.append((ALT_POOLING_SIMILARITY, pooling, name))
        for similarity, pooling_choice, similarity_name in variants:
            t0 = time.time()
            dissection = dissect(
                model,
                layers,
                probe,
                "shapes",
                emb,
                similarity,
                pooling=pooling_choice,
                abstain_p=None,  # thresholds are applied below, one dissection serves all
                min_match=None,
                null_repeats=NULL_REPEATS,
                cache_dir=cache,
                progress=False,
            )
            pooling = {layer: dissection.pooling(layer) for layer in layers}
            key = repr(sorted(pooling.items()))
            if key not in lift_cache:
                held_q = record(model, layers, model_view(model, held), pooling, progress=False)
                lift_cache[key] = {n: lifts(held_q.activations[n], truth_held) for n in layers}
            explanations = explain(
                model,
                images,
                dissection,
                layers=layers,
                top=TOP,
                class_names=run.class_names,
                embedder=looker,
                candidates=CANDIDATES,
                min_percentile=None,  # applied below
            )
            Z_held = dissection.concept_stats.standardise(names, P_held)
            listed = ExplanationRows.of(explanations, names)
            about = {"split": split, "embedder": emb_name, "similarity": similarity_name}
            rows += setting_rows(
                subject, about, dissection, listed, truth_held, names, Z_held,
                lift_cache[key], pooling, added,
            )  # fmt: skip
            print(
                f"  {subject.name} {split} {emb_name} {similarity_name}: {time.time() - t0:.0f} s",
                flush=True,
            )
    return rows


def measure_iou_subject(subject: Subject, runs: Path, split: str, cache: Path, quick: bool):
    """The rows of :data:`IOU_LABELS` for one model on one split (annotations embedder)."""
    from discover.dissection.core import dissect
    from discover.dissection.embedders import AnnotationEmbedder
    from discover.dissection.recording import model_view, record
    from discover.evaluation import evaluate_localization, iou_labelled
    from discover.evaluation.explanations import ExplanationRows
    from discover.explanation import default_layers, explain
    from discover.training.runs import load_run

    t0 = time.time()
    run = load_run(runs / subject.name)
    model = run.model.eval()
    layers, _, added = head_layers(model, default_layers(model))
    probe, held = worlds(split, quick)
    names = list(probe.concept_names)
    truth_held = held.concepts_table()
    images = [held[i][0] for i in range(len(held))]
    looker = AnnotationEmbedder(truth_held, names)  # the images' own ground truth
    P_held = looker.concept_matrix(images, names, progress=False)
    text = dissect(
        model, layers, probe, "shapes", "annotations", IOU_BASE_SIMILARITY, abstain_p=None,
        min_match=None, null_repeats=0, cache_dir=cache, progress=False,
    )  # fmt: skip
    located = evaluate_localization(model, text, probe, layers=list(text.maps))
    dissection = iou_labelled(text, located)
    pooling = {layer: dissection.pooling(layer) for layer in layers}
    held_q = record(model, layers, model_view(model, held), pooling, progress=False)
    lift = {n: lifts(held_q.activations[n], truth_held) for n in layers}
    explanations = explain(
        model, images, dissection, layers=layers, top=TOP, class_names=run.class_names,
        embedder=looker, candidates=CANDIDATES, min_percentile=None,
    )  # fmt: skip
    Z_held = dissection.concept_stats.standardise(names, P_held)
    listed = ExplanationRows.of(explanations, names)
    about = {"split": split, "embedder": "annotations", "similarity": IOU_LABELS}
    rows = setting_rows(
        subject, about, dissection, listed, truth_held, names, Z_held, lift, pooling, added,
        extra={"iou_layers": sorted(located.layers)},
    )  # fmt: skip
    print(f"  {subject.name} {split} {IOU_LABELS}: {time.time() - t0:.0f} s", flush=True)
    return rows


def measured_iou_rows(
    subject: Subject, runs: Path, split: str, cache: Path, quick: bool
) -> list[dict[str, Any]]:
    """:func:`measure_iou_subject`, kept in ``cache/rows/`` like :func:`measured_rows`."""
    parts = {"labels": IOU_LABELS, "base": IOU_BASE_SIMILARITY}
    return _cached_rows(
        cache, f"iou-{subject.name}-{split}", subject, runs, split, quick, parts,
        lambda: measure_iou_subject(subject, runs, split, cache, quick),
    )  # fmt: skip


def _cached_rows(
    cache: Path, stem: str, subject: Subject, runs: Path, split: str, quick: bool,
    parts: dict[str, Any], measure: Any,
) -> list[dict[str, Any]]:  # fmt: skip
    """The rows ``measure()`` gives, kept in ``cache/rows/STEM-KEY.json`` under a key of
    everything that decides them (``parts``, the model's weights file, the split, the
    settings), so an interrupted benchmark continues where it stopped."""
    weights = runs / subject.name / "best.safetensors"
    key = hashlib.sha256(
        json.dumps(
            {
                "subject": subject.name,
                "weights": hashlib.sha256(weights.read_bytes()).hexdigest(),
                "split": split,
                "quick": quick,
                "settings": [list(s) for s in SETTINGS],
                "version": ROWS_VERSION,
                **parts,
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()[:20]
    path = cache / "rows" / f"{stem}-{key}.json"
    if path.is_file():
        print(f"  {stem}: measured before ({path.name})", flush=True)
        return json.loads(path.read_text())
    rows = measure()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, rows)
    return rows


def measured_rows(
    subject: Subject,
    runs: Path,
    split: str,
    embedders: dict[str, Any],
    similarities: list[str],
    cache: Path,
    quick: bool,
) -> list[dict[str, Any]]:
    """:func:`measure_subject`, kept in ``cache/rows/`` under a key of everything that
    decides the rows (the model's weights file included), so an interrupted benchmark
    continues where it stopped."""
    from discover.dissection.embedders import build_embedder

    parts = {
        "embedders": {name: build_embedder(spec).id for name, spec in embedders.items()},
        "similarities": similarities,
        # ViTs also dissect the classifier's input (their final norm) since 3
        **({"head_input": ["norm", "fc_norm"]} if subject.family == "vit" else {}),
    }
    return _cached_rows(
        cache, f"{subject.name}-{split}", subject, runs, split, quick, parts,
        lambda: measure_subject(subject, runs, split, embedders, similarities, cache, quick),
    )  # fmt: skip


# -- summarising ---------------------------------------------------------------------------------
KEYS = [
    "explanation_precision",
    "explanation_shuffled",
    "contributions_shown",
    "winner_precision",
    "winner_shuffled",
    "winners_shown",
    "conditioned_precision",
    "control_random_units",
    "control_random_concepts",
    "conditioned_winner_precision",
    "winner_control_random_units",
    "unit_label_precision",
    "shown_label_precision",
    "label_is_best",
    "abstained",
    "abstained_detecting",
    "detecting",
    "chance",
]
Setting = tuple  # (abstain_p, min_match, min_percentile)
Config = tuple  # (split, embedder, similarity, *Setting)
PAPER: Setting = (None, None, None)  # every unit and every listed row labelled


def _config(row: dict[str, Any]) -> Config:
    return (
        row["split"],
        row["embedder"],
        row["similarity"],
        row["abstain_p"],
        row["min_match"],
        row["min_percentile"],
    )


def config_means(rows: list[dict[str, Any]]) -> dict[Config, dict[str, Any]]:
    """Per configuration: each key's mean over the models (a model's value is the mean over
    its layers that have the key), and the per-model values (for paired comparisons)."""
    per_model: dict[tuple, dict[str, list[float]]] = {}
    for r in rows:
        entry = per_model.setdefault((*_config(r), r["model"], r["U"], r["seed"]), {})
        for key in KEYS:
            if r.get(key) is not None:
                entry.setdefault(key, []).append(r[key])
    out: dict[Config, dict[str, Any]] = {}
    for k, values in per_model.items():
        entry = out.setdefault(k[:6], {"models": {}})
        for key, vals in values.items():
            entry["models"].setdefault(key, {})[k[6:]] = sum(vals) / len(vals)
    for entry in out.values():
        for key in KEYS:
            vals = list(entry["models"].get(key, {}).values())
            entry[key] = sum(vals) / len(vals) if vals else None
    return out


OBJECTIVE = ("explanation_precision", "unit_label_precision")
OBJECTIVE_HISTORY = (
    "The first full run (git 1e01180, 11 models) also averaged `shown_label_precision` into "
    "the objective. That favoured abstaining on most units: it chose `wpmi` with match >= 0.4 "
    "for the annotations, whose explanation precision was 63.8 % on validation and 63.3 % on "
    "test, below the 70 % target. The objective was then reduced to the two measures the "
    "targets are set on. This change was made after that run's test figures had been seen; "
    "the shown-label precision of every setting is still reported. A second full run (git "
    "62ec7f1, 12 models) added the ViTs' contribution tables (their final norm, dissected); "
    "with the same rule the defaults became `jsd` for both embedders."
)


def _score(entry: dict[str, Any]) -> float | None:
    """The validation objective, or ``None`` when a constraint fails."""
    parts = [entry.get(key) for key in OBJECTIVE]
    abstained, shown = entry.get("abstained_detecting"), entry.get("contributions_shown")
    if any(p is None for p in parts) or abstained is None or shown is None:
        return None
    if abstained > MAX_ABSTAINED or shown < MIN_SHOWN:
        return None
    return sum(parts) / len(parts)


def tune(means: dict[Config, dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Per (embedder, similarity): the setting with the best validation objective."""
    tuned: dict[tuple[str, str], dict[str, Any]] = {}
    for (split, emb, sim, *setting), entry in means.items():
        score = _score(entry) if split == "validation" else None
        if score is None:
            continue
        best = tuned.get((emb, sim))
        if best is None or score > best["score"] + 1e-12:
            tuned[(emb, sim)] = {"setting": tuple(setting), "score": score}
    return tuned


def choose_defaults(tuned: dict[tuple[str, str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per embedder: the similarity (with its tuned setting) of the best validation score."""
    chosen: dict[str, dict[str, Any]] = {}
    for (emb, sim), t in sorted(tuned.items()):
        if sim not in SIMILARITIES:  # a pooling variant: reported, not a candidate default
            continue
        if emb not in chosen or t["score"] > chosen[emb]["score"] + 1e-12:
            chosen[emb] = {"similarity": sim, **t}
    return chosen


def paired(
    means: dict[Config, dict[str, Any]],
    a: Config,
    b: Config,
    key: str,
    family: str | None = None,
) -> tuple[float, float, int] | None:
    """Mean and 95 % half-width (t) of ``key``'s per-model difference a - b, and its n."""
    ma = means.get(a, {}).get("models", {}).get(key, {})
    mb = means.get(b, {}).get("models", {}).get(key, {})
    common = [m for m in sorted(set(ma) & set(mb)) if family is None or m[0] == family]
    diffs = [ma[m] - mb[m] for m in common]
    if len(diffs) < 2:
        return None
    return statistics.mean(diffs), ci95_half_width(diffs), len(diffs)


def _describe(setting: Setting) -> str:
    p, r, q = setting
    rules = [
        f"p_null <= {p}" if p is not None else None,
        f"match >= {r}" if r is not None else None,
        f"listed units from their probe percentile {q}" if q is not None else None,
    ]
    return "; ".join(rule for rule in rules if rule) or "labels every unit"


def _figures(e: dict[str, Any]) -> list[str]:
    return [
        f"{percent(e['explanation_precision'])} ({percent(e['explanation_shuffled'])}; "
        f"{percent(e['contributions_shown'])})",
        f"{percent(e['winner_precision'])} ({percent(e['winner_shuffled'])})",
        f"{percent(e['conditioned_precision'])} ({percent(e['control_random_units'])} / "
        f"{percent(e['control_random_concepts'])})",
        percent(e["unit_label_precision"]),
        percent(e["shown_label_precision"]),
        percent(e["label_is_best"]),
        f"{percent(e['abstained'])} ({percent(e['abstained_detecting'])})",
    ]


FIGURE_HEADER = [
    "explanation precision (shuffled; rows labelled)",
    "winner precision (shuffled)",
    "conditioned (random units / random concepts)",
    "unit label precision (detecting units)",
    "shown-label precision (all labelled units)",
    "label = best",
    "units abstained (detecting)",
]


def _what_reaches(means: dict[Config, dict[str, Any]], emb: str, key: str, bar: float) -> list[str]:
    """For a missed target: the validation setting that reaches it while labelling the most
    contribution-table rows (abstention rule kept), and its test figure (reported only)."""
    reaching = [
        (entry.get("contributions_shown") or 0, k, entry)
        for k, entry in means.items()
        if k[0] == "validation"
        and k[1] == emb
        and k[2] in SIMILARITIES
        and (entry.get(key) or 0) >= bar
        and (entry.get("abstained_detecting") or 0) <= MAX_ABSTAINED
    ]
    if not reaching:
        return [f"  - no setting tried reaches {100 * bar:.0f} % on the validation split"]
    shown, k, entry = max(reaching, key=lambda t: (t[0], t[1][2]))
    test = means.get(("test", *k[1:]), {})
    return [
        f"  - what reaches it: `{k[2]}` with {_describe(k[3:])} reaches "
        f"{percent(entry.get(key))} % on validation (test {percent(test.get(key))} %), but labels "
        f"only {percent(shown)} % of the contribution-table rows on validation (test "
        f"{percent(test.get('contributions_shown'))} %), below the {int(100 * MIN_SHOWN)} % the "
        "defaults must keep; the other rows are shown unlabelled ('weak here' or abstained)."
    ]


def _clip_lines(training: dict[str, Any] | None) -> list[str]:
    """The Shapes CLIP's recipe and zero-shot accuracy per factor, against chance."""
    if not training:
        return []
    cfg = training["config"]
    per_factor = ", ".join(
        f"{f} {100 * a:.1f} % (chance {100 * training['chance'][f]:.0f} %)"
        for f, a in training["zero_shot"].items()
    )
    return [
        f"- **Shapes CLIP:** `{training['command']}` (open_clip `{cfg['arch']}`, "
        f"{cfg['images']:,} captioned {cfg['image_size']} px images, {training['epochs']} "
        f"epochs, {training['seconds'] / 60:.0f} min on this machine's CPU, one thread, "
        f"sharing it with other jobs). Zero-shot on {cfg['eval_images']:,} held-out images: "
        f"{per_factor}. Learning curve: `{training['curve']}`."
    ]


def write_report(
    state: dict[str, Any], rows: list[dict[str, Any]], out: Path, load_end: str | None = None
) -> None:
    """``label_quality.json``, ``.md`` and ``.png`` from the measured rows; ``load_end``: the
    load average now, when they were measured by this invocation."""
    means = config_means(rows)
    tuned = tune(means)
    chosen = choose_defaults(tuned)
    state["tuned"] = {f"{e}|{s}": t for (e, s), t in tuned.items()}
    state["chosen"] = chosen
    chance = next(iter(means.values()))["chance"]

    def at(split: str, emb: str, sim: str, setting: Setting) -> dict[str, Any] | None:
        return means.get((split, emb, sim, *setting))

    lines = [
        *report_header(
            "Label quality end to end (issue 21)",
            state,
            took=f"; run took {state['minutes']:.0f} min (the rows of a model and split "
            "measured by an earlier run with the same key are read from `--cache`; measuring "
            "one takes about 2-3 min on one core)",
            load_end=load_end,
        ),
        "",
        "Are the words a user reads true? Produced by `benchmarks/label_quality.py`; the",
        "definitions are in its docstring.",
        "",
        f"- **Models** ({len(state['subjects'])}): {', '.join(state['subjects'])}",
        f"- **Embedders:** `annotations` (ground truth) and the Shapes CLIP `{state['clip']}`"
        f" (zero-shot on held-out images: {state['clip_zero_shot']})",
        *_clip_lines(state.get("clip_training")),
        f"- **Probe / held-out images:** {state['probe_n']} / {state['held_n']} per split "
        "(Shapes `val` = validation, `test` = test; seeds 0 / 1). Chance: "
        f"{percent(chance)} % (6 of 46 concepts per image).",
        f"- **Settings tried** (every dissection, validation split): a unit unlabelled when "
        f"p_null > {' or '.join(str(p) for p in ABSTAIN_P)}, when its match < "
        f"{' or '.join(str(r) for r in MIN_MATCH)}; a listed unit unlabelled below its probe "
        f"percentile {' or '.join(str(q) for q in MIN_PERCENTILE)}. Objective: the mean of "
        f"{', '.join(OBJECTIVE)}, among settings that abstain on at most "
        f"{int(100 * MAX_ABSTAINED)} % of the units that detect a concept and still label at "
        f"least {int(100 * MIN_SHOWN)} % of the contribution-table rows. {OBJECTIVE_HISTORY}",
        "",
        "## Chosen defaults (validation split)",
        "",
    ]
    for emb, c in chosen.items():
        lines.append(
            f"- **{emb}** (embedder kind `{EMBEDDER_KIND[emb]}`): similarity "
            f"`{c['similarity']}`, {_describe(c['setting'])} (validation objective "
            f"{100 * c['score']:.1f})."
        )
    lines += [
        "",
        "## Test split: every similarity at its tuned setting, and the paper's soft WPMI",
        "",
        "Means over the models; chance is the same for every row. The paper's setting labels "
        "every unit and every listed row.",
        "",
    ]
    header = ["embedder", "similarity", "setting", *FIGURE_HEADER]
    table = []
    for emb in sorted({k[1] for k in means}):
        for sim in (*SIMILARITIES, IOU_LABELS):
            # IoU labels leave non-detectors unlabelled by design: shown untuned when no
            # setting meets the constraints
            t = tuned.get((emb, sim)) or ({"setting": PAPER} if sim == IOU_LABELS else None)
            e = at("test", emb, sim, t["setting"]) if t else None
            if e:
                mark = " **(default)**" if chosen.get(emb, {}).get("similarity") == sim else ""
                setting = _describe(t["setting"])
                if sim == IOU_LABELS and t["setting"] == PAPER:
                    setting = "detectors (IoU > 0.04) labelled, every other unit unlabelled"
                table.append([emb, f"{sim}{mark}", setting, *_figures(e)])
        paper = at("test", emb, "soft_wpmi", PAPER)
        if paper:
            table.append([emb, "soft_wpmi (paper)", _describe(PAPER), *_figures(paper)])
    lines += markdown_table(header, table)
    lines += ["", "## Targets (test split, chosen defaults)", ""]
    for key, by_emb in TARGETS.items():
        for emb, bar in by_emb.items():
            c = chosen.get(emb)
            e = at("test", emb, c["similarity"], c["setting"]) if c else None
            value = e.get(key) if e else None
            verdict = (
                "n/a"
                if value is None
                else ("met" if value >= bar else f"missed by {100 * (bar - value):.1f} points")
            )
            extra = ""
            if key == "conditioned_precision" and e and value is not None:
                margin = value - (e.get("control_random_units") or 0)
                extra = f"; {100 * margin:+.1f} points over the random-units control (target +15)"
            if key == "unit_label_precision" and e:
                extra = (
                    f"; abstention among detecting units {percent(e.get('abstained_detecting'))} % "
                    "(target <= 30)"
                )
            lines.append(
                f"- {key}, labels from {emb}: {percent(value)} % (target {100 * bar:.0f} %): "
                f"**{verdict}**{extra}"
            )
            if value is not None and value < bar:
                lines += _what_reaches(means, emb, key, bar)
    lines += [
        "",
        "## Paired differences over models (test): chosen default minus soft WPMI",
        "",
        "Mean and 95 % t-interval of the per-model difference (each model is one trained seed).",
        "",
    ]
    for emb, c in chosen.items():
        mine = ("test", emb, c["similarity"], *c["setting"])
        others = [("the paper's soft WPMI", ("test", emb, "soft_wpmi", *PAPER))]
        t = tuned.get((emb, "soft_wpmi"))
        if t:
            others.append(
                ("soft WPMI at its tuned setting", ("test", emb, "soft_wpmi", *t["setting"]))
            )
        for name, other in others:
            for key in ("explanation_precision", "winner_precision", "unit_label_precision"):
                d = paired(means, mine, other, key)
                if d:
                    lines.append(
                        f"- {emb}, vs {name}, {key}: {100 * d[0]:+.1f} ± {100 * d[1]:.1f} "
                        f"points (n = {d[2]})"
                    )
    lines += [
        "",
        f"## Pooling (validation split, `{ALT_POOLING_SIMILARITY}` at its tuned setting)",
        "",
        "`auto` pools conv maps by their mean and ViT tokens by the class token; the variant "
        f"pools hidden layers by {', '.join(f'{v} ({k})' for k, v in ALT_POOLING.items())}, "
        "except the layer that feeds the classifier. Paired over models.",
        "",
    ]
    for emb in sorted({k[1] for k in means}):
        for family, alt in ALT_POOLING.items():
            variant = f"{ALT_POOLING_SIMILARITY} (pooling {alt})"
            tb = tuned.get((emb, ALT_POOLING_SIMILARITY))
            if not tb:
                continue
            a = ("validation", emb, variant, *tb["setting"])
            b = ("validation", emb, ALT_POOLING_SIMILARITY, *tb["setting"])
            for key in ("winner_precision", "unit_label_precision", "shown_label_precision"):
                d = paired(means, a, b, key, family)
                if d:
                    lines.append(
                        f"- {emb}, {family}, {key}: {alt} minus auto {100 * d[0]:+.1f} ± "
                        f"{100 * d[1]:.1f} points (n = {d[2]})"
                    )
    lines += ["", "## Validation grid of the chosen similarities", ""]
    header = ["embedder", "similarity", "setting", *FIGURE_HEADER]
    table = []
    for emb, c in chosen.items():
        for setting in SETTINGS:
            e = at("validation", emb, c["similarity"], setting)
            if e:
                table.append([emb, c["similarity"], _describe(setting), *_figures(e)])
    lines += markdown_table(header, table)
    lines += ["", "## Test split by family and U (chosen defaults)", ""]
    header = ["embedder", "model", "U", "seeds", *FIGURE_HEADER]
    table = []
    for emb, c in chosen.items():
        config = ("test", emb, c["similarity"], *c["setting"])
        subset = [r for r in rows if _config(r) == config]
        for family in sorted({r["model"] for r in subset}):
            for U in sorted({r["U"] for r in subset if r["model"] == family}):
                group = [r for r in subset if r["model"] == family and r["U"] == U]
                e = next(iter(config_means(group).values()))
                seeds = len({r["seed"] for r in group})
                table.append([emb, family, U, seeds, *_figures(e)])
    lines += markdown_table(header, table)
    (out / "label_quality.md").write_text("\n".join(lines) + "\n")
    kept = []
    for r in rows:
        t = tuned.get((r["embedder"], r["similarity"]))
        setting = _config(r)[3:]
        if t and setting == t["setting"]:
            kept.append({**r, "setting": "tuned"})
        if r["similarity"] in ("soft_wpmi", IOU_LABELS) and setting == PAPER:
            kept.append({**r, "setting": "paper"})  # IoU labels: every detector labelled
    state["rows"] = kept
    state["grid"] = [
        {
            "split": k[0],
            "embedder": k[1],
            "similarity": k[2],
            "abstain_p": k[3],
            "min_match": k[4],
            "min_percentile": k[5],
            **{key: e[key] for key in KEYS},
        }
        for k, e in means.items()
    ]
    write_json(out / "label_quality.json", state)
    plot(means, tuned, chosen, out / "label_quality.png")


def plot(
    means: dict[Config, dict[str, Any]],
    tuned: dict[tuple[str, str], dict[str, Any]],
    chosen: dict[str, Any],
    path: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    embs = sorted({k[1] for k in means})
    fig, axes = plt.subplots(1, len(embs), figsize=(6.5 * len(embs), 4.2), squeeze=False)
    bars = [
        ("explanation_precision", "explanation (global labels)"),
        ("winner_precision", "winners (global labels)"),
        ("conditioned_precision", "explanation (conditioned)"),
        ("unit_label_precision", "unit label"),
    ]
    for ax, emb in zip(axes[0], embs, strict=True):
        columns = []
        for sim in SIMILARITIES:
            t = tuned.get((emb, sim))
            if t and ("test", emb, sim, *t["setting"]) in means:
                columns.append((sim, means[("test", emb, sim, *t["setting"])]))
        if ("test", emb, "soft_wpmi", *PAPER) in means:
            columns.append(("soft_wpmi\n(paper)", means[("test", emb, "soft_wpmi", *PAPER)]))
        xs = range(len(columns))
        for offset, (key, label) in enumerate(bars):
            values = [100 * (e.get(key) or 0) for _, e in columns]
            ax.bar([x + 0.2 * offset - 0.3 for x in xs], values, width=0.2, label=label)
        ax.axhline(100 * 6 / 46, color="k", ls="--", lw=1, label="chance")
        ax.set_xticks(list(xs), [name for name, _ in columns], rotation=20, fontsize=8)
        default = chosen.get(emb, {}).get("similarity")
        ax.set(
            ylabel="precision (%)",
            ylim=(0, 100),
            title=f"labels from {emb} (test split; default {default})",
        )
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default="benchmarks/runs/converged")
    parser.add_argument("--families", nargs="+", default=["resnet", "vit"])
    parser.add_argument("--U", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--similarities", nargs="+", default=list(SIMILARITIES))
    parser.add_argument(
        "--clip", help="an open_clip embedder spec (default: train or find the Shapes CLIP)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="small probe and held-out sets, plumbing only"
    )
    parser.add_argument("--no-iou", action="store_true", help=f"leave out the {IOU_LABELS} labels")
    parser.add_argument("--jobs", type=int, default=2, help="models measured in parallel")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per job")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--cache", default="benchmarks/runs/label-quality-cache")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    meta = provenance(argv, threads=args.threads, jobs=args.jobs, script=__file__)
    t0 = time.time()
    runs, out = Path(args.runs), Path(args.out)
    subjects = find_subjects(runs, args.families, args.U, args.seeds)
    if not subjects:
        parser.error(f"--runs {runs}: no finished converged Shapes runs (record.json) found")
    out.mkdir(parents=True, exist_ok=True)
    clip_training: dict[str, Any] | None = None
    if args.clip:
        clip_spec, zero_shot = args.clip, "not measured here"
    else:
        from discover.training.clip import train_shapes_clip

        clip = train_shapes_clip()
        clip_spec = clip.spec
        zero_shot = ", ".join(f"{f} {100 * a:.1f} %" for f, a in clip.zero_shot.items())
        clip_training = {
            "command": "discover train-clip",
            "config": dataclasses.asdict(clip.config),
            "zero_shot": clip.zero_shot,
            "chance": clip.chance,
            "epochs": len(clip.history),
            "seconds": clip.seconds,
            "key": clip.key,
            "curve": "label_quality_clip_curve.png",
        }
        shutil.copyfile(clip.folder / "curve.png", out / "label_quality_clip_curve.png")
    embedders = {"annotations": "annotations", "clip": clip_spec}
    jobs = [(subject, split) for subject in subjects for split in SPLITS]
    common = (embedders, args.similarities, Path(args.cache), args.quick)
    rows: list[dict[str, Any]] = []
    if args.jobs == 1:  # in this process
        for subject, split in jobs:
            rows += measured_rows(subject, runs, split, *common)
            if not args.no_iou:
                rows += measured_iou_rows(subject, runs, split, Path(args.cache), args.quick)
    else:
        with process_pool(args.jobs, args.threads) as pool:
            futures = [pool.submit(measured_rows, s, runs, split, *common) for s, split in jobs]
            if not args.no_iou:
                futures += [
                    pool.submit(measured_iou_rows, s, runs, split, Path(args.cache), args.quick)
                    for s, split in jobs
                ]
            for future in futures:
                rows += future.result()
    probe, held = worlds("test", args.quick)
    state = {
        **meta,
        "minutes": (time.time() - t0) / 60,
        "subjects": [s.name for s in subjects],
        "clip": portable(clip_spec),
        "clip_zero_shot": zero_shot,
        "clip_training": clip_training,
        "probe_n": len(probe),
        "held_n": len(held),
        "abstain_p": list(ABSTAIN_P),
        "min_match": list(MIN_MATCH),
        "min_percentile": list(MIN_PERCENTILE),
        "lift_bar": LIFT_BAR,
    }
    write_report(state, rows, out, load_average(1, ", "))
    print(f"written: {out / 'label_quality.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
