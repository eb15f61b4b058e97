"""Speed of discover's LWTA against the reference code path and the plain activation.

What is measured
----------------
Training-mode forward + backward wall-clock time, on the same inputs, of

* ``discover`` -- :class:`discover.LWTA` in ``train()`` mode (the fused straight-through
  Gumbel-softmax autograd Function);
* ``reference`` -- a transcription, written for this benchmark, of the reference code path
  described in ``method.md`` §2.4: Gumbel noise ``-log(-log(r + eps) + eps)`` with
  ``r ~ U(0, 1)`` and ``eps = 1e-8``, redrawn if ``torch.isnan(g).any() or
  torch.isinf(g).any()``; ``soft = softmax((h + g) / tau)`` over the U axis; a one-hot
  ``torch.zeros_like(soft).scatter_(dim, argmax, 1.0)``; the straight-through
  ``mask = hard - soft.detach() + soft``; output ``h * mask``, all through plain autograd;
* ``plain`` -- the activation LWTA replaces (GELU for tokens, ReLU for conv maps).

Layer cases: a ``(64, 197, 768)`` token tensor (competition over the last dim) and a
``(32, 256, 28, 28)`` conv tensor (competition over ``U`` consecutive channels at every
position), ``U`` in {2, 8}; the input requires grad and the backward pass gets a fixed random
upstream gradient. Model cases: timm ``deit_tiny_patch16_224`` (``U=8`` vs ``U=1``) and
``resnet18`` (``U=4`` vs ``U=1``), built with :func:`discover.create_model` (random init,
nothing is downloaded), batch 8 at 224 px, ``train()`` mode, one cross-entropy forward +
backward. Both twins of a model get the same weights and the same batch.

How it is timed
---------------
All variants of one case run round-robin (one call each per round, the starting variant
rotating every round), so machine noise hits them alike. Warm-up rounds are discarded; the
table reports the median and the interquartile range (IQR, q1-q3) of the timed rounds, and the
ratios of medians, per-round (paired) ratios and ratios of the fastest rounds. ``torch`` runs
with its default thread count unless ``--threads`` says otherwise. The report also records how
much CPU other processes used during the run (from /proc/stat), since a shared machine skews
multi-threaded timings. Before timing, a correctness check feeds identical Gumbel noise to
``discover`` and ``reference`` (float64; aligned by a shared RNG seed, or failing that by
replacing ``discover.lwta.gumbel_noise``) and requires the same winners, outputs and input
gradients. "saved MB" is the size of the tensors autograd
keeps for backward (unique storages, input included), measured with
``torch.autograd.graph.saved_tensors_hooks``: a cheap, deterministic stand-in for the
activation memory a variant adds in training. It is not a peak-RSS measurement.

Targets: ``discover / reference <= 0.5`` on every layer case and
``discover model / dense twin <= 1.25`` on every model case.

Run (from the repository root)::

    .venv/bin/python benchmarks/lwta_speed.py                 # full run, writes benchmarks/results/
    .venv/bin/python benchmarks/lwta_speed.py --quick         # small shapes, smoke run
    .venv/bin/python benchmarks/lwta_speed.py --repeats 30 --device cuda --out /tmp/bench

Outputs ``<out>/lwta_speed.md`` (table and machine details) and ``<out>/lwta_speed.json``
(every timed round).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import discover
import discover.lwta as discover_lwta
from discover import LWTA

TAU = 1.67  # method.md §2.4 training temperature (discover's default too)
REF_EPS = 1e-8  # the DeiT copy of the reference code
LAYER_TARGET = 0.5  # discover / reference
MODEL_TARGET = 1.25  # discover model / dense twin

Step = Callable[[], None]


# -- the reference code path (method.md §2.4), transcribed -----------------------------------
def reference_gumbel(like: torch.Tensor, eps: float = REF_EPS) -> torch.Tensor:
    """Gumbel noise as the reference code writes it, with its NaN/Inf redraw check."""
    r = torch.rand_like(like)
    g = -torch.log(-torch.log(r + eps) + eps)
    if torch.isnan(g).any() or torch.isinf(g).any():
        r = torch.rand_like(like)
        g = -torch.log(-torch.log(r + eps) + eps)
    return g


def reference_lwta(
    x: torch.Tensor,
    U: int,
    tau: float = TAU,
    noise: torch.Tensor | None = None,
    eps: float = REF_EPS,
) -> torch.Tensor:
    """Reference-style straight-through Gumbel-softmax LWTA (training mode).

    ``x`` is ``(N, C, H, W)`` (blocks of ``U`` consecutive channels, competition over dim 2 of
    the ``(N, C/U, U, H, W)`` view) or ``(..., K)`` (competition over the last dim of the
    ``(..., K/U, U)`` view). ``noise`` (shaped like the view) replaces the sampled Gumbel
    noise and ``eps`` is the reference's guard; the correctness check changes them, the timed
    runs do not.
    """
    if x.dim() == 4:
        n, c, hh, ww = x.shape
        h = x.view(n, c // U, U, hh, ww)
        dim = 2
    else:
        h = x.view(*x.shape[:-1], x.shape[-1] // U, U)
        dim = -1
    g = reference_gumbel(h, eps) if noise is None else noise
    soft = torch.softmax((h + g) / tau, dim=dim)
    index = soft.argmax(dim=dim, keepdim=True)
    hard = torch.zeros_like(soft).scatter_(dim, index, 1.0)
    mask = hard - soft.detach() + soft
    return (h * mask).view(x.shape)


# -- correctness cross-check -------------------------------------------------------------------
def value_keyed_gumbel(like: torch.Tensor) -> torch.Tensor:
    """Deterministic Gumbel-like noise computed from each element's own value.

    Both implementations get the noise of a unit from that unit's pre-activation, so they see
    the same noise whatever internal layout (view, transpose) discover uses for its blocks.
    """
    u = torch.frac(torch.sin(like.detach() * 12.9898).abs() * 43758.5453).clamp(1e-12, 1 - 1e-12)
    return -torch.log(-torch.log(u))


@contextlib.contextmanager
def keyed_discover_noise(calls: list[int]) -> Iterator[None]:
    """Make ``discover.lwta.gumbel_noise`` return :func:`value_keyed_gumbel`; count calls."""
    original = discover_lwta.gumbel_noise

    def patched(like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        calls.append(1)
        return value_keyed_gumbel(like)

    discover_lwta.gumbel_noise = patched  # type: ignore[assignment]
    try:
        yield
    finally:
        discover_lwta.gumbel_noise = original


def _lwta_pair(
    x: torch.Tensor, grad_out: torch.Tensor, U: int, align: str, seed: int
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor], bool]:
    """Forward + backward of discover and reference with noise aligned by ``align``.

    ``"seeded"``: both draw their uniforms from the same RNG state (the reference with
    ``eps = 0`` so that its noise is exactly ``-log(-log(r))``); this works when discover draws
    one uniform tensor in memory order. ``"patched"``: ``discover.lwta.gumbel_noise`` is
    replaced by :func:`value_keyed_gumbel` and the reference gets the same noise. Returns
    ((y, grad) discover, (y, grad) reference, whether the noise could be injected).
    """
    results = []
    calls: list[int] = []
    for impl in ("discover", "reference"):
        xi = x.clone().requires_grad_(True)
        torch.manual_seed(seed)
        if impl == "discover":
            ctx = keyed_discover_noise(calls) if align == "patched" else contextlib.nullcontext()
            with ctx:
                y = LWTA(U, tau=TAU).train()(xi)
        elif align == "patched":
            view = (
                (x.shape[0], x.shape[1] // U, U, *x.shape[2:])
                if x.dim() == 4
                else (*x.shape[:-1], x.shape[-1] // U, U)
            )
            y = reference_lwta(xi, U, noise=value_keyed_gumbel(x.view(view)))
        else:
            y = reference_lwta(xi, U, eps=0.0)
        y.backward(grad_out)
        results.append((y.detach(), xi.grad))
    return results[0], results[1], align == "seeded" or bool(calls)


def cross_check(device: torch.device, seed: int) -> list[dict[str, Any]]:
    """Same noise into discover and reference: same winners, outputs and input gradients.

    Aligning the noise of two implementations needs a way in. Two are tried, in order:
    seeded RNG replay, then replacing ``discover.lwta.gumbel_noise`` (see :func:`_lwta_pair`).
    The first that gives identical winners is reported; if neither does, the row says the
    noise could not be aligned (``ok: False``).
    """
    rows = []
    gen = torch.Generator().manual_seed(seed)
    for kind, shape in (("tokens", (2, 197, 768)), ("conv", (2, 256, 14, 14))):
        for U in (2, 8):
            x = torch.randn(shape, generator=gen, dtype=torch.float64).to(device)
            grad_out = torch.randn(shape, generator=gen, dtype=torch.float64).to(device)
            for align in ("seeded", "patched"):
                (y_d, g_d), (y_r, g_r), injected = _lwta_pair(x, grad_out, U, align, seed)
                same = bool(torch.equal(y_d != 0, y_r != 0))
                if injected and same:
                    break
            row = {
                "case": f"{kind} {tuple(shape)} U={U}",
                "noise_aligned_by": align if injected and same else "none (could not align)",
                "same_winners": same,
                "active_fraction": (y_d != 0).double().mean().item(),
                "max_abs_out_diff": (y_d - y_r).abs().max().item(),
                "max_abs_grad_diff": (g_d - g_r).abs().max().item(),
                "max_abs_grad": g_r.abs().max().item(),
            }
            row["ok"] = (
                same
                and injected
                and abs(row["active_fraction"] - 1 / U) < 1e-12
                and torch.allclose(y_d, y_r, rtol=1e-12, atol=1e-12)
                and torch.allclose(g_d, g_r, rtol=1e-9, atol=1e-12)
            )
            rows.append(row)
    torch.manual_seed(seed)
    return rows


# -- timing ------------------------------------------------------------------------------------
@dataclass
class Variant:
    """One timed callable of a case."""

    name: str
    step: Step
    times_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    saved_mb: float | None = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def round_robin(variants: list[Variant], warmup: int, repeats: int, device: torch.device) -> None:
    """Run every variant once per round, rotating the start; keep the timed rounds only."""
    for r in range(warmup + repeats):
        k = r % len(variants)
        for v in variants[k:] + variants[:k]:
            _sync(device)
            c0, t0 = time.process_time(), time.perf_counter()
            v.step()
            _sync(device)
            t1, c1 = time.perf_counter(), time.process_time()
            if r >= warmup:
                v.times_s.append(t1 - t0)
                v.cpu_s.append(c1 - c0)


def saved_for_backward_mb(step: Step) -> float:
    """MB of unique storages autograd saves for backward during one ``step``."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values()) / 2**20


