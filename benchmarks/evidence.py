"""One page of verdicts: DISCOVER's claims on our data, each CVN against the dense twin of its
own seed, with paired 95 % confidence intervals (issue 24).

Reads the results of the studies (never reruns them):

* ``accuracy-converged.json`` (``accuracy.py --setting converged``): claim 1 (the active
  fraction is 1/U), claim 2 (top-1 sample×6, CVN minus dense twin) and the deterministic
  mode (argmax minus sample×6, the same runs);
* ``monosemanticity.json`` (``monosemanticity.py``): claim 3 (label AUPRC, F1, IoU,
  label = best and simulation r with ``corr`` labels, which pass the sanity tests, and with
  the paper's ``soft_wpmi`` beside them; the monosemantic share) and LWTA units against TopK
  SAE latents at the same sparsity;
* ``localization.json`` (``localization.py``): claim 3's unique Network-Dissection detectors
  and mean best IoU at each family's last layer.

Rule (``discover.evaluation.verdict`` on the paired interval): a claim *holds* when the
interval's low end is above the margin, *does not hold* when its high end is below it, and is
*inconclusive* otherwise (one seed: no interval, inconclusive). Margins: -1 point of top-1 for
claim 2 and the deterministic mode ("at most a point worse"); 0 for claim 3 and the SAE
comparison (the CVN, or the LWTA layer, is *better*: a stricter reading of "at least as
good", which cannot be shown without a margin). Claim 1 is exact: it holds when every run's
measured active fraction is 1/U to 1e-12.

Run (after the studies): ``python benchmarks/evidence.py``; ``--readme`` also rewrites the
verdict block (between ``<!-- evidence:start -->`` and ``<!-- evidence:end -->``) from
``evidence.json`` in every file of :data:`BLOCK_FILES` that holds one: the README and the
documentation's results page (``docs/results.md``), each with links relative to itself.
Results: ``benchmarks/results/evidence.md`` and ``evidence.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from common import (
    REPO,
    interval,
    load_average,
    markdown_table,
    provenance,
    report_header,
    write_json,
)

from discover.evaluation import paired_difference

RESULTS = REPO / "benchmarks" / "results"
README = REPO / "README.md"
BLOCK_FILES = (README, REPO / "docs" / "results.md")  # the files that may hold the verdict block
START, END = "<!-- evidence:start -->", "<!-- evidence:end -->"
ACCURACY_MARGIN = -1.0  # points of top-1
DESCRIPTION_MARGIN = 0.0
LAST_LAYER = {"resnet": "layer3.0.act2", "vit": "blocks.5.mlp.act"}
CLAIMS = {
    "sparsity": "1. sparsity = 1/U",
    "accuracy": "2. accuracy retained",
    "deterministic": "deterministic winners cost nothing",
    "descriptions": "3. descriptions at least as good",
    "sae": "competition vs a TopK SAE",
}
NOT_JUDGED = {
    "descriptions": "Fashion-MNIST: not judged. It has no ground truth for hidden units, and "
    "the offline stand-in for CLIP (ConSE) is 13.4 % zero-shot on its classes (chance 10 %, "
    "`claims-converged.md`), so its labels cannot tell a good description from a bad one.",
}
# claim 3's headline metrics, in the README block
HEADLINE = ("mean_label_auprc_corr", "unique_detectors", "simulation_corr")


MIN_PAIRS = 3  # fewer seeds give no verdict: two pairs that happen to agree make a 0-width interval


def _row(claim: str, dataset: str, model: str, U: int | None, metric: str, d: Any,
         margin: float, source: str, **extra: Any) -> dict[str, Any]:  # fmt: skip
    verdict = d.verdict(margin) if d.n >= MIN_PAIRS else "inconclusive"
    return {
        "claim": claim, "dataset": dataset, "model": model, "U": U, "metric": metric,
        "seeds": extra.pop("seeds"), "n": d.n, "paired_diff_mean": d.mean, "ci_low": d.low,
        "ci_high": d.high, "margin": margin, "verdict": verdict, "split": "test",
        "interval": f"{100 * d.confidence:.0f} % {d.method}", "source": source, **extra,
    }  # fmt: skip


def accuracy_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Claims 1, 2 and the deterministic mode from the accuracy study's records."""
    records = [r for r in data["records"] if r["variant"] in (None, "anneal")]
    by = {(r["dataset"], r["family"], r["U"], r["seed"]): r for r in records}
    rows = []
    for dataset, family, U in sorted({(r["dataset"], r["family"], r["U"]) for r in records}):
        if U == 1:
            continue
        runs = sorted((r for r in records if (r["dataset"], r["family"], r["U"]) ==
                       (dataset, family, U)), key=lambda r: r["seed"])  # fmt: skip
        seeds = [r["seed"] for r in runs]
        off = max(abs(r["active_fraction"] - 1 / U) for r in runs)
        rows.append({
            "claim": "sparsity", "dataset": dataset, "model": family, "U": U,
            "metric": "measured active fraction - 1/U", "seeds": seeds, "n": len(runs),
            "paired_diff_mean": off, "ci_low": -off, "ci_high": off, "margin": None,
            "verdict": "holds" if off <= 1e-12 else "does not hold", "split": "test",
            "interval": "exact (largest deviation over seeds)",
            "source": "accuracy-converged.json",
        })  # fmt: skip
        twins = [r for r in runs if (dataset, family, 1, r["seed"]) in by]
        if twins:
            d = paired_difference(
                [100 * r["top1_sample6"] for r in twins],
                [100 * by[dataset, family, 1, r["seed"]]["top1_sample6"] for r in twins],
            )
            rows.append(_row("accuracy", dataset, family, U, "top-1 sample×6, CVN - dense twin "
                             "(points)", d, ACCURACY_MARGIN, "accuracy-converged.json",
                             seeds=[r["seed"] for r in twins]))  # fmt: skip
        d = paired_difference(
            [100 * r["top1_argmax"] for r in runs], [100 * r["top1_sample6"] for r in runs]
        )
        rows.append(_row("deterministic", dataset, family, U, "top-1 argmax - sample×6 "
                         "(points)", d, ACCURACY_MARGIN, "accuracy-converged.json",
                         seeds=seeds))  # fmt: skip
    return rows


