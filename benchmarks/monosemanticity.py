"""Claim 3 and the SAE comparison: are a CVN's units better described than its dense twin's,
and than a TopK SAE's latents at the same sparsity? (issues 14 and 24)

For each family (small ResNet: ``layer3.0.act2``, width 64, after the last residual addition;
small ViT: ``blocks.5.mlp.act``, width 192, the last MLP) and each seed of the converged
accuracy study on Shapes (ground-truth annotations as ``P``), the subjects are:

* **dense**: the dense twin's layer, as trained;
* **lwta U**: the CVN's LWTA layer at U = 2, 4, 8 (the ``anneal`` runs; one winner of U fires:
  active fraction 1/U; deterministic winners);
* **sae E×, U** on the **dense** twin's layer and on the **CVN**'s own LWTA layer at U: a
  TopK SAE with ``E x width`` latents and ``k = E x width / U`` (the same active fraction 1/U
  of the dictionary), for E in {1, 4} and U in {4, 8}, trained on per-position activations
  of 4,000 training images (16 positions each).

Every subject is dissected twice on the same probe (2,000 Shapes ``test`` images), with
labels chosen by ``corr``, a similarity that passes the missing- and extra-label sanity
tests (``similarity-sanity.md``), and by ``soft_wpmi``, the paper's choice, which fails them
(reported beside it). Scores (per subject, per labelling):

* **label AUPRC / F1 / IoU**: the unit as a detector of its label's ground-truth concept
  (per unit, averaged; F1 and IoU at the threshold fitted on the probe's fit half), and
  **label = best**: the share of units whose label is the concept they detect best;
* **simulation r**: the mean held-out correlation of each unit with its label's column of
  ``P`` (labels chosen on the other half of the probe);
* **monosemantic**: the share of units whose best ground-truth AUPRC is above 0.75, and the
  **mean best AUPRC** (label-free);
* **above chance** (``corr`` labels): the share of labels whose significance beats 16
  shuffled-image draws (``p_null <= 0.001``), and their median ``z``;
* **dead**: units or latents never active on the probe (LWTA: never the winner);
* **FVE**: the SAE's held-out fraction of variance explained;
* **accuracy cost**, measured the same way for every subject: top-1 on the *whole* test
  split under deterministic winners (argmax) minus the dense twin's, in points. LWTA: the
  CVN as trained; SAE: the model it was fitted to with the SAE's reconstruction in place of
  the layer (the dense twin, or the CVN, whose own cost is then included); *splice cost*:
  the SAE's part alone.

Unique Network-Dissection detectors per subject are measured by ``localization.py`` and
joined by ``evidence.py``. Verdicts are drawn there too, from paired differences over seeds
(each CVN against the dense twin of its own seed; each LWTA layer against the SAE on the
same seed).

Run (after ``benchmarks/accuracy.py --setting converged``; resumable subject by subject,
results written after each):
    python benchmarks/monosemanticity.py --runs benchmarks/runs/converged
    python benchmarks/monosemanticity.py --runs ... --render     # rebuild the .md and .png
Results: ``benchmarks/results/monosemanticity.md``, ``.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from common import (
    interval,
    load_average,
    markdown_table,
    mean_of,
    mean_std,
    portable,
    process_pool,
    provenance,
    report_header,
    run_identity,
    write_json,
)

LAYERS = {"resnet": "layer3.0.act2", "vit": "blocks.5.mlp.act"}
CLAIM_U = (2, 4, 8)  # the CVNs claim 3 compares with their dense twins
MATCHED_U = (4, 8)  # where SAEs are fitted at the same active fraction
EXPANSIONS = (1, 4)
SAE_SOURCES = ("dense", "cvn")  # the layer an SAE is fitted to
SEEDS = (0, 1, 2, 3, 4)
SIMILARITIES = ("corr", "soft_wpmi")  # corr passes the sanity tests; soft_wpmi: the paper's
DATASETS = ("shapes", "fashion-mnist")
CONCEPTS = {"shapes": "shapes", "fashion-mnist": "3k"}
EMBEDDER_LABEL = {
    "shapes": "Shapes (annotations)",
    "fashion-mnist": "Fashion-MNIST (ConSE, 3k words)",
}
PROBE_N = {"shapes": 2000, "fashion-mnist": 1000}
SAE_IMAGES = 4000
SAE_EPOCHS = 20
NULL_REPEATS = 16
SIMULATION_REPEATS = 20
ACTIVE_EPS = 1e-6


@dataclass(frozen=True)
class Subject:
    """One dissected layer: ``kind`` is ``dense``, ``lwta`` or ``sae`` (an SAE on the layer
    of ``source``: the dense twin or the CVN at ``U``)."""

    dataset: str
    family: str
    seed: int
    kind: str
    U: int | None = None
    expansion: int | None = None
    source: str | None = None

    @property
    def name(self) -> str:
        if self.kind == "sae":
            tail = f"sae{self.expansion}x-u{self.U}" + ("-cvn" if self.source == "cvn" else "")
        else:
            tail = {"dense": "dense", "lwta": f"lwta-u{self.U}"}[self.kind]
        return f"{self.dataset}-{self.family}-s{self.seed}-{tail}"

    def run(self, runs: Path) -> Path:
        """The training run whose model carries the layer (an SAE: the model it is fitted to)."""
        if self.kind == "lwta" or (self.kind == "sae" and self.source == "cvn"):
            return runs / f"{self.dataset}-{self.family}-u{self.U}-anneal-s{self.seed}"
        return runs / f"{self.dataset}-{self.family}-u1-s{self.seed}"

    def twin(self, runs: Path) -> Path:
        """The dense twin of the same seed (every accuracy cost is measured against it)."""
        return runs / f"{self.dataset}-{self.family}-u1-s{self.seed}"


def finished(run: Path) -> bool:
    return (run / "record.json").is_file()


def find_subjects(
    runs: Path, datasets: list[str], families: list[str], Us: list[int], seeds: list[int],
    sae_U: list[int], sources: list[str],
) -> tuple[list[Subject], list[str]]:  # fmt: skip
    """Every subject whose runs have finished, and a note for each one left out."""
    subjects, missing = [], []
    for dataset in datasets:
        for family in families:
            for seed in seeds:
                dense = Subject(dataset, family, seed, "dense")
                if not finished(dense.run(runs)):
                    missing.append(f"{dense.run(runs).name} (dense twin) not finished")
                    continue
                subjects.append(dense)
                for U in sorted(set(Us) | set(sae_U)):
                    lwta = Subject(dataset, family, seed, "lwta", U)
                    if not finished(lwta.run(runs)):
                        missing.append(f"{lwta.run(runs).name} not trained")
                        continue
                    subjects.append(lwta)
                    if U in sae_U:
                        subjects += [
                            Subject(dataset, family, seed, "sae", U, e, source)
                            for source in sources
                            for e in EXPANSIONS
                        ]
    return subjects, missing


# -- data -------------------------------------------------------------------------------------
def probe_set(dataset: str, n: int, split: str = "probe") -> torch.utils.data.Dataset:
    """The dissection probe (``probe``), the SAE's training images (``train``) or the
    replacement-accuracy images (``test``)."""
    from discover.data import ShapesWorld, build_dataset

    if dataset == "shapes":
        shapes_split = {"probe": "test", "train": "train", "test": "test"}[split]
        return ShapesWorld(n=n, image_size=32, split=shapes_split)
    source = build_dataset("fashion-mnist", "train" if split == "train" else "test")
    start = 1000 if split == "probe" else 0  # the probe: test images 1000 .. 1000 + n
    images = source.data[start : start + n].unsqueeze(1).clone()
    return torch.utils.data.TensorDataset(images, source.targets[start : start + n].clone())


def ground_truth(dataset: str, probe: Any) -> tuple[torch.Tensor, list[str]]:
    """Binary annotations of the probe: Shapes' concept table, Fashion-MNIST's classes."""
    from discover.data import FASHION_MNIST_CLASSES

    if dataset == "shapes":
        return probe.concepts_table(), list(probe.concept_names)
    targets = probe.tensors[1]
    return torch.nn.functional.one_hot(targets, 10).float(), list(FASHION_MNIST_CLASSES)


def embedder_of(dataset: str) -> Any:
    from discover.dissection import AnnotationEmbedder

    return AnnotationEmbedder() if dataset == "shapes" else "conse"


def layer_width(model: torch.nn.Module, layer: str, image: torch.Tensor) -> int:
    """Channels (conv) or features (tokens) of ``layer``'s output, from one forward pass."""
    module = dict(model.named_modules())[layer]
    seen: list[torch.Size] = []
    handle = module.register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    try:
        with torch.no_grad():
            model.eval()(image.unsqueeze(0))
    finally:
        handle.remove()
    shape = seen[0]
    return shape[1] if len(shape) == 4 else shape[-1]