def summary(times: list[float]) -> dict[str, float]:
    """Median, quartiles (inclusive method) and IQR, in milliseconds."""
    ms = sorted(t * 1e3 for t in times)
    if len(ms) >= 2:
        q1, q2, q3 = statistics.quantiles(ms, n=4, method="inclusive")
    else:
        q1 = q2 = q3 = ms[0]
    return {
        "median_ms": q2,
        "q1_ms": q1,
        "q3_ms": q3,
        "iqr_ms": q3 - q1,
        "min_ms": ms[0],
        "n": len(ms),
    }


def paired_ratio(num: Variant, den: Variant) -> dict[str, float]:
    """Median and quartiles of the per-round ratios num/den (same round = same noise)."""
    ratios = [a / b for a, b in zip(num.times_s, den.times_s, strict=True)]
    s = summary([r / 1e3 for r in ratios])  # summary() multiplies by 1e3
    return {"median": s["median_ms"], "q1": s["q1_ms"], "q3": s["q3_ms"]}


# -- cases -------------------------------------------------------------------------------------
def layer_variants(
    kind: str, shape: tuple[int, ...], us: tuple[int, ...], device: torch.device, seed: int
) -> list[Variant]:
    """discover and reference at every U, and the plain activation, on one shared input."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).to(device).requires_grad_(True)
    grad_out = torch.randn(shape, generator=gen).to(device)
    plain: nn.Module = nn.GELU() if kind == "tokens" else nn.ReLU()

    def make(fn: Callable[[torch.Tensor], torch.Tensor]) -> Step:
        def step() -> None:
            x.grad = None
            fn(x).backward(grad_out)

        return step

    variants = []
    for U in us:
        layer = LWTA(U, tau=TAU).train().to(device)
        variants.append(Variant(f"discover U={U}", make(layer)))
        variants.append(Variant(f"reference U={U}", make(lambda t, U=U: reference_lwta(t, U))))
    variants.append(Variant(f"plain {type(plain).__name__}", make(plain)))
    return variants


def model_variants(
    name: str, U: int, batch: int, size: int, device: torch.device, seed: int
) -> tuple[list[Variant], dict[str, Any]]:
    """The LWTA model and its dense twin (same weights, same batch), one training step each."""
    torch.manual_seed(seed)
    dense = discover.create_model(name, U=1)
    cvn = discover.create_model(name, U=U)
    cvn.load_state_dict(dense.state_dict())
    info = {
        "lwta_layers": len(discover.lwta_layers(cvn)),
        "params_dense": discover.count_parameters(dense),
        "params_lwta": discover.count_parameters(cvn),
    }
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=gen).to(device)
    num_classes = dense.num_classes if hasattr(dense, "num_classes") else 1000
    labels = torch.randint(0, num_classes, (batch,), generator=gen).to(device)

    def make(model: nn.Module) -> Step:
        model.to(device).train()

        def step() -> None:
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), labels).backward()

        return step

    return [Variant(f"{name} U={U}", make(cvn)), Variant(f"{name} U=1 (dense)", make(dense))], info


# -- report ------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance() -> dict[str, Any]:
    """Which discover code was measured: the imported lwta.py and how it relates to git HEAD."""
    lwta_file = Path(discover_lwta.__file__).resolve()
    data = lwta_file.read_bytes()
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's blob id
    repo = Path(__file__).resolve().parent.parent
    head = _git("rev-parse", "HEAD", cwd=repo)
    head_blob = _git("rev-parse", "HEAD:src/discover/lwta.py", cwd=repo)
    return {
        "discover_file": str(Path(discover.__file__).resolve()),
        "lwta_blob": blob,
        "git_head": head,
        "lwta_matches_head": None if head_blob is None else blob == head_blob,
        "lwta_first_commit": (
            _git("log", "--all", "--reverse", "--format=%h", f"--find-object={blob}", cwd=repo)
            or ""
        ).split("\n")[0]
        or None,
        "pythonpath": os.environ.get("PYTHONPATH"),
    }


def cpu_snapshot() -> tuple[float, float, float] | None:
    """(machine busy CPU seconds, this process's CPU seconds, wall time) from /proc/stat."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # up to steal, no guest
    own = os.times()
    return busy, own.user + own.system, time.perf_counter()


def other_cpu_share(start: tuple[float, float, float] | None) -> float | None:
    """Fraction of the machine's CPU capacity used by *other* processes since ``start``."""
    end = cpu_snapshot()
    if start is None or end is None:
        return None
    wall = end[2] - start[2]
    others = (end[0] - start[0]) - (end[1] - start[1])
    return max(others, 0.0) / (wall * (os.cpu_count() or 1))


def fmt_stat(s: dict[str, float]) -> str:
    return f"{s['median_ms']:.1f} ({s['q1_ms']:.1f}-{s['q3_ms']:.1f})"


def verdict(ratio: float, target: float) -> str:
    return "PASS" if ratio <= target else "FAIL"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Time discover's LWTA against the reference code path and plain activations."
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed rounds per case (default: 16 layers / 14 models; 3 with --quick)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed rounds per case (default 2; 1 with --quick)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small shapes and few rounds: a smoke run, not a measurement",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("benchmarks/results"),
        help="output folder for lwta_speed.md and lwta_speed.json",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-models", action="store_true", help="layer cases only")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads(N); default: leave torch's default alone",
    )
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    quick = args.quick
    warmup = args.warmup if args.warmup is not None else (1 if quick else 2)
    layer_repeats = args.repeats if args.repeats is not None else (3 if quick else 16)
    model_repeats = args.repeats if args.repeats is not None else (3 if quick else 14)
    token_shape = (8, 197, 768) if quick else (64, 197, 768)
    conv_shape = (4, 256, 28, 28) if quick else (32, 256, 28, 28)
    batch, size = (2, 224) if quick else (8, 224)
    us = (2, 8)

    command = (
        shlex.join([sys.executable, *sys.argv])
        if argv is None
        else shlex.join([sys.executable, sys.argv[0], *argv])
    )
    started = _dt.datetime.now().astimezone()
    load_start = load_average()
    wall0 = time.perf_counter()
    cpu0 = cpu_snapshot()
    torch.manual_seed(args.seed)

    prov = provenance()
    print(
        f"measuring {prov['discover_file']} (lwta.py blob {prov['lwta_blob'][:10]}, "
        f"matches git HEAD: {prov['lwta_matches_head']})",
        flush=True,
    )
    print(f"cross-check (float64, same noise) on {device} ...", flush=True)
    checks = cross_check(device, args.seed)
    for row in checks:
        status = "ok" if row["ok"] else "NOT OK"
        print(
            f"  {row['case']:<32} {status} (noise aligned by {row['noise_aligned_by']}) "
            f"grad diff {row['max_abs_grad_diff']:.1e}",
            flush=True,
        )

    layer_results: list[dict[str, Any]] = []
    for kind, shape in (("tokens", token_shape), ("conv", conv_shape)):
        variants = layer_variants(kind, shape, us, device, args.seed)
        for v in variants:
            v.saved_mb = saved_for_backward_mb(v.step)
        print(
            f"timing {kind} {shape}: {len(variants)} variants x {warmup}+{layer_repeats} rounds",
            flush=True,
        )
        round_robin(variants, warmup, layer_repeats, device)
        by_name = {v.name: v for v in variants}
        plain = variants[-1]
        for U in us:
            d, r = by_name[f"discover U={U}"], by_name[f"reference U={U}"]
            sd, sr, sp = summary(d.times_s), summary(r.times_s), summary(plain.times_s)
            layer_results.append(
                {
                    "kind": kind,
                    "shape": list(shape),
                    "U": U,
                    "discover": {
                        **sd,
                        "saved_mb": d.saved_mb,
                        "cpu": summary(d.cpu_s),
                        "times_ms": [t * 1e3 for t in d.times_s],
                    },
                    "reference": {
                        **sr,
                        "saved_mb": r.saved_mb,
                        "cpu": summary(r.cpu_s),
                        "times_ms": [t * 1e3 for t in r.times_s],
                    },
                    "plain": {
                        "name": plain.name,
                        **sp,
                        "saved_mb": plain.saved_mb,
                        "cpu": summary(plain.cpu_s),
                        "times_ms": [t * 1e3 for t in plain.times_s],
                    },
                    "ratio_vs_reference": sd["median_ms"] / sr["median_ms"],
                    "ratio_of_mins_vs_reference": sd["min_ms"] / sr["min_ms"],
                    "paired_ratio_vs_reference": paired_ratio(d, r),
                    "ratio_vs_plain": sd["median_ms"] / sp["median_ms"],
                }
            )
            print(
                f"  U={U}: discover {fmt_stat(sd)} ms, reference {fmt_stat(sr)} ms, "
                f"{plain.name} {fmt_stat(sp)} ms",
                flush=True,
            )

    model_results: list[dict[str, Any]] = []
    if not args.skip_models:
        for name, U in (("deit_tiny_patch16_224", 8), ("resnet18", 4)):
            variants, info = model_variants(name, U, batch, size, device, args.seed)
            for v in variants:
                v.saved_mb = saved_for_backward_mb(v.step)
            print(
                f"timing {name} U={U} vs U=1, batch {batch}, {size} px: "
                f"{warmup}+{model_repeats} rounds",
                flush=True,
            )
            round_robin(variants, warmup, model_repeats, device)
            cvn, dense = variants
            sc, sd = summary(cvn.times_s), summary(dense.times_s)
            model_results.append(
                {
                    "model": name,
                    "U": U,
                    "batch": batch,
                    "size": size,
                    **info,
                    "lwta": {
                        **sc,
                        "saved_mb": cvn.saved_mb,
                        "cpu": summary(cvn.cpu_s),
                        "times_ms": [t * 1e3 for t in cvn.times_s],
                    },
                    "dense": {
                        **sd,
                        "saved_mb": dense.saved_mb,
                        "cpu": summary(dense.cpu_s),
                        "times_ms": [t * 1e3 for t in dense.times_s],
                    },
                    "ratio_vs_dense": sc["median_ms"] / sd["median_ms"],
                    "ratio_of_mins_vs_dense": sc["min_ms"] / sd["min_ms"],
                    "paired_ratio_vs_dense": paired_ratio(cvn, dense),
                }
            )
            print(f"  LWTA {fmt_stat(sc)} ms, dense {fmt_stat(sd)} ms", flush=True)

    elapsed = time.perf_counter() - wall0
    machine = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "timm": _version("timm"),
        "discover": discover.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device)
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "load_average_start": load_start,
        "load_average_end": load_average(),
        "other_processes_cpu_share": other_cpu_share(cpu0),
    }
    settings = {
        "quick": quick,
        "threads": args.threads,
        "warmup": warmup,
        "layer_repeats": layer_repeats,
        "model_repeats": model_repeats,
        "seed": args.seed,
        "tau": TAU,
        "reference_eps": REF_EPS,
        "token_shape": list(token_shape),
        "conv_shape": list(conv_shape),
        "model_batch": batch,
        "model_size": size,
    }
    record = {
        "command": command,
        "cwd": os.getcwd(),
        "date": started.isoformat(timespec="seconds"),
        "elapsed_s": elapsed,
        "machine": machine,
        "provenance": prov,
        "settings": settings,
        "cross_check": checks,
        "layers": layer_results,
        "models": model_results,
        "targets": {"discover_over_reference": LAYER_TARGET, "lwta_model_over_dense": MODEL_TARGET},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lwta_speed.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out / "lwta_speed.md").write_text(render_markdown(record))
    print(
        f"wrote {args.out / 'lwta_speed.md'} and {args.out / 'lwta_speed.json'} ({elapsed:.0f} s)"
    )
    return 0 if all(row["ok"] for row in checks) else 1


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001
        return "n/a"


