"""Competition or a sparse autoencoder? LWTA units, TopK SAE latents and dense units, compared
at the same active fraction on converged networks (issue 14).

For each data set (Shapes with its ground-truth annotations as ``P``; Fashion-MNIST with
ConSE over the ``3k`` word list, an offline stand-in for CLIP), each family (small ResNet:
``layer3.0.act2``, width 64, after the last residual addition; small ViT:
``blocks.5.mlp.act``, width 192, the last MLP) and each seed, the subjects are:

* **dense**: the dense twin's layer (ReLU / GELU), as trained;
* **lwta U**: the CVN's LWTA layer at U (the ``anneal`` runs of the converged accuracy study,
  one winner of U fires: active fraction 1/U);
* **sae E×, U**: a TopK SAE on the dense twin's layer with ``E x width`` latents and
  ``k = E x width / U`` (the same active fraction 1/U of the dictionary), for E in {1, 4},
  trained on per-position activations of 4,000 training images (16 positions each).

Every subject is dissected the same way (soft-WPMI labels, ``argmax`` LWTA policy: the
converged CVNs lose nothing with deterministic winners; labels judged by ``cos`` against 16
shuffled-image draws) on the same probe (Shapes: 2,000 ``val`` images; Fashion-MNIST: 1,000
test images), and scored by:

* **label = best** (Shapes): the share of units whose label is the ground-truth concept they
  detect best (AUPRC), and the **mean label AUPRC**;
* **monosemantic**: the share of units whose best ground-truth AUPRC is above 0.75
  (Fashion-MNIST: the ten classes as ground truth; its labels come from 3k words, so only
  this and the mean best AUPRC are scored there);
* **simulation**: the mean held-out correlation of each unit with its label's column of
  ``P`` (labels chosen on the other half of the probe);
* **above chance**: the share of labels whose significance beats the shuffled null
  (``p_null <= 0.001``), and their median ``z``;
* **dead**: units or latents never active on the probe (LWTA: never the winner);
* **FVE**: the SAE's held-out fraction of variance explained;
* **accuracy cost**: LWTA: the CVN's deterministic top-1 minus its dense twin's (full test
  set, from the accuracy study's records); SAE: the dense model's top-1 with the SAE's
  reconstruction in place of the layer minus without it (2,000 test images).

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
import math
import multiprocessing
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from common import markdown_table, provenance, write_json

LAYERS = {"resnet": "layer3.0.act2", "vit": "blocks.5.mlp.act"}
MATCHED_U = (4, 8, 24)
EXPANSIONS = (1, 4)
SEEDS = (0, 1)
DATASETS = ("shapes", "fashion-mnist")
CONCEPTS = {"shapes": "shapes", "fashion-mnist": "3k"}
EMBEDDER_LABEL = {
    "shapes": "Shapes (annotations)",
    "fashion-mnist": "Fashion-MNIST (ConSE, 3k words)",
}
PROBE_N = {"shapes": 2000, "fashion-mnist": 1000}
SAE_IMAGES = 4000
SAE_EPOCHS = 20
REPLACEMENT_IMAGES = 2000
NULL_REPEATS = 16
SIMULATION_REPEATS = 20
ACTIVE_EPS = 1e-6


@dataclass(frozen=True)
class Subject:
    """One dissected layer: ``kind`` is ``dense``, ``lwta`` or ``sae``."""

    dataset: str
    family: str
    seed: int
    kind: str
    U: int | None = None
    expansion: int | None = None

    @property
    def name(self) -> str:
        tail = {"dense": "dense", "lwta": f"lwta-u{self.U}"}.get(
            self.kind, f"sae{self.expansion}x-u{self.U}"
        )
        return f"{self.dataset}-{self.family}-s{self.seed}-{tail}"

    def run(self, runs: Path) -> Path:
        """The training run whose model carries the layer (SAEs: the dense twin)."""
        if self.kind == "lwta":
            return runs / f"{self.dataset}-{self.family}-u{self.U}-anneal-s{self.seed}"
        return runs / f"{self.dataset}-{self.family}-u1-s{self.seed}"


def finished(run: Path) -> bool:
    return (run / "record.json").is_file()


def find_subjects(
    runs: Path, datasets: list[str], families: list[str], Us: list[int], seeds: list[int]
) -> tuple[list[Subject], list[str]]:
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
                for U in Us:
                    lwta = Subject(dataset, family, seed, "lwta", U)
                    if not finished(lwta.run(runs)):
                        missing.append(f"{lwta.run(runs).name} not trained")
                        continue
                    subjects.append(lwta)
                    subjects += [Subject(dataset, family, seed, "sae", U, e) for e in EXPANSIONS]
    return subjects, missing


# -- data -------------------------------------------------------------------------------------
def probe_set(dataset: str, n: int, split: str = "probe") -> torch.utils.data.Dataset:
    """The dissection probe (``probe``), the SAE's training images (``train``) or the
    replacement-accuracy images (``test``)."""
    from discover.data import ShapesWorld, build_dataset

    if dataset == "shapes":
        shapes_split = {"probe": "val", "train": "train", "test": "test"}[split]
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
def measure(subject: Subject, runs: Path, workdir: Path, cache: Path) -> dict[str, Any]:
    """Dissect and score one subject (runs in a worker process)."""
    from torch.utils.data import DataLoader

    from discover import load_run
    from discover.dissection import dissect, model_view, sae_replacement_accuracy, train_sae
    from discover.evaluation import evaluate_simulation, groundtruth_dissection

    t0 = time.time()
    run = load_run(subject.run(runs))
    model, layer = run.model.eval(), LAYERS[subject.family]
    probe = probe_set(subject.dataset, PROBE_N[subject.dataset])
    row: dict[str, Any] = {**asdict(subject), "name": subject.name, "layer": layer}
    sae = None
    if subject.kind == "sae":
        view = model_view(model, probe)
        width = layer_width(model, layer, view[0][0])
        latents = subject.expansion * width
        k = latents // subject.U
        sae = train_sae(
            model,
            layer,
            probe_set(subject.dataset, SAE_IMAGES, "train"),
            k,
            subject.expansion,
            out=workdir / "sae" / subject.name,
            epochs=SAE_EPOCHS,
            seed=subject.seed,
            resume=(workdir / "sae" / subject.name / "train_state.pt").is_file(),
            progress=False,
        )
        test = probe_set(subject.dataset, REPLACEMENT_IMAGES, "test")
        loader = DataLoader(model_view(model, test), batch_size=256)
        replaced = sae_replacement_accuracy(model, layer, sae, loader)
        row.update(
            width=width,
            latents=latents,
            k=k,
            active_fraction=k / latents,
            fve=sae.config.metrics["fve"],
            accuracy=replaced.accuracy,
            accuracy_cost=replaced.accuracy - replaced.original_accuracy,
        )
    dissection = dissect(
        model,
        [layer],
        probe,
        CONCEPTS[subject.dataset],
        embedder_of(subject.dataset),
        sae=sae,
        seed=subject.seed,
        cache_dir=cache,
        progress=False,
        null_repeats=NULL_REPEATS,
    )
    units = dissection.layer(layer)
    Q = dissection.probe_activations(layer)
    annotations, names = ground_truth(subject.dataset, probe)
    gt = groundtruth_dissection(dissection, annotations, names).layers[layer].summary()
    simulation = evaluate_simulation(
        dissection,
        probe,
        embedder_of(subject.dataset),
        cache_dir=cache,
        seed=subject.seed,
        null_repeats=SIMULATION_REPEATS,
        progress=False,
    )[layer]
    zs = [u.z for u in units if u.z is not None]
    row.update(
        units=len(units),
        dead=int((Q.abs().amax(dim=0) <= ACTIVE_EPS).sum()),
        label_is_best=gt["label_is_best"] if subject.dataset == "shapes" else None,
        mean_label_auprc=gt["mean_label_auprc"] if subject.dataset == "shapes" else None,
        monosemantic=gt["monosemantic"],
        mean_best_auprc=gt["mean_best_auprc"],
        simulation=simulation.metrics["correlation"].value,
        above_chance=sum(bool(u.above_chance) for u in units) / len(units),
        median_z=statistics.median(zs) if zs else None,
        seconds=time.time() - t0,
    )
    if subject.kind != "sae":
        record = json.loads((subject.run(runs) / "record.json").read_text())
        row["accuracy"] = record["top1_argmax"]
        if subject.kind == "lwta":
            dense = Subject(subject.dataset, subject.family, subject.seed, "dense")
            twin = json.loads((dense.run(runs) / "record.json").read_text())
            row["accuracy_cost"] = record["top1_argmax"] - twin["top1_argmax"]
    if subject.kind == "lwta":
        row["active_fraction"] = 1 / subject.U
    elif subject.kind == "dense":  # the dense layer's own share of active outputs per position
        row["active_fraction"] = dense_active_fraction(model, layer, probe)
    return row


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
    ("label_is_best", "label = best", 100, 1),
    ("mean_label_auprc", "label AUPRC", 1, 3),
    ("monosemantic", "monosemantic", 100, 1),
    ("mean_best_auprc", "best AUPRC", 1, 3),
    ("simulation", "simulation r", 1, 3),
    ("above_chance", "above chance", 100, 1),
    ("median_z", "median z", 1, 1),
    ("dead_share", "dead", 100, 1),
    ("fve", "FVE", 1, 3),
    ("accuracy_cost", "accuracy cost (points)", 100, 2),
)


def _kind_label(row: dict[str, Any]) -> str:
    return {"dense": "dense", "lwta": "LWTA"}.get(row["kind"], f"TopK SAE {row['expansion']}x")


def _group_key(row: dict[str, Any]) -> tuple:
    order = {"dense": 0, "lwta": 1, "sae": 2}
    return (row["dataset"], row["family"], row["U"] or 0, order[row["kind"]], row["expansion"] or 0)


def _cell(values: list[float], scale: float, digits: int) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (data set, family, kind, U, expansion): figures over seeds."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        row = {**row, "dead_share": row["dead"] / row["units"]}
        key = (row["dataset"], row["family"], row["kind"], row["U"], row["expansion"])
        groups.setdefault(key, []).append(row)
    out = []
    for (dataset, family, kind, U, expansion), members in groups.items():
        fractions = [m["active_fraction"] for m in members if m.get("active_fraction") is not None]
        entry = {
            "dataset": dataset,
            "family": family,
            "kind": kind,
            "U": U,
            "expansion": expansion,
            "seeds": sorted(m["seed"] for m in members),
            "units": members[0]["units"],
            "active_fraction": statistics.fmean(fractions) if fractions else None,
        }
        for key, *_ in FIGURES:
            values = [m[key] for m in members if m.get(key) is not None]
            entry[key] = values
        out.append(entry)
    return sorted(out, key=_group_key)


def _mean(entry: dict[str, Any], key: str) -> float | None:
    values = entry.get(key) or []
    return statistics.fmean(values) if values else None


def _spread(entry: dict[str, Any], key: str) -> float:
    values = entry.get(key) or []
    return statistics.stdev(values) if len(values) > 1 else 0.0


def verdicts(summary: list[dict[str, Any]]) -> list[str]:
    """Per (data set, family, U): LWTA against the better SAE on the headline figures."""
    lines = []
    heads = [("monosemantic", 100, "monosemantic units"), ("simulation", 1, "simulation r")]
    shapes_heads = [("label_is_best", 100, "label = best")]
    keys = sorted({(e["dataset"], e["family"], e["U"]) for e in summary if e["kind"] == "lwta"})
    for dataset, family, U in keys:
        lwta = next(
            e for e in summary if (e["dataset"], e["family"], e["U"], e["kind"])
            == (dataset, family, U, "lwta")
        )  # fmt: skip
        saes = [
            e for e in summary
            if (e["dataset"], e["family"], e["U"], e["kind"]) == (dataset, family, U, "sae")
        ]  # fmt: skip
        dense = next(
            (e for e in summary if (e["dataset"], e["family"], e["kind"]) == (dataset, family, "dense")),
            None,
        )  # fmt: skip
        parts = []
        for key, scale, what in (shapes_heads if dataset == "shapes" else []) + heads:
            a = _mean(lwta, key)
            rivals = [(s, _mean(s, key)) for s in saes if _mean(s, key) is not None]
            if a is None or not rivals:
                continue
            best, b = max(rivals, key=lambda r: r[1])
            noise = max(_spread(lwta, key), _spread(best, key))
            seeds = min(len(lwta[key]), len(best[key]))
            if seeds < 2:
                noise = math.nan
            diff = (a - b) * scale
            name = f"SAE {best['expansion']}x"
            if math.isnan(noise):
                verdict = (
                    f"{what}: LWTA {a * scale:.2f} vs {name} {b * scale:.2f} "
                    "(one seed: no noise estimate)"
                )
            elif abs(a - b) <= 2 * noise:
                verdict = (
                    f"{what}: inside the noise (LWTA {a * scale:.2f} vs {name} {b * scale:.2f}, "
                    f"seed spread {noise * scale:.2f})"
                )
            else:
                winner = "competition wins" if diff > 0 else f"the {name} wins"
                verdict = (
                    f"{what}: {winner} (LWTA {a * scale:.2f} vs {name} {b * scale:.2f}, "
                    f"seed spread {noise * scale:.2f})"
                )
            if dense is not None and _mean(dense, key) is not None:
                verdict += f"; dense {_mean(dense, key) * scale:.2f}"
            parts.append(verdict)
        lines.append(f"* **{dataset} {family}, 1/U = 1/{U}**: " + "; ".join(parts) + ".")
    return lines


def keep_outside(
    state: dict[str, Any], earlier: dict[str, Any], datasets: list[str], families: list[str]
) -> None:
    """Add to ``state`` the rows, missing-run notes and failures of an ``earlier`` results
    JSON whose data set x family pair this run does not measure, and say where they came
    from (``state["kept"]``)."""
    scope = tuple(f"{d}-{f}-" for d in datasets for f in families)
    outside = [r for r in earlier["rows"] if f"{r['dataset']}-{r['family']}-" not in scope]
    state["rows"] = outside + state["rows"]
    state["missing"] = [m for m in earlier.get("missing", []) if not m.startswith(scope)] + state[
        "missing"
    ]
    state["failed"] = [m for m in earlier.get("failed", []) if not m.startswith(scope)]
    pairs = sorted({f"{r['dataset']} {r['family']}" for r in outside})
    source = earlier
    if earlier.get("kept") and set(pairs) <= set(earlier["kept"]["pairs"]):
        source = earlier["kept"]  # the earlier run kept them too: name the run that measured them
    state["kept"] = {
        "rows": len(outside),
        "pairs": pairs,
        "command": source["command"],
        "date": source["date"],
        "git_head": source.get("git_head"),
    }


def write_report(state: dict[str, Any], out: Path) -> Path:
    rows = state["rows"]
    summary = summarise(rows)
    state["summary"] = summary
    write_json(out / "monosemanticity.json", state)
    lines = [
        "# Competition or a sparse autoencoder? Monosemanticity at matched sparsity",
        "",
        f"Command: `{state['command']}`  ",
        f"Machine: {state['machine']}  ",
        f"Date: {state['date']}; {state['minutes']:.1f} min (this invocation; finished "
        "subjects are reused)  ",
        f"Models: the converged accuracy study's runs (`{state['runs']}`), dense twins and the "
        "`anneal` CVNs; layers: "
        + ", ".join(f"{f} `{layer}`" for f, layer in LAYERS.items())
        + ". How each figure is obtained: this script's docstring.",
        "",
    ]
    kept = state.get("kept")
    if kept:
        lines += [
            f"Kept from an earlier run ({kept['date']}, `{kept['command']}`, git "
            f"{kept['git_head']}): the {kept['rows']} rows of " + ", ".join(kept["pairs"]) + ".",
            "",
        ]
    lines += [
        "Mean ± standard deviation over seeds (the seeds column). Active fraction: LWTA 1/U "
        "exactly; SAE k / latents; dense: the measured share of nonzero outputs per position. "
        "Shares in %, AUPRC and correlations in [0, 1], accuracy cost in points of top-1.",
        "",
    ]
    header = ["data set", "family", "subject", "U", "units", "active fraction", "seeds"] + [
        title for _, title, _, _ in FIGURES
    ]
    table = []
    for e in summary:
        table.append(
            [
                EMBEDDER_LABEL[e["dataset"]],
                e["family"],
                _kind_label(e),
                e["U"] or "",
                e["units"],
                f"{e['active_fraction']:.4f}" if e["active_fraction"] is not None else "",
                ", ".join(map(str, e["seeds"])),
            ]
            + [_cell(e[key], scale, digits) for key, _, scale, digits in FIGURES]
        )
    lines += markdown_table(header, table)
    lines += ["", "## Verdicts", "", *verdicts(summary)]
    lines += [
        "",
        "A difference is called *inside the noise* when it is at most twice the larger "
        "seed-to-seed standard deviation of the two subjects; with one seed no verdict is "
        "drawn.",
    ]
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


def plot_summary(summary: list[dict[str, Any]], out: Path) -> Path | None:
    """Monosemantic share and simulation r against active fraction, one panel per
    (data set, family)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(e["dataset"], e["family"]) for e in summary})
    if not panels:
        return None
    fig, axes = plt.subplots(2, len(panels), figsize=(4 * len(panels), 6.5), squeeze=False)
    styles = {"dense": ("k", "*"), "lwta": ("tab:red", "o"), "sae1": ("tab:blue", "s"),
              "sae4": ("tab:green", "^")}  # fmt: skip
    for col, (dataset, family) in enumerate(panels):
        for row, (key, title) in enumerate(
            (("monosemantic", "monosemantic share"), ("simulation", "simulation r"))
        ):
            ax = axes[row][col]
            for style, (color, marker) in styles.items():
                points = [
                    (e["active_fraction"], _mean(e, key))
                    for e in summary
                    if (e["dataset"], e["family"]) == (dataset, family)
                    and (e["kind"] if e["kind"] != "sae" else f"sae{e['expansion']}") == style
                    and e["active_fraction"] is not None
                    and _mean(e, key) is not None
                ]
                if points:
                    points.sort()
                    label = {"dense": "dense", "lwta": "LWTA"}.get(style, f"SAE {style[3:]}x")
                    ax.plot(*zip(*points, strict=True), marker=marker, color=color, label=label)
            ax.set_xscale("log")
            ax.set_xlabel("active fraction")
            ax.set_ylabel(title)
            ax.set_title(f"{dataset} {family}", fontsize=9)
            ax.grid(alpha=0.3)
            if row == 0 and col == 0:
                ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "monosemanticity.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- main -------------------------------------------------------------------------------------