# -- one subject ------------------------------------------------------------------------------
def test_loader(run: Any, batch_size: int = 512) -> Any:
    """The run's whole test split through its evaluation transform (as the accuracy study
    evaluates it)."""
    from torch.utils.data import DataLoader

    from discover.data import build_dataset, build_transforms

    test = build_dataset(
        run.dataset,
        "test",
        root=run.train.data_root,
        transform=build_transforms(run.data, train=False),
        **run.train.dataset_kwargs,
    )
    return DataLoader(test, batch_size=batch_size)


def fit_sae(subject: Subject, model: torch.nn.Module, layer: str, probe: Any, workdir: Path):
    """Train (or resume) the subject's TopK SAE; returns it with its size."""
    from discover.dissection import model_view, train_sae

    width = layer_width(model, layer, model_view(model, probe)[0][0])
    latents = subject.expansion * width
    k = latents // subject.U
    folder = workdir / "sae" / subject.name
    sae = train_sae(
        model,
        layer,
        probe_set(subject.dataset, SAE_IMAGES, "train"),
        k,
        subject.expansion,
        out=folder,
        epochs=SAE_EPOCHS,
        seed=subject.seed,
        resume=(folder / "train_state.pt").is_file(),
        progress=False,
    )
    return sae, {"width": width, "latents": latents, "k": k, "active_fraction": k / latents}