def description_rows(mono: dict[str, Any] | None, loc: dict[str, Any] | None) -> list[dict]:
    """Claim 3 and the SAE comparison from the description studies' paired rows."""
    rows = []
    for p in (mono or {}).get("paired", []):
        claim = "descriptions" if p["comparison"] == "cvn vs dense" else "sae"
        metric = p["metric"] if claim == "descriptions" else f"{p['metric']} vs {p['against']}"
        d = paired_difference(p["differences"], [0.0] * len(p["differences"]))
        rows.append(_row(claim, p["dataset"], p["family"], p["U"], metric, d,
                         DESCRIPTION_MARGIN, "monosemanticity.json", seeds=p["seeds"],
                         title=p["title"]))  # fmt: skip
    if loc:
        found = {
            (r["family"], r["subject"], r["U"], r["seed"]): r
            for r in loc["rows"]
            if r["layer"] == LAST_LAYER[r["family"]]
        }
        for family, U in sorted({(f, U) for f, s, U, _ in found if s == "cvn"}):
            seeds = sorted(s for f, k, u, s in found if (f, k, u) == (family, "cvn", U)
                           and (family, "dense", 1, s) in found)  # fmt: skip
            if not seeds:
                continue
            for key, title in (("unique_detectors", "unique detectors"),
                               ("mean_best_iou", "mean best IoU")):  # fmt: skip
                d = paired_difference(
                    [found[family, "cvn", U, s][key] for s in seeds],
                    [found[family, "dense", 1, s][key] for s in seeds],
                )
                rows.append(_row("descriptions", "shapes", family, U, key, d,
                                 DESCRIPTION_MARGIN, "localization.json", seeds=seeds,
                                 title=f"{title} ({LAST_LAYER[family]})"))  # fmt: skip
    return rows


