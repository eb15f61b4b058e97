"""Dissection at scale: peak memory and wall time of every similarity function against the
probe size N, streamed (``discover.dissection.streaming``) and in memory (issue 25).

Synthetic data, stated: image vectors ``N x D`` (D = 512, like a CLIP ViT-B) and concept
vectors ``M x D`` (M = 20,000, the 20k vocabulary), both L2-normalised Gaussian, so that ``P``
is the matrix of their cosines, as a CLIP's; activations ``Q`` ``N x K`` (K = 768, a
DeiT-Base / ViT-B width) from a ReLU of Gaussians. All seeded, written once per N as row
files (``RowWriter``), 4,096 rows per file. Each measurement runs in a fresh process, its
peak resident memory (``ru_maxrss``) and wall time recorded:

* **streamed**: ``streamed_similarity(name, ProductRows(FileRows(images), texts),
  FileRows(Q))``, the path of ``dissect(stream=True)`` (its label significance, 16 more
  streamed draws of ``corr``, is not included);
* **in memory**: ``P = V T^T`` and ``Q`` materialised, then the in-memory function, where
  ``N M`` float32 values fit in ``--memory-cap`` GB (else the row says so);
* **reference** (computed, not run): CLIP-Dissect keeps ``P`` and ``Q`` whole:
  ``4 N (M + K)`` bytes before any temporary.

Ranks: a sharded or torchrun dissection splits the *recording* over processes; its scores
are computed once, by process 0, streamed from the shards' files, so its scoring memory is
the streamed row's.

Run:
    python benchmarks/scale.py --sizes 10000 100000 1000000
    python benchmarks/scale.py --sizes 10000 --functions cos corr soft_wpmi   # a subset
Results: ``benchmarks/results/scale.{md,json,png}``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import load_average, markdown_table, provenance, report_header, write_json

FUNCTIONS = ("cos", "corr", "cos3", "wpmi", "soft_wpmi", "rank_reorder", "jsd")
D, M, K = 512, 20_000, 768
BLOCK = 4096
FLAT = 1.5  # the bar: peak memory at N = 1M within 1.5x of N = 10k


def make_data(folder: Path, N: int, seed: int = 0) -> None:
    """The synthetic image vectors, concept vectors and activations of size ``N``."""
    from safetensors.torch import save_file

    from discover.dissection.rows import RowWriter

    if (folder / "texts.safetensors").is_file():
        return
    g = torch.Generator().manual_seed(seed)
    texts = torch.nn.functional.normalize(torch.randn(M, D, generator=g) + 0.3, dim=1)
    with RowWriter(folder / "images") as images, RowWriter(folder / "q") as q:
        for start in range(0, N, BLOCK):
            n = min(BLOCK, N - start)
            images.append(
                torch.nn.functional.normalize(torch.randn(n, D, generator=g) + 0.3, dim=1)
            )
            q.append(torch.relu(torch.randn(n, K, generator=g)))
    save_file({"texts": texts}, folder / "texts.safetensors")


def measure_here(folder: Path, name: str, mode: str, threads: int) -> dict[str, Any]:
    """One function on one data set, in this process: seconds, peak RSS (GB), S's shape."""
    from safetensors.torch import load_file

    from discover.dissection.rows import FileRows, ProductRows
    from discover.dissection.similarity import get_similarity
    from discover.dissection.streaming import streamed_similarity

    torch.set_num_threads(threads)
    texts = load_file(folder / "texts.safetensors")["texts"]
    t0 = time.perf_counter()
    if mode == "streamed":
        P = ProductRows(FileRows(folder / "images"), texts)
        S = streamed_similarity(name, P, FileRows(folder / "q"))
    else:
        images = torch.cat([b for _, b in FileRows(folder / "images").blocks(BLOCK)])
        Q = torch.cat([b for _, b in FileRows(folder / "q").blocks(BLOCK)])
        S = get_similarity(name)(images @ texts.T, Q)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KB -> GB
    return {"seconds": seconds, "peak_gb": peak, "shape": list(S.shape), "threads": threads}