def measure(subject: Subject, runs: Path, workdir: Path, cache: Path) -> dict[str, Any]:
    """Dissect and score one subject (runs in a worker process)."""
    from discover import load_run
    from discover.dissection import dissect, sae_replacement_accuracy
    from discover.evaluation import evaluate_simulation, groundtruth_dissection

    t0 = time.time()
    run = load_run(subject.run(runs))
    model, layer = run.model.eval(), LAYERS[subject.family]
    probe = probe_set(subject.dataset, PROBE_N[subject.dataset])
    row: dict[str, Any] = {**asdict(subject), "name": subject.name, "layer": layer}
    twin = json.loads((subject.twin(runs) / "record.json").read_text())["top1_argmax"]
    sae = None
    if subject.kind == "sae":
        sae, size = fit_sae(subject, model, layer, probe, workdir)
        replaced = sae_replacement_accuracy(model, layer, sae, test_loader(run), policy="argmax")
        own = json.loads((subject.run(runs) / "record.json").read_text())["top1_argmax"]
        if abs(replaced.original_accuracy - own) > 0.002:  # the same test split and policy
            raise RuntimeError(
                f"{subject.name}: unspliced top-1 {replaced.original_accuracy} differs from the "
                f"accuracy study's {own}: not the same test split or policy"
            )
        row.update(
            size,
            fve=sae.config.metrics["fve"],
            accuracy=replaced.accuracy,
            accuracy_cost=replaced.accuracy - twin,
            splice_cost=replaced.accuracy - replaced.original_accuracy,
        )
    else:
        record = json.loads((subject.run(runs) / "record.json").read_text())
        row["accuracy"] = record["top1_argmax"]
        if subject.kind == "lwta":
            row["accuracy_cost"] = record["top1_argmax"] - twin
            row["active_fraction"] = 1 / subject.U
        else:  # the dense layer's own share of active outputs per position
            row["active_fraction"] = dense_active_fraction(model, layer, probe)
    annotations, names = ground_truth(subject.dataset, probe)
    for i, similarity in enumerate(SIMILARITIES):
        dissection = dissect(
            model,
            [layer],
            probe,
            CONCEPTS[subject.dataset],
            embedder_of(subject.dataset),
            similarity=similarity,
            policy="argmax",
            sae=sae,
            seed=subject.seed,
            cache_dir=cache,
            progress=False,
            null_repeats=NULL_REPEATS if i == 0 else 0,
        )
        gt = groundtruth_dissection(dissection, annotations, names).layers[layer].summary()
        simulation = evaluate_simulation(
            dissection,
            probe,
            embedder_of(subject.dataset),
            similarity=similarity,
            cache_dir=cache,
            seed=subject.seed,
            null_repeats=SIMULATION_REPEATS,
            progress=False,
        )[layer]
        shapes = subject.dataset == "shapes"  # labels are scored only where P is ground truth
        row.update(
            {
                f"label_is_best_{similarity}": gt["label_is_best"] if shapes else None,
                f"mean_label_auprc_{similarity}": gt["mean_label_auprc"] if shapes else None,
                f"mean_label_f1_{similarity}": gt["mean_label_f1"] if shapes else None,
                f"mean_label_iou_{similarity}": gt["mean_label_iou"] if shapes else None,
                f"simulation_{similarity}": simulation.metrics["correlation"].value,
            }
        )
        if i == 0:
            units = dissection.layer(layer)
            Q = dissection.probe_activations(layer)
            zs = [u.z for u in units if u.z is not None]
            row.update(
                units=len(units),
                dead=int((Q.abs().amax(dim=0) <= ACTIVE_EPS).sum()),
                monosemantic=gt["monosemantic"],
                mean_best_auprc=gt["mean_best_auprc"],
                above_chance=sum(bool(u.above_chance) for u in units) / len(units),
                median_z=statistics.median(zs) if zs else None,
            )
    row["seconds"] = time.time() - t0
    row["run_identity"] = {k: run_identity(r) for k, r in _runs_of(subject, runs).items()}
    return row


