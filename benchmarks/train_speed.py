"""Which of torch's CPU speed levers help the converged study's training (issue 10)?

The converged setting of ``benchmarks/accuracy.py`` trains a small ResNet (widths 16/32/64,
stride-2 stem) and a small ViT (dim 48, depth 6) on 28 px Fashion-MNIST, dense and as CVNs,
with AdamW and label smoothing. This script times full training steps (forward, backward,
optimiser step) of those models on random batches of the same shape, dense (U = 1) and
U = 4, for these variants of the study's choice (batch 128, eager, contiguous, 1 thread):

* ``batch 256``: a larger batch (images per second; the study's lr is tuned for 128);
* ``channels_last`` (ResNets): model and inputs in NHWC memory format;
* ``torch.compile``: inductor on CPU (compile time reported apart, not in the step time);
* ``2 threads``: one process with 2 torch threads;
* ``2 processes``: two processes with 1 thread each, running at the same time (the study's
  ``--jobs 2 --threads 1``), their images per second added up.

Every variant is timed in ``--rounds`` interleaved rounds; the table reports each one's median
images per second and its ratio to the baseline of the same model (medians of per-round
ratios, so slow drifts of the machine cancel). Figures are honest only on an otherwise idle
machine: pause other jobs first. About 5 minutes on 2 cores.

Run:
    python benchmarks/train_speed.py
Results: ``benchmarks/results/train_speed.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from accuracy import SETTINGS
from common import (
    load_average,
    markdown_table,
    process_pool,
    provenance,
    report_header,
    round_ratios,
    write_json,
)

DATASET = "fashion-mnist"
FAMILIES = ("resnet", "vit")
US = (1, 4)
BATCH = 128


def build(family: str, U: int, channels_last: bool = False) -> torch.nn.Module:
    """The converged setting's ``family`` model for Fashion-MNIST at ``U``."""
    from discover import create_model

    spec = SETTINGS["converged"].models[DATASET][family]
    model = create_model(spec["name"], U=U, num_classes=10, **spec["kwargs"]).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def make_step(model: torch.nn.Module, batch: int, channels_last: bool, compiled: bool):
    """One training step on a fixed random batch, as a function; returns (step, compile s)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 1, 28, 28, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), generator=g)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.02)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    forward = torch.compile(model) if compiled else model

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(forward(x), y).backward()
        optimizer.step()

    t0 = time.perf_counter()
    step()  # the first call compiles (or warms the caches)
    step()
    return step, time.perf_counter() - t0


def images_per_second(step, batch: int, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - t0)


def _single_thread_run(args: tuple[str, int, int, Any]) -> float:
    """A worker of the ``2 processes`` variant: waits for its sibling, then times."""
    family, U, steps, barrier = args
    step, _ = make_step(build(family, U), BATCH, False, False)
    barrier.wait()
    return images_per_second(step, BATCH, steps)


def two_processes(family: str, U: int, steps: int) -> float:
    """Images per second of two 1-thread processes training at the same time, added up."""
    with multiprocessing.get_context("spawn").Manager() as manager:
        barrier = manager.Barrier(2)
        with process_pool(2, threads=1) as pool:
            rates = pool.map(_single_thread_run, [(family, U, steps, barrier)] * 2)
            return sum(rates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant and round")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("-U", nargs="+", type=int, default=list(US), dest="U")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    meta = provenance(argv, threads=1)
    rows: list[dict[str, Any]] = []
    for family in args.families:
        for U in args.U:
            variants: dict[str, Any] = {}
            torch.set_num_threads(1)
            variants["baseline"], _ = make_step(build(family, U), BATCH, False, False)
            variants["batch 256"], _ = make_step(build(family, U), 256, False, False)
            if family == "resnet":
                variants["channels_last"], _ = make_step(build(family, U, True), BATCH, True, False)
            compile_seconds, compile_error = None, None
            if not args.no_compile:
                try:
                    variants["torch.compile"], compile_seconds = make_step(
                        build(family, U), BATCH, False, True
                    )
                except Exception as error:  # reported, not fatal: inductor needs a compiler
                    compile_error = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            rates: dict[str, list[float]] = {name: [] for name in [*variants, "2 threads"]}
            rates["2 processes"] = []
            for _ in range(args.rounds):
                torch.set_num_threads(1)
                for name, step in variants.items():
                    batch = 256 if name == "batch 256" else BATCH
                    rates[name].append(images_per_second(step, batch, args.steps))
                torch.set_num_threads(2)
                rates["2 threads"].append(
                    images_per_second(variants["baseline"], BATCH, args.steps)
                )
                torch.set_num_threads(1)
                rates["2 processes"].append(two_processes(family, U, args.steps))
            for name, values in rates.items():
                ratios = round_ratios(values, rates["baseline"])
                rows.append(
                    {
                        "family": family,
                        "U": U,
                        "variant": name,
                        "img_per_s": statistics.median(values),
                        "ratio": statistics.median(ratios),
                        "rounds": values,
                        "compile_seconds": compile_seconds if name == "torch.compile" else None,
                    }
                )
            if compile_error:
                rows.append({"family": family, "U": U, "variant": "torch.compile",
                             "error": compile_error})  # fmt: skip
            print(f"{family} U={U}: " + ", ".join(
                f"{r['variant']} {r['ratio']:.2f}x" for r in rows
                if (r["family"], r["U"]) == (family, U) and "ratio" in r
            ), flush=True)  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "train_speed.json", {**meta, "rows": rows})
    print(f"written: {write_report({**meta, 'rows': rows}, out, load_average(1, ', '))}")
    return 0


def write_report(state: dict[str, Any], out: Path, load_end: str | None = None) -> Path:
    """``train_speed.md``; ``load_end``: the load average at the end of the run."""
    lines = [
        *report_header(
            "Training speed levers on CPU (the converged study's models)", state, load_end=load_end
        ),
        "",
        "Training steps (forward, backward, AdamW) on random 28 px batches of the converged "
        "setting's Fashion-MNIST models. Ratio: images per second against the baseline "
        "(batch 128, eager, contiguous, 1 thread, 1 process) of the same model, median of "
        "per-round ratios. *2 processes*: two 1-thread processes at once, added up (the "
        "study's `--jobs 2 --threads 1`); *2 threads*: one process.",
        "",
    ]
    table = []
    for r in state["rows"]:
        if "error" in r:
            table.append([r["family"], r["U"], r["variant"], "failed", r["error"], ""])
            continue
        extra = f"compile {r['compile_seconds']:.0f} s" if r.get("compile_seconds") else ""
        table.append(
            [
                r["family"],
                r["U"],
                r["variant"],
                f"{r['img_per_s']:.0f}",
                f"{r['ratio']:.2f}x",
                extra,
            ]
        )
    lines += markdown_table(["model", "U", "variant", "img/s", "vs baseline", ""], table)
    path = out / "train_speed.md"
    path.write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    sys.exit(main())