def render_markdown(rec: dict[str, Any]) -> str:
    """The human-readable report."""
    m, s = rec["machine"], rec["settings"]
    threads_note = ", set by --threads" if s.get("threads") is not None else ", the default"
    lines = [
        "# LWTA speed benchmark",
        "",
        "Training-mode forward + backward time of discover's `LWTA` against a transcription of "
        "the reference code path (method.md §2.4) and the plain activation, and of LWTA models "
        "against their dense twins. Produced by `benchmarks/lwta_speed.py`.",
        "",
        f"- **Command:** `{rec['command']}` (cwd `{rec['cwd']}`)",
        f"- **Date:** {rec['date']} (run took {rec['elapsed_s']:.0f} s)",
        f"- **Machine:** CPU `{m['cpu_model']}`, {m['cpu_count']} cores "
        f"(torch threads {m['torch_threads']}{threads_note}), device `{m['device']}`; "
        f"{m['platform']}",
        f"- **Software:** torch {m['torch']}, timm {m['timm']}, discover {m['discover']}, "
        f"Python {m['python']}",
        f"- **Load average** (1/5/15 min) at start: {m['load_average_start']}; "
        f"at end: {m['load_average_end']}",
    ]
    share = m.get("other_processes_cpu_share")
    if share is not None:
        lines.append(
            f"- **Other processes** used {100 * share:.0f}% of the machine's CPU capacity during "
            "the run (from /proc/stat, minus this process)."
        )
    if share is not None and share > 0.10:
        lines.append(
            "- **Warning: the machine was shared**, so other processes competed for the CPU. "
            "Multi-threaded torch slows down disproportionately then (threads wait for each other "
            "at every op), which inflates and compresses the model-level times in particular; "
            "medians include contended rounds. Compare the *of mins* column, or rerun on an idle "
            "machine or with `--threads 1`."
        )
    lines += [
        f"- **Rounds:** {s['warmup']} warm-up + {s['layer_repeats']} timed (layers), "
        f"{s['warmup']} + {s['model_repeats']} timed (models); variants of a case run "
        "round-robin, starting variant rotated each round.",
    ]
    p = rec["provenance"]
    match = {True: "identical to", False: "**different from**", None: "not compared with"}[
        p["lwta_matches_head"]
    ]
    lines.append(
        f"- **Code measured:** `{p['discover_file']}`; its `lwta.py` (git blob "
        f"`{p['lwta_blob'][:12]}`) is {match} `src/discover/lwta.py` at git HEAD "
        f"`{(p['git_head'] or 'n/a')[:12]}`"
        + (
            f" (this lwta.py was committed in `{p['lwta_first_commit']}`)"
            if p.get("lwta_first_commit")
            else " (uncommitted lwta.py)"
        )
        + (f"; PYTHONPATH=`{p['pythonpath']}`" if p["pythonpath"] else "")
    )
    if s["quick"]:
        lines.append(
            "- **--quick run: small shapes and few rounds. A smoke test, not a measurement.**"
        )
    lines += [
        "",
        "Times are milliseconds per forward + backward: median (q1-q3 over the timed rounds). "
        "The bold ratio is the ratio of medians (the one judged against the target); *paired* is "
        "the median (q1-q3) of the per-round ratios; *of mins* is the ratio of the fastest rounds "
        "(least disturbed by other processes). "
        "*saved MB* is what autograd keeps for backward (unique storages, input included).",
        "",
        "## Correctness cross-check (before timing)",
        "",
        "Same Gumbel noise fed to both implementations (float64). *seeded*: both draw their "
        "uniforms from the same RNG state (reference with eps = 0 for this check only); "
        "*patched*: `discover.lwta.gumbel_noise` is replaced by a deterministic noise computed "
        "from each unit's own value, and the reference gets the same noise.",
        "",
        "| case | noise aligned by | same winners | active fraction | max abs output diff | "
        "max abs grad diff | ok |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in rec["cross_check"]:
        lines.append(
            f"| {c['case']} | {c['noise_aligned_by']} | {c['same_winners']} | "
            f"{c['active_fraction']:.4f} | "
            f"{c['max_abs_out_diff']:.1e} | {c['max_abs_grad_diff']:.1e} | "
            f"{'yes' if c['ok'] else '**NO**'} |"
        )
    lines += [
        "",
        f"## Layer level: discover vs reference (target ratio <= {LAYER_TARGET})",
        "",
        "| input | U | discover ms | reference ms | plain ms | discover / reference | paired | "
        "of mins | discover / plain | saved MB d / r / p | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rec["layers"]:
        p = r["paired_ratio_vs_reference"]
        lines.append(
            f"| {r['kind']} {tuple(r['shape'])} | {r['U']} | {fmt_stat(r['discover'])} | "
            f"{fmt_stat(r['reference'])} | {r['plain']['name'].split()[-1]} "
            f"{fmt_stat(r['plain'])} | **{r['ratio_vs_reference']:.2f}x** | "
            f"{p['median']:.2f} ({p['q1']:.2f}-{p['q3']:.2f}) | "
            f"{r['ratio_of_mins_vs_reference']:.2f} | {r['ratio_vs_plain']:.1f}x | "
            f"{r['discover']['saved_mb']:.0f} / {r['reference']['saved_mb']:.0f} / "
            f"{r['plain']['saved_mb']:.0f} | {verdict(r['ratio_vs_reference'], LAYER_TARGET)} |"
        )
    if rec["models"]:
        lines += [
            "",
            f"## Model level: LWTA model vs dense twin (target ratio <= {MODEL_TARGET})",
            "",
            "| model | U | batch, px | LWTA ms | dense ms | LWTA / dense | paired | of mins | "
            "saved MB LWTA / dense | params LWTA / dense | target |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rec["models"]:
            p = r["paired_ratio_vs_dense"]
            lines.append(
                f"| {r['model']} ({r['lwta_layers']} LWTA layers) | {r['U']} | {r['batch']}, "
                f"{r['size']} | {fmt_stat(r['lwta'])} | {fmt_stat(r['dense'])} | "
                f"**{r['ratio_vs_dense']:.2f}x** | "
                f"{p['median']:.2f} ({p['q1']:.2f}-{p['q3']:.2f}) | "
                f"{r['ratio_of_mins_vs_dense']:.2f} | "
                f"{r['lwta']['saved_mb']:.0f} / {r['dense']['saved_mb']:.0f} | "
                f"{r['params_lwta']:,} / {r['params_dense']:,} | "
                f"{verdict(r['ratio_vs_dense'], MODEL_TARGET)} |"
            )
    layer_pass = all(r["ratio_vs_reference"] <= LAYER_TARGET for r in rec["layers"])
    model_pass = all(r["ratio_vs_dense"] <= MODEL_TARGET for r in rec["models"])
    lines += [
        "",
        "## Verdict",
        "",
        f"- discover / reference <= {LAYER_TARGET} on every layer case: "
        f"**{'PASS' if layer_pass else 'FAIL'}**",
    ]
    if rec["models"]:
        lines.append(
            f"- LWTA model / dense twin <= {MODEL_TARGET} on every model case: "
            f"**{'PASS' if model_pass else 'FAIL'}**"
        )
    lines += [
        "",
        "Notes: the timings are wall-clock. The load average counts this benchmark's own "
        "threads too; the *other processes* line above is the measure of outside load. "
        "Round-robin interleaving spreads outside noise over all variants, and the paired "
        "ratios compare variants within the same round. Process CPU time per call is in the "
        "JSON file (`cpu`).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
