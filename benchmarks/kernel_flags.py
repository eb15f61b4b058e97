"""The C kernels compiled with several flag sets, side by side: speed, agreement, and whether
loading and running them leaves the process's floating point alone.

Variants, set through ``$DISCOVER_C_FLAGS``: ``old`` (discover <= 0.3's flags,
``-march=native -ffast-math``), ``portable`` (no fast-math, no CPU-specific code),
``fast-math, portable``, ``old + NaN semantics`` (``-fno-finite-math-only``), ``vectorising,
native`` (the individual vectorising flags with ``-march=native`` and
``-ffinite-math-only``: discover's flags for one commit) and ``current``
(:func:`discover.nn.lwta_kernel.compile_flags`: the vectorising flags, portable and with NaN
semantics). Every variant is compiled and then linked
apart, as discover now builds its kernels: the old one-step ``gcc -ffast-math -shared`` build also linked GCC's ``crtfastmath``, which
switched the whole process to flush-to-zero on load (``tests/test_utils.py`` fails on that
code). Each round runs one fresh process per variant (the order rotating by round). In each
process, with one torch thread, after one warm-up call per kernel:

* ``lwta``: :class:`discover.LWTA` (``U = 4``, training mode, its fused kernel) forward +
  backward on a ``(32, 128, 16, 16)`` float32 conv tensor;
* ``soft_wpmi``: :func:`discover.dissection.similarity.soft_wpmi` (its C sums) with
  ``N = 4000`` images, ``K = 128`` units, ``M = 4000`` concepts;
* ``cos3``: :func:`discover.dissection.similarity.cos3` (its C centring and cubing), same
  sizes;

each timed 5 times (median). Agreement: the largest difference between a variant's outputs
and the old build's on the same inputs, relative to the largest output (LWTA: same seed).
Floating point: after running every kernel, whether ``2.2250738585072014e-308 / 2`` (a
subnormal) is still nonzero in Python and ``torch.tensor(1e-40) * 1`` in torch.

Run: ``python benchmarks/kernel_flags.py`` (about 2 min) ->
``benchmarks/results/kernel_flags.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import (
    load_average,
    markdown_table,
    median_seconds,
    provenance,
    report_header,
    rotation,
    round_ratios,
    write_json,
)
from safetensors.torch import load_file, save_file

OLD_FLAGS = ("-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC")
FAST_PORTABLE = ("-O3", "-ffast-math", "-fopenmp", "-fPIC")
NAN_SAFE = ("-O3", "-march=native", "-ffast-math", "-fno-finite-math-only", "-fopenmp", "-fPIC")
PORTABLE = ("-O3", "-fno-math-errno", "-fopenmp", "-fPIC")
# discover's flags before the build became CPU-independent and NaN-preserving
NATIVE_VECTORISING = (
    "-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fno-signed-zeros",
    "-fassociative-math", "-freciprocal-math", "-ffinite-math-only", "-fopenmp", "-fPIC",
)  # fmt: skip
N, K, M = 4000, 128, 4000


def _worker(flags: list[str] | None, out: str) -> None:
    """Time every kernel with ``flags`` (``None``: discover's own) in this process."""
    import os

    import torch

    if flags is not None:  # before any kernel is built or loaded
        os.environ["DISCOVER_C_FLAGS"] = " ".join(flags)
    torch.set_num_threads(1)
    from discover.dissection.similarity import cos3, soft_wpmi
    from discover.nn.lwta import LWTA

    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 128, 16, 16, generator=g, requires_grad=True)
    upstream = torch.randn(32, 128, 16, 16, generator=g)
    P = torch.rand(N, M, generator=g)
    Q = torch.randn(N, K, generator=g)
    layer = LWTA(U=4).train()

    def lwta() -> torch.Tensor:
        torch.manual_seed(1)
        x.grad = None
        y = layer(x)
        y.backward(upstream)
        return torch.cat([y.detach().flatten(), x.grad.flatten()])

    calls = {"lwta": lwta, "soft_wpmi": lambda: soft_wpmi(P, Q), "cos3": lambda: cos3(P, Q)}
    result: dict = {"seconds": {}, "outputs": {}}
    for name, call in calls.items():
        out_t = call()  # warm-up (and the build, on first use)
        result["seconds"][name] = median_seconds(call, 5)
        save_file({"out": out_t.contiguous()}, f"{out}.{name}.safetensors")
    result["python_subnormal_survives"] = 2.2250738585072014e-308 / 2 != 0.0
    result["torch_subnormal_survives"] = bool((torch.tensor(1e-40) * 1).item() != 0.0)
    Path(out).write_text(json.dumps(result))