def measure(folder: Path, name: str, mode: str, threads: int) -> dict[str, Any]:
    """:func:`measure_here` in a fresh process (its own peak memory)."""
    done = subprocess.run(
        [sys.executable, __file__, "--one", str(folder), name, mode, str(threads)],
        capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        return {"error": f"exit code {done.returncode}: {done.stderr.strip()[-200:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def reference_gb(N: int) -> float:
    """CLIP-Dissect's P and Q held whole: ``4 N (M + K)`` bytes."""
    return 4 * N * (M + K) / 1e9


def flatness(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per function: streamed peak memory at the largest N measured over the smallest, and
    whether it is within :data:`FLAT` (the issue's bar: N = 1M within 1.5x of N = 10k)."""
    out = []
    for name in FUNCTIONS:
        done = sorted(
            (
                r
                for r in rows
                if r["function"] == name and r["mode"] == "streamed" and "peak_gb" in r
            ),
            key=lambda r: r["N"],
        )
        if len(done) < 2:
            continue
        small, large = done[0], done[-1]
        ratio = large["peak_gb"] / small["peak_gb"]
        out.append({"function": name, "from": small["N"], "to": large["N"], "ratio": ratio,
                    "flat": ratio <= FLAT, "complete": large["N"] >= 1_000_000})  # fmt: skip
    return out


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Peak memory against N: streamed and in memory per function, the reference computed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    sizes = sorted({r["N"] for r in rows})
    ax.plot(sizes, [reference_gb(n) for n in sizes], "k:", label="reference: P and Q whole")
    for i, name in enumerate(FUNCTIONS):
        for mode, style in (("streamed", "-o"), ("in memory", "--x")):
            done = sorted(
                (r for r in rows if r["function"] == name and r["mode"] == mode and "peak_gb" in r),
                key=lambda r: r["N"],
            )
            if done:
                ax.plot([r["N"] for r in done], [r["peak_gb"] for r in done], style,
                        color=f"C{i}", label=f"{name}, {mode}")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("probe images N")
    ax.set_ylabel("peak resident memory (GB)")
    ax.set_title(f"Dissection memory against N (K = {K}, M = {M:,})")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(state: dict[str, Any], out: Path) -> Path:
    """``scale.json``, ``scale.md`` and ``scale.png`` from the rows measured so far."""
    rows = state["rows"]
    state["flatness"] = flatness(rows)
    write_json(out / "scale.json", state)
    if rows:
        plot(rows, out / "scale.png")
    lines = [
        *report_header(
            "Dissection at scale: memory and time against the probe size",
            state,
            load_end=load_average(1, ", "),
        ),
        "",
        f"Synthetic data (see `benchmarks/scale.py`): K = {K} units, M = {M:,} concepts, "
        f"D = {D}. Peak: resident memory of the process (``ru_maxrss``), the data loading "
        "included; the reference column is CLIP-Dissect's P and Q held whole, computed from "
        "the shapes. Significance draws are not included. Rows are measured one process each "
        "and kept across runs (each row carries its commit and thread count); times from "
        "rows with 1 thread, or measured while other jobs ran, are not comparable with others.",
        "",
        "A sharded or torchrun dissection records on every rank but scores once, on rank 0, "
        "streamed from the shards' files: its scoring memory is the streamed row's.",
        "",
        "![memory against N](scale.png)",
        "",
    ]
    table = []
    for r in rows:
        if "seconds" in r:
            cell = f"{r['seconds']:.1f} s, {r['peak_gb']:.2f} GB"
        else:
            cell = r.get("error", "")
        table.append([f"{r['N']:,}", r["function"], r["mode"], cell, r.get("threads", ""),
                      r.get("git_head", ""), f"{reference_gb(r['N']):.1f} GB"])  # fmt: skip
    lines += markdown_table(
        ["N", "function", "path", "time, peak memory", "threads", "commit", "reference"], table
    )
    lines += ["", "## Memory flat in N (streamed)", ""]
    lines += markdown_table(
        ["function", "N from -> to", "peak ratio", f"within {FLAT}x"],
        [[f["function"], f"{f['from']:,} -> {f['to']:,}", f"{f['ratio']:.2f}x",
          ("yes" if f["flat"] else "**no**") + ("" if f["complete"] else " (1M not yet measured)")]
         for f in state["flatness"]],
    )  # fmt: skip
    path = out / "scale.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--functions", nargs="+", default=list(FUNCTIONS), choices=FUNCTIONS)
    parser.add_argument("--memory-cap", type=float, default=6.0, help="GB for in-memory P")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per measurement")
    parser.add_argument("--fresh", action="store_true", help="measure again rows already kept")
    parser.add_argument("--workdir", default="benchmarks/runs/scale")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--one", nargs=4, metavar=("FOLDER", "FUNCTION", "MODE", "THREADS"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args(argv)
    if args.one:  # a measurement's own process
        folder, name, mode, threads = args.one
        print(json.dumps(measure_here(Path(folder), name, mode, int(threads))))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = provenance(argv, threads=args.threads, script=__file__)
    kept = [] if args.fresh or not (out / "scale.json").is_file() else (
        json.loads((out / "scale.json").read_text())["rows"]
    )  # fmt: skip
    done = {(r["N"], r["function"], r["mode"]) for r in kept if "error" not in r}
    state: dict[str, Any] = {**meta, "rows": [r for r in kept if "error" not in r]}
    for N in args.sizes:
        folder = Path(args.workdir) / f"n{N}"
        make_data(folder, N)
        for name in args.functions:
            for mode in ("streamed", "in memory"):
                if (N, name, mode) in done:
                    continue
                row: dict[str, Any] = {"N": N, "function": name, "mode": mode}
                if mode == "in memory" and 4 * N * M / 1e9 > args.memory_cap:
                    row["error"] = f"P alone is {4 * N * M / 1e9:.0f} GB (> {args.memory_cap} GB)"
                else:
                    row.update(measure(folder, name, mode, args.threads))
                row.update(git_head=meta["git_head"], date=meta["date"])
                state["rows"].append(row)
                state["rows"].sort(
                    key=lambda r: (r["N"], FUNCTIONS.index(r["function"]), r["mode"])
                )
                print(row, flush=True)
                write_report(state, out)
    print(f"written: {write_report(state, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