def _read(name: str) -> dict[str, Any] | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def build(meta: dict[str, Any]) -> dict[str, Any]:
    """The evidence page's data from the studies' results files."""
    acc, mono, loc = (_read(n) for n in
                      ("accuracy-converged.json", "monosemanticity.json", "localization.json"))  # fmt: skip
    if acc is None:
        raise SystemExit("benchmarks/results/accuracy-converged.json is missing: run the study")
    sources = {}
    for name, data in (("accuracy-converged.json", acc), ("monosemanticity.json", mono),
                       ("localization.json", loc)):  # fmt: skip
        if data is not None:
            sources[name] = {k: data.get(k) for k in ("command", "git_head", "date", "machine")}
    rows = accuracy_rows(acc) + description_rows(mono, loc)
    hours = sum(r.get("train_seconds") or 0 for r in acc["records"]) / 3600
    return {**meta, "sources": sources, "training_process_hours": hours, "rows": rows}


def _fmt(row: dict[str, Any]) -> str:
    digits = 2 if row["claim"] in ("accuracy", "deterministic") else 3
    if row["claim"] == "sparsity":
        return f"max |deviation| {row['paired_diff_mean']:.1e}"
    if row["n"] < 2:
        return f"{interval(row['paired_diff_mean'], digits=digits)} (one seed)"
    return interval(row["paired_diff_mean"], row["ci_low"], row["ci_high"], digits=digits)


def _counts(rows: list[dict[str, Any]]) -> str:
    verdicts = [r["verdict"] for r in rows]
    return ", ".join(f"{verdicts.count(v)} {v}" for v in ("holds", "inconclusive",
                     "does not hold") if verdicts.count(v))  # fmt: skip


def readme_block(data: dict[str, Any], root: str = "") -> str:
    """The verdict block, generated from ``evidence.json`` only; ``root`` is the way from the
    file that holds it to the repository root (``""`` for the README, ``"../"`` in docs/)."""
    rows = data["rows"]
    lines = [
        START,
        "",
        f"Generated by `python benchmarks/evidence.py --readme` from "
        f"[`evidence.json`]({root}benchmarks/results/evidence.json) (commit {data['git_head']}); "
        "each CVN against the dense twin of its own seed, mean paired difference with its 95 % "
        f"t interval; fewer than {MIN_PAIRS} seeds give no verdict. Claim 2 holds when the "
        "interval's low end is above -1 point; claim 3 holds when the CVN is better (interval "
        "above 0).",
        "",
    ]
    for claim in ("sparsity", "deterministic"):
        sel = [r for r in rows if r["claim"] == claim]
        if sel:
            lines.append(f"* **{CLAIMS[claim]}**: {_counts(sel)} of {len(sel)} configurations.")
    sae = [r for r in rows if r["claim"] == "sae"]
    if sae:
        lines.append(f"* **{CLAIMS['sae']}** (LWTA better than the SAE): {_counts(sae)} of "
                     f"{len(sae)} comparisons.")  # fmt: skip
    acc = [r for r in rows if r["claim"] == "accuracy"]
    if acc:
        lines += ["", f"**{CLAIMS['accuracy']}** (top-1 sample×6, points):", ""]
        lines += markdown_table(
            ["data set", "model", "U", "seeds", "CVN - dense [95 % CI]", "verdict"],
            [[r["dataset"], r["model"], r["U"], r["n"], _fmt(r), r["verdict"]] for r in acc],
        )
    desc = [r for r in rows if r["claim"] == "descriptions" and r["metric"] in HEADLINE]
    if desc:
        lines += ["", f"**{CLAIMS['descriptions']}** (Shapes, ground truth; all metrics in "
                  "`evidence.md`):", ""]  # fmt: skip
        lines += markdown_table(
            ["model", "U", "metric", "seeds", "CVN - dense [95 % CI]", "verdict"],
            [[r["model"], r["U"], r.get("title", r["metric"]), r["n"], _fmt(r), r["verdict"]]
             for r in desc],
        )  # fmt: skip
        lines += ["", NOT_JUDGED["descriptions"]]
    lines += ["", END]
    return "\n".join(lines)


