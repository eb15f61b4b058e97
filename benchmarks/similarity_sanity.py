"""Missing- and extra-labels sanity tests of discover's similarity functions.

After Neuron_Eval (Oikarinen, Yan & Weng, ICML 2025): a sound score must rank a unit's true
concept above the same concept with part of its positive labels removed (*missing labels*)
and above it with spurious positives added (*extra labels*). The exact definition is the
docstring of ``discover.evaluation.groundtruth`` (part B); in short, for a unit that detects
a binary concept column ``c`` and a fraction ``f``:

* ``c_missing``: ``max(1, round(f * #positives))`` random positives of ``c`` set to 0;
* ``c_extra``: ``max(1, round(f * #negatives))`` random negatives of ``c`` set to 1;
* ``P'`` holds ``[c, c_missing, c_extra]`` for every unit of a case (plus random binary
  distractor columns for planted units), ``S = sim(P', Q)`` in float32 as a dissection runs;
* a unit passes a test when ``S[k, c]`` is strictly above the corrupted column's score (a
  tie fails); a function passes a test on a source when it passes in at least 95 % of the
  cases (all fractions and seeds together).

Sources: *planted* units (noisy monotone functions of synthetic binary concepts, as in
``discover.evaluation.planted``) and *shapes* (ShapesWorld's ground-truth concept columns on
a probe, each column being its own unit: a perfect binary detector). Every registered
similarity function runs with its default parameters.

Run ``python benchmarks/similarity_sanity.py`` (about a minute on one thread); it writes
``benchmarks/results/similarity-sanity.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from common import (
    REPO,
    load_average,
    markdown_table,
    percent,
    provenance,
    report_header,
    write_json,
)

from discover.data import ShapesWorld
from discover.dissection.labels import LABEL_DEFAULTS
from discover.dissection.similarity import DEFAULT_SIMILARITY
from discover.evaluation import SanityResult, similarity_sanity

TESTS = ("missing", "extra")


def _rate_table(result: SanityResult, count: str = "passed", by_fraction: bool = False):
    bar = result.config["pass_bar"]
    sources = result.sources
    header = ["similarity"] + (["f"] if by_fraction else [])
    header += [f"{s}: {t}" for s in sources for t in TESTS]
    if not by_fraction and count == "passed":
        header.append(f"passes (>= {100 * bar:g} % everywhere)")
    rows = []
    defaults = {d.similarity: kind for kind, d in LABEL_DEFAULTS.items()}
    for name in result.similarities:
        shown = f"**{name}** (default: {defaults[name]})" if name in defaults else name
        for f in result.config["fractions"] if by_fraction else [None]:
            row: list[Any] = [shown] + ([f"{f:g}"] if by_fraction else [])
            row += [
                percent(result.rate(name, s, t, f, count=count)) for s in sources for t in TESTS
            ]
            if not by_fraction and count == "passed":
                row.append("**yes**" if result.verdicts()[name] else "no")
            rows.append(row)
    return markdown_table(header, rows)


def _failures(result: SanityResult, name: str) -> list[str]:
    bar = result.config["pass_bar"]
    out = []
    for source in result.sources:
        for test in TESTS:
            rate = result.rate(name, source, test)
            if rate < bar:
                tied = result.rate(name, source, test, count="tied")
                share = tied / (1 - rate) if rate < 1 else 0.0
                out.append(
                    f"{test} labels on {source} ({percent(rate)} % passed; "
                    f"{100 * share:.0f} % of the failures are exact ties)"
                )
    return out


def _verdict_lines(result: SanityResult) -> list[str]:
    verdicts = result.verdicts()
    passing = [n for n, ok in verdicts.items() if ok]
    failing = [n for n, ok in verdicts.items() if not ok]
    lines = [
        "- **Pass both tests on both sources:** "
        + (", ".join(f"`{n}`" for n in passing) if passing else "none")
        + ".",
        "- **Fail:** " + (", ".join(f"`{n}`" for n in failing) if failing else "none") + ".",
    ]
    for name in failing:
        lines.append(f"  - `{name}` fails " + "; ".join(_failures(result, name)) + ".")
    for kind, defaults in LABEL_DEFAULTS.items():
        name = defaults.similarity
        lines.append(
            f"- **discover's default for `{kind}` embedders (`{name}`) "
            + ("passes" if verdicts.get(name) else "fails")
            + " the sanity tests.**"
        )
    lines.append(
        "  The defaults are chosen by label and explanation precision on a validation split "
        "(`benchmarks/results/label_quality.md`); this benchmark only reports."
    )
    return lines


def _notes(result: SanityResult) -> list[str]:
    """Explanations, each printed only where the measured tie rates bear it out."""
    notes = []
    names = result.similarities

    def tied(name: str, source: str, test: str) -> float:
        return result.rate(name, source, test, count="tied")

    if "soft_wpmi" in names and all(
        tied("soft_wpmi", s, t) > 0.9 for s in result.sources for t in TESTS
    ):
        notes.append(
            "- `soft_wpmi` (lambda = 1) scores nearly every unit's three columns exactly "
            "equal. Its score is `L[k, m] - logsumexp_j L[j, m] + log K`, the prior taken over "
            "the units scored together. When a unit is the only one whose top images carry "
            "the concept, its own `L` dominates the prior of `c`, `c_missing` and `c_extra` "
            "alike, and all three scores saturate at `log K` (to float32 precision). It "
            "measures how much more this unit likes a concept than the other units do, not "
            "how well the concept's labels match the unit. Here every concept has exactly "
            "one unit that detects it; in a layer where several units share a concept the "
            "prior is not one unit's own score, and this saturation is weaker."
        )
    if "wpmi" in names and any(tied("wpmi", s, "extra") > 0.5 for s in result.sources):
        notes.append(
            "- `wpmi` looks only at each unit's top 28 images. They are positives of `c`, so "
            "of `c_extra` too: the two columns agree on them, so their evidence `L` is the "
            "same, and their priors, dominated by the unit itself, agree too. Extra labels "
            "elsewhere are invisible to it, the failure Neuron_Eval reports for WPMI (58.8 % "
            "on its extra-labels test). It passes missing labels once the corruption reaches "
            "the top images."
        )
    if "rank_reorder" in names and "shapes" in result.sources:
        if min(tied("rank_reorder", "shapes", t) for t in TESTS) > 0.9:
            notes.append(
                "- `rank_reorder` on the shapes source: a binary unit's top 5 % images all "
                "have activation 1, so its random-order baseline is 0 and it scores 0 against "
                "every concept (a documented guard in `similarity.py`): all ties."
            )
    if notes:
        notes.insert(0, "Why the failures that are ties happen (checked on the tie rates above):")
    return notes


def render_markdown(rec: dict[str, Any], result: SanityResult, load_end: str | None = None) -> str:
    """The report; ``load_end``: the load average at the end of the run."""
    cfg, meta, prov = rec["config"], rec["meta"], rec["provenance"]
    sources = meta["sources"]
    planted, shapes = sources.get("planted"), sources.get("shapes")
    out = [
        *report_header(
            "Similarity sanity tests: missing and extra labels",
            prov,
            took=f" (run took {rec['seconds']:.0f} s)",
            load_end=load_end,
        ),
        "",
        "Does each similarity function of `discover.dissection.similarity` score a unit's "
        "true concept above a corrupted copy of it? After Neuron_Eval (Oikarinen, Yan & Weng, "
        "ICML 2025). Produced by `benchmarks/similarity_sanity.py` with "
        "`discover.evaluation.similarity_sanity`; the definitions are in the docstring of "
        "`discover/evaluation/groundtruth.py` (part B).",
        "",
        "## Setup",
        "",
        "For a unit that detects a binary concept column `c` and a fraction `f`: `c_missing` "
        "is `c` with `max(1, round(f * #positives))` random positives set to 0, `c_extra` is "
        "`c` with `max(1, round(f * #negatives))` random negatives set to 1. All units of a "
        "case are scored together, `S = sim(P', Q)` in float32 with default parameters, where "
        "`P'` holds `[c, c_missing, c_extra]` for every unit (one unit's corrupted columns are "
        "distractors for the others). A unit passes the missing-labels test when "
        "`S[k, c] > S[k, c_missing]` and the extra-labels test when `S[k, c] > S[k, c_extra]`; "
        "**a tie fails**. A function passes a test on a source when it passes in at least "
        f"{100 * cfg['pass_bar']:g} % of the cases, all fractions and seeds together.",
        "",
        f"- Fractions `f`: {', '.join(f'{f:g}' for f in cfg['fractions'])}; seeds: "
        f"{', '.join(map(str, cfg['seeds']))} (one case per seed and fraction).",
    ]
    if planted:
        lo, hi = cfg["base_rates"]
        out.append(
            f"- **planted**: {planted['units']} binary concepts per seed on "
            f"{planted['images']} images, base rates uniform in [{lo:g}, {hi:g}], each with a "
            f"unit `y = t(zscore(c) + {cfg['planted_noise']:g} eps)` "
            f"(`{cfg['planted_variant']}` variant, `t` linear, exp or tanh per unit), plus "
            f"{planted['distractors']} random binary distractor columns in `P'`; "
            f"{planted['units'] * len(cfg['seeds'])} cases per fraction and test."
        )
    if shapes:
        out.append(
            f"- **shapes**: ShapesWorld (`split='val'`, seed {rec['shapes_seed']}) ground-truth "
            f"table on {shapes['images']} probe images, {shapes['units']} concept columns, each "
            "column its own unit (a perfect binary detector, with many tied activations); "
            f"{shapes['units'] * len(cfg['seeds'])} cases per fraction and test"
            + (
                f" ({shapes['skipped_columns']} columns skipped)"
                if shapes.get("skipped_columns")
                else ""
            )
            + "."
        )
    out += ["", "## Verdict", "", *_verdict_lines(result), ""]
    out += ["## Pass rates (%)", "", *_rate_table(result), ""]
    out += [
        "## Tie rates (%)",
        "",
        "Cases where the true and the corrupted column scored exactly equal (counted as "
        "failures above).",
        "",
        *_rate_table(result, count="tied"),
        "",
    ]
    out += ["## Pass rates (%) by fraction", "", *_rate_table(result, by_fraction=True), ""]
    notes = _notes(result)
    if notes:
        out += ["## Notes", "", *notes, ""]
    seconds = ", ".join(f"{k} {v:.1f} s" for k, v in meta["seconds"].items())
    out += [f"Time per function (all cases): {seconds}.", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--images", type=int, default=4000, help="ShapesWorld probe images")
    parser.add_argument("--shapes-seed", type=int, default=0)
    parser.add_argument("--planted-images", type=int, default=4000)
    parser.add_argument("--planted-units", type=int, default=50)
    parser.add_argument("--noise", type=float, default=1.0, help="planted unit noise")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25, 0.5])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..SEEDS-1")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    probe = ShapesWorld(n=args.images, split="val", seed=args.shapes_seed)
    result = similarity_sanity(
        probe.concepts_table(),
        source="shapes",
        fractions=tuple(args.fractions),
        seeds=tuple(range(args.seeds)),
        planted_units=args.planted_units,
        planted_images=args.planted_images,
        planted_noise=args.noise,
        progress=True,
    )
    rec = {
        "provenance": provenance(argv, threads=args.threads),
        "seconds": round(time.perf_counter() - start, 1),
        "shapes_seed": args.shapes_seed,
        "shapes_concepts": probe.concept_names,
        "default_similarity": DEFAULT_SIMILARITY,
        "label_defaults": {kind: d.similarity for kind, d in LABEL_DEFAULTS.items()},
        "verdicts": result.verdicts(),
        **result.to_dict(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "similarity-sanity.json", rec)
    markdown = render_markdown(rec, result, load_average(1, ", "))
    (args.out / "similarity-sanity.md").write_text(markdown)
    print(f"wrote {args.out / 'similarity-sanity.md'} and .json ({rec['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
