"""Where units fire: Network-Dissection IoU of dense, competitive (LWTA) and TopK-SAE units on
the converged Shapes models (issue 23).

For each family (small ResNet: ``layer2.0.act2`` on an 8x8 map and ``layer3.0.act2`` on 4x4,
after the residual additions; small ViT: ``blocks.2.mlp.act`` and ``blocks.5.mlp.act``, the
MLP activations on the 4x4 patch grid) and each seed of the converged accuracy study, the
subjects are:

* **dense**: the dense twin's layer, as trained;
* **cvn U**: the CVN's LWTA layer at U = 2, 4, 8 (the ``anneal`` runs, deterministic winners);
* **sae U**: a TopK SAE on the dense twin's last layer with 4x its width in latents and
  ``k = latents / U`` (the active fraction 1/U of the CVN it is matched with), trained on
  per-position activations of 4,000 training images (16 positions each).

Each subject is dissected (ground-truth annotations, Shapes concepts: its text-similarity
labels) and localized (:func:`discover.evaluation.evaluate_localization`: each unit's maps
over the probe thresholded at its top 0.5 % value, upsampled to 32 px and compared with every
concept's pixel masks) on 1,000 Shapes ``test`` images (no design choice is made here: the
quantile and the 0.04 detector IoU are Network Dissection's). Scores per layer:

* **unique detectors**: distinct concepts that some unit detects with IoU > 0.04;
* **mean best IoU** over units;
* **label = best IoU**: share of labelled units whose text label is their best-IoU concept;

each beside its shuffled-mask and random-unit baselines (see the evaluation's docstring).

Run (after ``benchmarks/accuracy.py --setting converged``; resumable subject by subject):
    python benchmarks/localization.py --runs benchmarks/runs/converged --jobs 2
    python benchmarks/localization.py --runs ... --render       # rebuild .md and .png
Results: ``benchmarks/results/localization.{md,json,png}`` and
``localization_heatmaps.png`` (where the best detectors of one dense / CVN pair fire).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from common import (
    load_average,
    markdown_table,
    mean_std,
    portable,
    process_pool,
    provenance,
    report_header,
    run_identity,
    write_json,
)

LAYERS = {
    "resnet": ("layer2.0.act2", "layer3.0.act2"),
    "vit": ("blocks.2.mlp.act", "blocks.5.mlp.act"),
}
MATCHED_U = (2, 4, 8)
SEEDS = (0, 1, 2, 3, 4)  # every seed of the converged study (U = 8: 0-2)
EXPANSION = 4
PROBE_N = 1000
SAE_IMAGES = 4000
SAE_EPOCHS = 20
IMAGE_SIZE = 32


@dataclass(frozen=True)
class Subject:
    """One model's layers: ``kind`` is ``dense``, ``cvn`` or ``sae``."""

    family: str
    seed: int
    kind: str
    U: int = 1

    @property
    def name(self) -> str:
        tail = "dense" if self.kind == "dense" else f"{self.kind}-u{self.U}"
        return f"shapes-{self.family}-s{self.seed}-{tail}"

    def run(self, runs: Path) -> Path:
        """The training run whose model carries the layers (SAEs: the dense twin)."""
        if self.kind == "cvn":
            return runs / f"shapes-{self.family}-u{self.U}-anneal-s{self.seed}"
        return runs / f"shapes-{self.family}-u1-s{self.seed}"

    @property
    def layers(self) -> tuple[str, ...]:
        return LAYERS[self.family][-1:] if self.kind == "sae" else LAYERS[self.family]


def find_subjects(runs: Path, families: list[str], seeds: list[int]) -> tuple[list, list[str]]:
    subjects, missing = [], []
    for family in families:
        for seed in seeds:
            dense = Subject(family, seed, "dense")
            if not (dense.run(runs) / "record.json").is_file():
                missing.append(f"{dense.run(runs).name} (dense twin) not finished")
                continue
            subjects.append(dense)
            for U in MATCHED_U:
                cvn = Subject(family, seed, "cvn", U)
                if not (cvn.run(runs) / "record.json").is_file():
                    missing.append(f"{cvn.run(runs).name} not trained")
                    continue
                subjects += [cvn, Subject(family, seed, "sae", U)]
    return subjects, missing


def probe_set(n: int, split: str):
    from discover.data import ShapesWorld

    return ShapesWorld(n=n, image_size=IMAGE_SIZE, split=split)