def _run(flags: list[str] | None, out: Path) -> dict:
    command = [sys.executable, __file__, "--worker", str(out)]
    if flags is not None:
        command.append(f"--flags={' '.join(flags)}")  # one argument: flags look like options
    subprocess.run(command, check=True)
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--flags", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args.flags.split() if args.flags is not None else None, args.worker)
        return 0

    from discover.nn.lwta_kernel import compile_flags

    current_flags = compile_flags()

    meta = provenance(argv, script=__file__)
    variants = {
        "old": list(OLD_FLAGS),
        "portable": list(PORTABLE),
        "fast-math, portable": list(FAST_PORTABLE),
        "old + NaN semantics": list(NAN_SAFE),
        "vectorising, native": list(NATIVE_VECTORISING),
        "current": None,
    }
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name in rotation(list(variants), r):
                out = Path(tmp) / f"{name}-{r}.json"
                runs[name].append(_run(variants[name], out))
                for kernel in runs[name][-1]["seconds"]:
                    runs[name][-1].setdefault("files", {})[kernel] = f"{out}.{kernel}.safetensors"
        agreement: dict[str, dict[str, float]] = {}
        for name in variants:
            for kernel in runs["old"][0]["seconds"]:
                a = load_file(runs["old"][0]["files"][kernel])["out"]
                b = load_file(runs[name][0]["files"][kernel])["out"]
                scale = float(a.abs().max()) or 1.0
                agreement.setdefault(name, {})[kernel] = float((a - b).abs().max()) / scale
    rows, table = [], []
    for kernel in runs["old"][0]["seconds"]:
        old = [run["seconds"][kernel] for run in runs["old"]]
        for name in variants:
            times = [run["seconds"][kernel] for run in runs[name]]
            ratios = round_ratios(times, old)
            rows.append(
                {
                    "kernel": kernel,
                    "variant": name,
                    "flags": " ".join(variants[name] or current_flags),
                    "seconds_median": statistics.median(times),
                    "paired_ratio_to_old": statistics.median(ratios),
                    "max_relative_difference_to_old": agreement[name][kernel],
                }
            )
            table.append(
                [
                    kernel,
                    name,
                    f"{statistics.median(times):.3f}",
                    f"{statistics.median(ratios):.2f}x",
                    f"{agreement[name][kernel]:.1e}",
                ]
            )
    survive = {
        name: all(
            run["python_subnormal_survives"] and run["torch_subnormal_survives"]
            for run in runs[name]
        )
        for name in runs
    }
    state = {
        **meta,
        "variants": {name: list(flags or current_flags) for name, flags in variants.items()},
        "rows": rows,
        "subnormals_survive": survive,
        "raw": {name: [run["seconds"] for run in runs[name]] for name in runs},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "kernel_flags.json", state)
    lines = [
        *report_header(
            "C kernel flags: speed, agreement and the process's floating point",
            state,
            load_end=load_average(1, ", "),
        ),
        "",
        "Produced by `benchmarks/kernel_flags.py`; how it measures is in its docstring.",
        "",
        *(f"- **{name}:** `{' '.join(flags)}`" for name, flags in state["variants"].items()),
        "- **Link:** `-shared -fopenmp` (compiled and linked apart)",
        f"- **Rounds:** {args.rounds} (a fresh process per variant and round, order rotating)",
        "",
        *markdown_table(
            ["kernel", "flags", "s (median)", "time / old (paired)", "max rel. difference to old"],
            table,
        ),
        "",
        "Subnormals survive loading and running every kernel (Python and torch): "
        + ", ".join(f"{k}: {'yes' if v else '**no**'}" for k, v in survive.items())
        + ".",
    ]
    (out / "kernel_flags.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