def _runs_of(subject: Subject, runs: Path) -> dict[str, Path]:
    """The training runs a subject's figures depend on."""
    return {"run": subject.run(runs), "twin": subject.twin(runs)}


@torch.no_grad()
def dense_active_fraction(model: torch.nn.Module, layer: str, probe: Any, n: int = 256) -> float:
    """Share of the layer's outputs (every position) with ``|a| > 1e-6`` on ``n`` probe images."""
    from torch.utils.data import DataLoader, Subset

    from discover.dissection import model_view

    module = dict(model.named_modules())[layer]
    counts = [0, 0]

    def hook(_module, _inputs, out):
        counts[0] += int((out.abs() > ACTIVE_EPS).sum())
        counts[1] += out.numel()

    handle = module.register_forward_hook(hook)
    try:
        view = model_view(model, Subset(probe, range(min(n, len(probe)))))
        for images, *_ in DataLoader(view, batch_size=128):
            model(images)
    finally:
        handle.remove()
    return counts[0] / counts[1]


# -- report -----------------------------------------------------------------------------------
FIGURES = (
    ("label_is_best_corr", "label = best (corr)", 100, 1),
    ("mean_label_auprc_corr", "label AUPRC (corr)", 1, 3),
    ("mean_label_f1_corr", "label F1 (corr)", 1, 3),
    ("mean_label_iou_corr", "label IoU (corr)", 1, 3),
    ("simulation_corr", "simulation r (corr)", 1, 3),
    ("mean_label_auprc_soft_wpmi", "label AUPRC (soft-WPMI)", 1, 3),
    ("simulation_soft_wpmi", "simulation r (soft-WPMI)", 1, 3),
    ("monosemantic", "monosemantic", 100, 1),
    ("mean_best_auprc", "best AUPRC", 1, 3),
    ("above_chance", "above chance", 100, 1),
    ("dead_share", "dead", 100, 1),
    ("fve", "FVE", 1, 3),
    ("accuracy_cost", "accuracy cost (points)", 100, 2),
    ("splice_cost", "splice cost (points)", 100, 2),
)


def _kind_label(row: dict[str, Any]) -> str:
    if row["kind"] == "sae":
        on = "CVN" if row.get("source") == "cvn" else "dense"
        return f"TopK SAE {row['expansion']}x on {on}"
    return {"dense": "dense", "lwta": "LWTA"}[row["kind"]]