def write_page(data: dict[str, Any], out: Path, load_end: str | None = None) -> Path:
    """``evidence.json`` and ``evidence.md``; ``load_end``: the load average now."""
    write_json(out / "evidence.json", data)
    lines = [
        *report_header("What the evidence says", data, load_end=load_end),
        "",
        "Every row: one claim on one data set, model and U; the mean paired difference over "
        "seeds (each CVN minus the dense twin of its own seed; each LWTA layer minus the SAE "
        "fitted at its sparsity on the same seed) with its 95 % Student-t interval, and the "
        "verdict of `discover.evaluation.verdict`: *holds* when the low end is above the "
        "margin, *does not hold* when the high end is below it, *inconclusive* otherwise, and "
        f"always with fewer than {MIN_PAIRS} seeds (two pairs that happen to agree give an "
        "interval of width 0). "
        "Margins: -1 point for accuracy; 0 for descriptions and the SAE comparison (the CVN "
        "must be better). Claim 1 is exact. Split: every figure is measured on the test split "
        "(accuracy: the whole test split; descriptions: Shapes test images), read once per "
        "reported number; every design choice was made on validation data (`pilot.md`; model "
        "selection on the held-out 10 % of the training split).",
        "",
        f"Training behind these rows: {data['training_process_hours']:.1f} process-hours "
        "(one torch thread each).",
        "",
        "Sources:",
        "",
    ]
    lines += [f"* `{name}`: `{s['command']}` (commit {s['git_head']}, {s['date']})"
              for name, s in data["sources"].items()]  # fmt: skip
    for claim, title in CLAIMS.items():
        sel = [r for r in data["rows"] if r["claim"] == claim]
        if not sel:
            lines += ["", f"## {title}", "", "No results yet."]
            continue
        lines += ["", f"## {title}", "", f"{_counts(sel)} of {len(sel)}.", ""]
        if claim in NOT_JUDGED:
            lines += [NOT_JUDGED[claim], ""]
        lines += markdown_table(
            ["data set", "model", "U", "metric", "seeds", "paired difference [95 % CI]",
             "verdict"],
            [[r["dataset"], r["model"], r["U"], r.get("title", r["metric"]),
              ", ".join(map(str, r["seeds"])), _fmt(r), r["verdict"]] for r in sel],
        )  # fmt: skip
    path = out / "evidence.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def block_for(path: Path, data: dict[str, Any]) -> str:
    """The verdict block as the file ``path`` (in the repository) holds it."""
    depth = len(path.resolve().parent.relative_to(REPO.resolve()).parts)
    return readme_block(data, "../" * depth)


def update_readme(data: dict[str, Any], files: tuple[Path, ...] = BLOCK_FILES) -> list[Path]:
    """Rewrite the verdict block in every one of ``files`` that holds one."""
    updated = []
    for path in files:
        text = path.read_text() if path.is_file() else ""
        if START not in text or END not in text:
            continue
        head, rest = text.split(START, 1)
        tail = rest.split(END, 1)[1]
        path.write_text(head + block_for(path, data) + tail)
        updated.append(path)
    if not updated:
        names = ", ".join(str(p.relative_to(REPO)) for p in files)
        raise SystemExit(f"none of {names} has a {START} ... {END} block")
    return updated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument(
        "--readme",
        action="store_true",
        help="rewrite the verdict block in the README and in docs/results.md",
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = build(provenance(argv))
    print(f"written: {write_page(data, out, load_average(1, ', '))}")
    if args.readme:
        for path in update_readme(data):
            print(f"updated: {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