def measure(subject: Subject, runs: Path, workdir: Path) -> list[dict[str, Any]]:
    """Dissect and localize one subject (runs in a worker process)."""
    from discover import load_run
    from discover.dissection import dissect, model_view, train_sae
    from discover.evaluation import evaluate_localization

    t0 = time.time()
    model = load_run(subject.run(runs)).model.eval()
    probe = probe_set(PROBE_N, "test")
    sae, extra = None, {}
    if subject.kind == "sae":
        layer = subject.layers[0]
        view = model_view(model, probe)
        captured = {}
        handle = dict(model.named_modules())[layer].register_forward_hook(
            lambda m, i, o: captured.update(out=o)
        )
        with torch.no_grad():
            model(view[0][0][None])
        handle.remove()
        out = captured["out"]
        width = out.shape[1] if out.dim() == 4 else out.shape[-1]
        latents = EXPANSION * width
        k = latents // subject.U
        folder = workdir / "sae" / subject.name
        sae = train_sae(
            model,
            layer,
            probe_set(SAE_IMAGES, "train"),
            k,
            EXPANSION,
            out=folder,
            epochs=SAE_EPOCHS,
            seed=subject.seed,
            resume=(folder / "train_state.pt").is_file(),
            progress=False,
        )
        extra = {"latents": latents, "k": k, "fve": sae.config.metrics["fve"]}
    dissection = dissect(
        model,
        list(subject.layers),
        probe,
        "shapes",
        "annotations",
        sae=sae,
        seed=subject.seed,
        null_repeats=0,
        cache_dir=None,
        progress=False,
    )
    report = evaluate_localization(model, dissection, probe, sae=sae, seed=subject.seed)
    rows = []
    for layer, result in report.layers.items():
        s = result.summary()
        rows.append(
            {
                "dataset": "shapes",
                "model": f"small_{subject.family}",
                "family": subject.family,
                "U": subject.U,
                "subject": subject.kind,
                "layer": layer,
                "seed": subject.seed,
                "units": s["units"],
                "map_size": s["map_size"],
                "unique_detectors": s["unique_detectors"],
                "detectors": s["detectors"],
                "mean_best_iou": s["mean_best_iou"],
                "label_is_best_iou": s["label_is_best_iou"],
                "labelled_units": s["labelled_units"],
                "detected_concepts": s["detected_concepts"],
                "baseline_shuffled_masks": s["shuffled_masks"],
                "baseline_random_units": s["random_units"],
                **extra,
                "run": portable(str(subject.run(runs))),
                "seconds": time.time() - t0,
            }
        )
    return rows


# -- summary --------------------------------------------------------------------------------------
def _cell(values: list[float], digits: int = 2) -> str:
    """``mean ± sd (each seed's value)``."""
    if not values:
        return "-"
    each = ", ".join(f"{v:.{digits}f}" for v in values)
    return f"{mean_std(values, digits=digits)} ({each})"


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["family"], row["layer"], row["subject"], row["U"]), []).append(row)
    order = {"dense": 0, "cvn": 1, "sae": 2}
    summary = []
    for (family, layer, subject, U), items in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1], order[kv[0][2]], kv[0][3])
    ):
        items = sorted(items, key=lambda r: r["seed"])
        summary.append(
            {
                "family": family,
                "layer": layer,
                "subject": subject,
                "U": U,
                "seeds": [r["seed"] for r in items],
                "units": items[0]["units"],
                "unique_detectors": [r["unique_detectors"] for r in items],
                "mean_best_iou": [r["mean_best_iou"] for r in items],
                "label_is_best_iou": [
                    r["label_is_best_iou"] for r in items if r["label_is_best_iou"] is not None
                ],
                "shuffled_unique": [
                    r["baseline_shuffled_masks"]["unique_detectors"] for r in items
                ],
                "random_unique": [r["baseline_random_units"]["unique_detectors"] for r in items],
                "shuffled_iou": [r["baseline_shuffled_masks"]["mean_best_iou"] for r in items],
            }
        )
    return summary


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """Per family and layer: CVN and SAE unique detectors against the dense twin of the same
    seed (paired differences)."""
    lines = []
    by_key = {(r["family"], r["layer"], r["subject"], r["U"], r["seed"]): r for r in rows}
    for family, layers in LAYERS.items():
        for layer in layers:
            for subject in ("cvn", "sae"):
                diffs = []
                for (f, la, s, U, seed), row in by_key.items():
                    dense = by_key.get((f, la, "dense", 1, seed))
                    if f == family and la == layer and s == subject and dense is not None:
                        diffs.append((U, seed, row["unique_detectors"] - dense["unique_detectors"]))
                if not diffs:
                    continue
                more = sum(d > 0 for _, _, d in diffs)
                fewer = sum(d < 0 for _, _, d in diffs)
                detail = ", ".join(f"U={U} s{seed}: {d:+d}" for U, seed, d in sorted(diffs))
                n = len(diffs)
                if fewer == n or more == n:
                    word = f"{'fewer' if fewer else 'more'} unique detectors in every pair"
                elif fewer and not more:
                    word = f"never more unique detectors, fewer in {fewer} of {n} pairs"
                elif more and not fewer:
                    word = f"never fewer unique detectors, more in {more} of {n} pairs"
                else:
                    word = f"no consistent difference ({more} of {n} pairs more, {fewer} fewer)"
                lines.append(
                    f"- **{family} {layer}, {subject} vs dense (same seed):** {word} ({detail})."
                )
    return lines