def _group_key(row: dict[str, Any]) -> tuple:
    order = {"dense": 0, "lwta": 1, "sae": 2}
    return (
        row["dataset"], row["family"], row["U"] or 0, order[row["kind"]],
        row.get("source") or "", row["expansion"] or 0,
    )  # fmt: skip


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (data set, family, kind, U, source, expansion): figures over seeds, and
    per figure the values by seed (``by_seed``) for paired comparisons."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        row = {**row, "dead_share": row["dead"] / row["units"]}
        key = (row["dataset"], row["family"], row["kind"], row["U"], row.get("source"),
               row["expansion"])  # fmt: skip
        groups.setdefault(key, []).append(row)
    out = []
    for (dataset, family, kind, U, source, expansion), members in groups.items():
        members.sort(key=lambda m: m["seed"])
        entry: dict[str, Any] = {
            "dataset": dataset, "family": family, "kind": kind, "U": U, "source": source,
            "expansion": expansion, "seeds": [m["seed"] for m in members],
            "units": members[0]["units"],
            "active_fraction": mean_of(m.get("active_fraction") for m in members),
            "by_seed": {},
        }  # fmt: skip
        for key, *_ in FIGURES:
            values = {m["seed"]: m[key] for m in members if m.get(key) is not None}
            entry[key] = list(values.values())
            entry["by_seed"][key] = values
        out.append(entry)
    return sorted(out, key=_group_key)