def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="benchmarks/runs/converged", help="the study's runs")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--families", nargs="+", default=list(LAYERS), choices=list(LAYERS))
    parser.add_argument("-U", nargs="+", type=int, default=list(MATCHED_U), dest="U")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument(
        "--workdir", default="benchmarks/runs/monosemanticity", help="SAEs, P cache, records"
    )
    parser.add_argument("--render", action="store_true", help="rebuild the report only")
    parser.add_argument(
        "--keep",
        type=Path,
        help="an earlier results JSON (e.g. OUT/monosemanticity.json): its rows and notes for "
        "data set x family pairs outside this run's --datasets x --families are kept, with "
        "that run's command and date",
    )
    args = parser.parse_args(argv)
    out, workdir, runs = Path(args.out), Path(args.workdir), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    if args.render:
        state = json.loads((out / "monosemanticity.json").read_text())
        print(f"written: {write_report(state, out)}")
        return 0
    earlier = None
    if args.keep is not None:  # read it now: a bad file fails before any measuring
        what = f"--keep: {args.keep} is not an earlier monosemanticity.json"
        try:
            earlier = json.loads(args.keep.read_text())
        except (OSError, ValueError) as e:
            parser.error(f"{what} ({e})")
        if not isinstance(earlier, dict) or not {"rows", "command", "date"} <= earlier.keys():
            parser.error(f"{what} (it has no rows, command and date)")
    if not runs.is_dir():
        parser.error(f"--runs: {runs} is not a folder (train the converged study first)")
    records, cache = workdir / "records", workdir / "cache"
    records.mkdir(parents=True, exist_ok=True)
    meta = provenance(argv, threads=args.threads, jobs=args.jobs)
    subjects, missing = find_subjects(runs, args.datasets, args.families, args.U, args.seeds)
    rows = [
        json.loads((records / f"{s.name}.json").read_text())
        for s in subjects
        if (records / f"{s.name}.json").is_file()
    ]
    todo = [s for s in subjects if not (records / f"{s.name}.json").is_file()]
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
    state = {**meta, "runs": str(runs), "missing": missing, "rows": rows, "failed": []}
    if earlier is not None:
        keep_outside(state, earlier, args.datasets, args.families)
    t0 = time.time()
    with cf.ProcessPoolExecutor(
        max_workers=args.jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(args.threads,),
    ) as pool:
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
                f"[{i}/{len(todo)}] {subject.name}: monosemantic {row['monosemantic']:.2f}, "
                f"simulation {row['simulation']}, above chance {row['above_chance']:.2f} "
                f"({row['seconds']:.0f} s)",
                flush=True,
            )
            state["minutes"] = (time.time() - t0) / 60
            write_report(state, out)
    state["minutes"] = (time.time() - t0) / 60
    print(f"written: {write_report(state, out)}")
    return 1 if state["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