def write_report(state: dict[str, Any], out: Path, load_end: str | None = None) -> Path:
    """``localization.json``, ``.md`` and ``.png`` from ``state``; ``load_end``: the load
    average now, when the state was measured by this invocation."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "localization.json", state)
    summary = summarise(state["rows"])
    header = [
        "family",
        "layer",
        "subject",
        "U",
        "units",
        "unique detectors",
        "(shuffled masks)",
        "(random units)",
        "mean best IoU",
        "(shuffled masks)",
        "label = best IoU",
    ]
    table = [
        [
            s["family"],
            s["layer"],
            s["subject"],
            s["U"],
            s["units"],
            _cell(s["unique_detectors"], 1),
            _cell(s["shuffled_unique"], 1),
            _cell(s["random_unique"], 1),
            _cell(s["mean_best_iou"], 3),
            _cell(s["shuffled_iou"], 3),
            _cell([100 * v for v in s["label_is_best_iou"]], 0) + " %"
            if s["label_is_best_iou"]
            else "-",
        ]
        for s in summary
    ]
    lines = [
        *report_header(
            "Where units fire: Network-Dissection IoU of dense, CVN and SAE units (Shapes)",
            state,
            load_end=load_end,
        ),
        "",
        "Produced by `benchmarks/localization.py`; what it measures is in its docstring.",
        "",
        f"- **Probe:** {PROBE_N} Shapes `test` images at {IMAGE_SIZE} px (pixel masks from the "
        "generator); thresholds at each unit's top 0.5 % value; detector: IoU > 0.04.",
        *(f"- **Not measured:** {m}" for m in state.get("missing", [])),
        "",
        "Cells: mean ± standard deviation over seeds (each seed's value in brackets).",
        "",
        *markdown_table(header, table),
        "",
        "## Verdicts",
        "",
        *verdicts(state["rows"]),
        "",
    ]
    (out / "localization.md").write_text("\n".join(lines) + "\n")
    plot(summary, out / "localization.png")
    return out / "localization.md"


def plot(summary: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(f, la) for f, layers in LAYERS.items() for la in layers]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False)
    colours = {"dense": "#555555", "cvn": "#1f77b4", "sae": "#ff7f0e"}
    for ax, (family, layer) in zip(axes[0], panels, strict=True):
        entries = [s for s in summary if s["family"] == family and s["layer"] == layer]
        for x, s in enumerate(entries):
            values = s["unique_detectors"]
            ax.bar(x, statistics.fmean(values), color=colours[s["subject"]], alpha=0.8)
            ax.scatter([x] * len(values), values, color="black", s=10, zorder=3)
            ax.scatter(
                [x],
                [statistics.fmean(s["shuffled_unique"])],
                marker="_",
                color="red",
                s=80,
                zorder=4,
            )
        ax.set_xticks(range(len(entries)))
        ax.set_xticklabels(
            [
                s["subject"] if s["subject"] == "dense" else f"{s['subject']}\nU={s['U']}"
                for s in entries
            ],
            fontsize=7,
        )
        ax.set_title(f"{family} {layer}", fontsize=9)
        ax.set_ylabel("unique detectors (IoU > 0.04)")
    fig.suptitle(
        "Unique concept detectors per layer (dots: seeds; red dash: shuffled-mask baseline)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


FIGURE_SUBJECTS = (Subject("resnet", 0, "dense"), Subject("resnet", 0, "cvn", 4))
FIGURE_LAYER = "layer3.0.act2"


def figure(runs: Path, path: Path, units: int = 4) -> Path:
    """Where the best detectors fire: for the dense ResNet and its CVN (U = 4, seed 0), the
    ``units`` units of highest best IoU at ``layer3.0.act2``, each with its five top probe
    images and the report's heatmaps (drawn from the dissection's saved maps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from discover import load_run
    from discover.dissection import dissect
    from discover.evaluation import evaluate_localization
    from discover.report.figures import draw_heatmap, to_pil

    probe = probe_set(PROBE_N, "test")
    rows = []
    for subject in FIGURE_SUBJECTS:
        model = load_run(subject.run(runs)).model.eval()
        dissection = dissect(
            model, [FIGURE_LAYER], probe, "shapes", "annotations", null_repeats=0,
            cache_dir=None, progress=False,
        )  # fmt: skip
        located = evaluate_localization(model, dissection, probe).layers[FIGURE_LAYER]
        maps = dissection.maps[FIGURE_LAYER]
        best = located.best_iou.argsort(descending=True)[:units].tolist()
        for unit in best:
            peak = float(maps.maps[unit].max()) or 1.0
            pictures = [
                draw_heatmap(
                    to_pil(probe[int(i)][0]).resize((96, 96)), (maps.maps[unit, j] / peak).numpy()
                )
                for j, i in enumerate(maps.indices[unit].tolist())
            ]
            title = (
                f"{subject.kind}{'' if subject.kind == 'dense' else f' U={subject.U}'} unit "
                f"{unit}: {located.best_concepts[unit]} (IoU {float(located.best_iou[unit]):.2f})"
            )
            rows.append((title, pictures))
    fig, axes = plt.subplots(len(rows), 5, figsize=(7.5, 1.65 * len(rows)), squeeze=False)
    for (title, pictures), line in zip(rows, axes, strict=True):
        for ax, picture in zip(line, pictures, strict=True):
            ax.imshow(np.asarray(picture))
            ax.set_xticks([])
            ax.set_yticks([])
        line[0].set_title(title, fontsize=7, loc="left")
    fig.suptitle(
        "Where the best detectors of small ResNet layer3.0.act2 fire on their top test images\n"
        "(inferno: activation relative to the unit's peak; cyan: above half of it)",
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _current(file: Path, subject: Subject, runs: Path) -> bool:
    """Whether ``file`` holds a measurement of the subject's run as it is now (a run trained
    again makes it stale)."""
    if not file.is_file():
        return False
    return json.loads(file.read_text()).get("run_identity") == run_identity(subject.run(runs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("benchmarks/runs/converged"))
    parser.add_argument("--workdir", type=Path, default=Path("benchmarks/runs/localization"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--families", nargs="+", default=list(LAYERS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--render", action="store_true", help="rebuild .md/.png from the records")
    args = parser.parse_args(argv)
    records = args.workdir / "records"
    records.mkdir(parents=True, exist_ok=True)
    subjects, missing = find_subjects(args.runs, args.families, args.seeds)
    meta = provenance(argv, threads=args.threads, jobs=args.jobs)
    if not args.render:
        todo = [s for s in subjects if not _current(records / f"{s.name}.json", s, args.runs)]
        print(f"{len(subjects)} subjects, {len(todo)} to measure", flush=True)
        with process_pool(args.jobs, args.threads) as pool:
            futures = {pool.submit(measure, s, args.runs, args.workdir): s for s in todo}
            for future in cf.as_completed(futures):
                subject = futures[future]
                rows = future.result()
                write_json(
                    records / f"{subject.name}.json",
                    {
                        "subject": asdict(subject),
                        "run_identity": run_identity(subject.run(args.runs)),
                        "rows": rows,
                    },
                )
                print(f"done {subject.name} ({rows[0]['seconds']:.0f} s)", flush=True)
    rows = []
    for subject in subjects:
        file = records / f"{subject.name}.json"
        if _current(file, subject, args.runs):
            rows += json.loads(file.read_text())["rows"]
    previous = args.out / "localization.json"
    if args.render and previous.is_file():  # the records were measured by the earlier command
        measured = json.loads(previous.read_text())
        keep = ("command", "git_head", "git_dirty", "date", "machine", "torch")
        meta = {**{k: measured[k] for k in keep if k in measured}, "rendered_by": meta["command"]}
    state = {**meta, "missing": missing, "rows": rows}
    load_end = None if args.render else load_average(1, ", ")
    print(write_report(state, args.out, load_end).read_text())
    if all((r.run(args.runs) / "record.json").is_file() for r in FIGURE_SUBJECTS):
        print(f"wrote {figure(args.runs, args.out / 'localization_heatmaps.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