def _find(summary: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    return next((e for e in summary if all(e.get(k) == v for k, v in match.items())), None)


def paired_rows(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Paired differences over seeds: each CVN minus the dense twin of its seed (claim 3), and
    each LWTA layer minus the SAE fitted at its sparsity on the same seed."""
    from discover.evaluation import paired_difference

    out = []

    def add(kind: str, a: dict, b: dict, key: str, title: str, scale: float, what: str) -> None:
        seeds = sorted(set(a["by_seed"][key]) & set(b["by_seed"][key]))
        if not seeds:
            return
        d = paired_difference(
            [scale * a["by_seed"][key][s] for s in seeds],
            [scale * b["by_seed"][key][s] for s in seeds],
        )
        out.append({
            "comparison": kind, "dataset": a["dataset"], "family": a["family"], "U": a["U"],
            "against": what, "metric": key, "title": title, "seeds": seeds,
            **{k: v for k, v in d.to_dict().items() if k != "differences"},
            "differences": list(d.differences), "verdict": d.verdict(0.0),
        })  # fmt: skip

    for lwta in (e for e in summary if e["kind"] == "lwta"):
        dense = _find(summary, dataset=lwta["dataset"], family=lwta["family"], kind="dense")
        if dense is not None:
            for key, title, scale, _ in FIGURES:
                if key not in ("dead_share", "fve", "accuracy_cost", "splice_cost"):
                    add("cvn vs dense", lwta, dense, key, title, scale, "dense twin")
        for sae in (e for e in summary if e["kind"] == "sae"):
            if (sae["dataset"], sae["family"], sae["U"]) != (
                lwta["dataset"],
                lwta["family"],
                lwta["U"],
            ):
                continue
            what = f"TopK SAE {sae['expansion']}x on {sae['source']}"
            for key in ("mean_label_auprc_corr", "simulation_corr", "monosemantic",
                        "accuracy_cost"):  # fmt: skip
                title, scale = next((t, sc) for k, t, sc, _ in FIGURES if k == key)
                add("lwta vs sae", lwta, sae, key, title, scale, what)
    return out


def write_report(state: dict[str, Any], out: Path, load_end: str | None = None) -> Path:
    """``monosemanticity.json``, ``.md`` and ``.png`` from ``state``; ``load_end``: the load
    average now, when the state was measured by this invocation."""
    rows = state["rows"]
    summary = summarise(rows)
    state["summary"] = summary
    state["paired"] = paired_rows(summary)
    write_json(out / "monosemanticity.json", state)
    lines = [
        *report_header(
            "Claim 3 and the SAE comparison: descriptions of dense, competitive and SAE units",
            state,
            took=f"; {state['minutes']:.1f} min (this invocation; finished subjects are reused)",
            load_end=load_end,
        ),
        f"Models: the converged accuracy study's runs (`{state['runs']}`), dense twins and the "
        "`anneal` CVNs; layers: "
        + ", ".join(f"{f} `{layer}`" for f, layer in LAYERS.items())
        + ". How each figure is obtained: this script's docstring.",
        "",
        "Mean ± standard deviation over seeds (the seeds column). Active fraction: LWTA 1/U "
        "exactly; SAE k / latents; dense: the measured share of nonzero outputs per position. "
        "Shares in %, AUPRC, F1, IoU and correlations in [0, 1], costs in points of top-1 on "
        "the whole test split (argmax winners).",
        "",
    ]
    header = ["data set", "family", "subject", "U", "units", "active fraction", "seeds"] + [
        title for _, title, _, _ in FIGURES
    ]
    table = [
        [
            EMBEDDER_LABEL[e["dataset"]], e["family"], _kind_label(e), e["U"] or "", e["units"],
            f"{e['active_fraction']:.4f}" if e["active_fraction"] is not None else "",
            ", ".join(map(str, e["seeds"])),
        ]
        + [mean_std(e[key], scale=scale, digits=digits) for key, _, scale, digits in FIGURES]
        for e in summary
    ]  # fmt: skip
    lines += markdown_table(header, table)
    lines += [
        "",
        "## Paired differences",
        "",
        "Mean paired difference over seeds with its 95 % Student-t interval (same units as "
        "above: shares in points of %, costs in points). *cvn vs dense*: the CVN minus the "
        "dense twin of the same seed; *lwta vs sae*: the LWTA layer minus the SAE fitted at its "
        'sparsity on the same seed. Verdict on "the first is better" (margin 0): *holds* when '
        "the interval is above 0, *does not hold* when it is below, else *inconclusive*. "
        "These rows feed `evidence.md`.",
        "",
    ]
    lines += markdown_table(
        ["comparison", "family", "U", "against", "metric", "paired difference", "verdict"],
        [
            [r["comparison"], r["family"], r["U"], r["against"], r["title"],
             interval(r["mean"], r["low"], r["high"], r["n"], digits=3),
             r["verdict"]]
            for r in state["paired"]
        ],
    )  # fmt: skip
    if state.get("missing"):
        lines += ["", "Left out (runs not trained): " + "; ".join(state["missing"]) + "."]
    if state.get("failed"):
        lines += ["", "Failed subjects: " + "; ".join(state["failed"]) + "."]
    plot = plot_summary(summary, out)
    if plot is not None:
        lines += ["", f"Plot: `{plot.name}` (interpretability against active fraction)."]
    path = out / "monosemanticity.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _mean(entry: dict[str, Any], key: str) -> float | None:
    return mean_of(entry.get(key) or [])


def plot_summary(summary: list[dict[str, Any]], out: Path) -> Path | None:
    """Label AUPRC (corr labels) and monosemantic share against active fraction, one panel
    per (data set, family)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(e["dataset"], e["family"]) for e in summary})
    if not panels:
        return None
    fig, axes = plt.subplots(2, len(panels), figsize=(4 * len(panels), 6.5), squeeze=False)
    styles = {
        "dense": ("k", "*", "dense"), "lwta": ("tab:red", "o", "LWTA"),
        "sae1-dense": ("tab:blue", "s", "SAE 1x on dense"),
        "sae4-dense": ("tab:green", "^", "SAE 4x on dense"),
        "sae1-cvn": ("tab:purple", "D", "SAE 1x on CVN"),
        "sae4-cvn": ("tab:olive", "v", "SAE 4x on CVN"),
    }  # fmt: skip

    def style_of(e: dict[str, Any]) -> str:
        return e["kind"] if e["kind"] != "sae" else f"sae{e['expansion']}-{e['source']}"

    for col, (dataset, family) in enumerate(panels):
        for row, (key, title) in enumerate(
            (("mean_label_auprc_corr", "label AUPRC (corr labels)"),
             ("monosemantic", "monosemantic share"))
        ):  # fmt: skip
            ax = axes[row][col]
            for style, (color, marker, label) in styles.items():
                points = sorted(
                    (e["active_fraction"], _mean(e, key))
                    for e in summary
                    if (e["dataset"], e["family"]) == (dataset, family)
                    and style_of(e) == style
                    and e["active_fraction"] is not None
                    and _mean(e, key) is not None
                )
                if points:
                    ax.plot(*zip(*points, strict=True), marker=marker, color=color, label=label)
            ax.set_xscale("log")
            ax.set_xlabel("active fraction")
            ax.set_ylabel(title)
            ax.set_title(f"{dataset} {family}", fontsize=9)
            ax.grid(alpha=0.3)
            if row == 0 and col == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "monosemanticity.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- main -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="benchmarks/runs/converged", help="the study's runs")
    parser.add_argument("--datasets", nargs="+", default=["shapes"], choices=DATASETS)
    parser.add_argument("--families", nargs="+", default=list(LAYERS), choices=list(LAYERS))
    parser.add_argument("-U", nargs="+", type=int, default=list(CLAIM_U), dest="U")
    parser.add_argument("--sae-U", nargs="+", type=int, default=list(MATCHED_U))
    parser.add_argument("--sae-sources", nargs="+", default=list(SAE_SOURCES), choices=SAE_SOURCES)
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument(
        "--workdir", default="benchmarks/runs/monosemanticity", help="SAEs, P cache, records"
    )
    parser.add_argument("--render", action="store_true", help="rebuild the report only")
    args = parser.parse_args(argv)
    out, workdir, runs = Path(args.out), Path(args.workdir), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    if args.render:
        state = json.loads((out / "monosemanticity.json").read_text())
        print(f"written: {write_report(state, out)}")
        return 0
    if not runs.is_dir():
        parser.error(f"--runs: {runs} is not a folder (train the converged study first)")
    records, cache = workdir / "records", workdir / "cache"
    records.mkdir(parents=True, exist_ok=True)
    meta = provenance(argv, threads=args.threads, jobs=args.jobs)
    subjects, missing = find_subjects(
        runs, args.datasets, args.families, args.U, args.seeds, args.sae_U, args.sae_sources
    )

    def current(subject: Subject) -> dict[str, Any] | None:
        """The subject's record, if it measured the runs as they are now."""
        file = records / f"{subject.name}.json"
        if not file.is_file():
            return None
        row = json.loads(file.read_text())
        identity = {k: run_identity(r) for k, r in _runs_of(subject, runs).items()}
        return row if row.get("run_identity") == identity else None

    rows = [row for row in map(current, subjects) if row is not None]
    todo = [s for s in subjects if current(s) is None]
    print(f"{len(subjects)} subjects: {len(rows)} done, {len(todo)} to measure", flush=True)
    if "fashion-mnist" in args.datasets and todo:  # ConSE's P once, before the workers
        from discover.dissection import concept_matrix

        t0 = time.time()
        concept_matrix(
            probe_set("fashion-mnist", PROBE_N["fashion-mnist"]),
            CONCEPTS["fashion-mnist"],
            "conse",
            cache_dir=cache,
            progress=False,
        )
        print(f"ConSE P of the Fashion-MNIST probe: {time.time() - t0:.0f} s", flush=True)
    state = {**meta, "runs": portable(str(runs)), "missing": missing, "rows": rows, "failed": []}
    t0 = time.time()
    with process_pool(args.jobs, args.threads) as pool:
        futures = {pool.submit(measure, s, runs, workdir, cache): s for s in todo}
        for i, future in enumerate(cf.as_completed(futures), start=1):
            subject = futures[future]
            try:
                row = future.result()
            except Exception as e:  # one failed subject stops no other
                state["failed"].append(f"{subject.name}: {type(e).__name__}: {e}")
                print(f"[{i}/{len(todo)}] {subject.name} FAILED: {e}", flush=True)
                continue
            write_json(records / f"{subject.name}.json", row)
            state["rows"].append(row)
            print(
                f"[{i}/{len(todo)}] {subject.name}: label AUPRC (corr) "
                f"{row['mean_label_auprc_corr']}, monosemantic {row['monosemantic']:.2f}, "
                f"simulation (corr) {row['simulation_corr']:.3f} "
                f"({row['seconds']:.0f} s)",
                flush=True,
            )
            state["minutes"] = (time.time() - t0) / 60
            write_report(state, out, load_average(1, ", "))
    state["minutes"] = (time.time() - t0) / 60
    print(f"written: {write_report(state, out, load_average(1, ', '))}")
    return 1 if state["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
