"""Speed of discover's LWTA against the reference code path and the plain activation.

What is measured
----------------
Training-mode forward + backward wall-clock time, on the same inputs, of

* ``fused`` -- :class:`discover.LWTA` in ``train()`` mode as it runs by default on float32
  contiguous CPU tensors: the fused C kernel (``src/discover/nn/csrc/lwta.c``, autograd Function
  ``_FusedLWTA``);
* ``unfused`` -- the same layer inside ``discover.nn.lwta_kernel.enabled(False)``: the torch
  code ``_STGumbelLWTA`` (shown for context; it is what runs without a C compiler);
* ``reference`` -- a transcription, written for this benchmark, of the reference code path
  described in ``method.md`` §2.4: Gumbel noise ``-log(-log(r + eps) + eps)`` with
  ``r ~ U(0, 1)`` and ``eps = 1e-8``, redrawn if ``torch.isnan(g).any() or
  torch.isinf(g).any()``; ``soft = softmax((h + g) / tau)`` over the U axis; a one-hot
  ``torch.zeros_like(soft).scatter_(dim, argmax, 1.0)``; the straight-through
  ``mask = hard - soft.detach() + soft``; output ``h * mask``, all through plain autograd, in
  the input's precision (float32);
* ``plain`` -- the activation LWTA replaces (GELU for tokens, ReLU for conv maps);
* ``floor`` -- no LWTA at all: allocating and writing once the four buffers the fused path
  returns (output, bool winner mask and soft sample in the forward, input gradient in the
  backward). On a fresh allocation every page is faulted in by the kernel, and glibc serves
  buffers over 32 MB with a fresh ``mmap`` every time, so this is the time the fused path
  cannot go below without reusing memory.

Layer cases: a ``(64, 197, 768)`` token tensor (competition over the last dim) and a
``(32, 256, 28, 28)`` conv tensor (competition over ``U`` consecutive channels at every
position), ``U`` in {2, 8}; the input requires grad and the backward pass gets a fixed random
upstream gradient. Model cases: timm ``deit_tiny_patch16_224`` (``U=8`` vs ``U=1``) and
``resnet18`` (``U=4`` vs ``U=1``), built with :func:`discover.create_model` (random init,
nothing is downloaded), batch 8 at 224 px, ``train()`` mode, one cross-entropy forward +
backward, the LWTA model with the fused kernel and with the unfused code. Both twins of a
model get the same weights and the same batch.

Correctness cross-checks (before timing)
----------------------------------------
1. float64, unfused vs reference: both draw their uniforms from the same RNG state (the
   reference with ``eps = 0`` for this check), same winners, outputs and input gradients.
2. float32, fused vs unfused vs reference on the same Gumbel noise ``g``: ``g`` is drawn with
   :func:`discover.nn.lwta.gumbel_noise` from a seeded RNG state that the unfused code then
   replays; the fused kernel gets ``g`` through ``lwta_kernel.forward(..., noise=g)`` and
   its backward through ``lwta_kernel.backward`` (what ``_FusedLWTA`` calls), the reference
   gets ``T g``. Same winners, equal outputs, input gradients equal to float32 tolerance,
   at competition temperatures ``T = 1`` (the reference method) and ``T = 0.5``. The layer
   itself (its own noise) is also checked to return exactly what the kernel returns for the
   same torch seed.
3. Winner distribution of the fused kernel (its own counter-based noise): 200k draws of a
   fixed block of ``U = 8`` values ``h`` in four kernel calls, units on the last axis and
   conv layout, chi-square test of the winner counts against ``softmax(h / T)`` for
   ``T = 1`` and ``T = 0.5``.

How it is timed
---------------
All variants of one case run round-robin (one call each per round, the starting variant
rotating every round), so machine noise hits them alike. Warm-up rounds are discarded; the
table reports the median and the interquartile range (IQR, q1-q3) of the timed rounds, and the
ratios of medians, per-round (paired) ratios and ratios of the fastest rounds. ``torch`` runs
with its default thread count unless ``--threads`` says otherwise. The report also records how
much CPU other processes used during the run (from /proc/stat), and the minor page faults per
call (``getrusage``). "saved MB" is the size of the tensors autograd keeps for backward (unique
storages, input included), measured with ``torch.autograd.graph.saved_tensors_hooks``: a
cheap, deterministic stand-in for the activation memory a variant adds in training. It is not
a peak-RSS measurement.

Targets: ``fused / reference <= 0.25`` on every layer case and
``LWTA model (fused) / dense twin <= 1.25`` on every model case.

Run (from the repository root)::

    .venv/bin/python benchmarks/lwta_speed.py                 # full run, writes benchmarks/results/
    .venv/bin/python benchmarks/lwta_speed.py --quick         # small shapes, smoke run
    .venv/bin/python benchmarks/lwta_speed.py --repeats 30 --threads 1 --out /tmp/bench

Outputs ``<out>/lwta_speed.md`` (table and machine details) and ``<out>/lwta_speed.json``
(every timed round).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from common import (
    Window,
    command_line,
    cpu_model,
    gpu_line,
    gpu_name,
    markdown_table,
    measured_files,
    median_iqr,
    now_iso,
    paired_ratio,
    pass_fail,
    portable,
    quartiles,
    report_header,
    timed_rounds,
    write_json,
)
from torch import nn

import discover
from discover import LWTA
from discover.nn import gumbel_noise, lwta_kernel

TAU = 1.67  # method.md §2.4 training temperature (discover's default too)
REF_EPS = 1e-8  # the DeiT copy of the reference code
LAYER_TARGET = 0.25  # fused / reference
MODEL_TARGET = 1.25  # LWTA model (fused) / dense twin
CHI2_ALPHA = 1e-3  # a chi-square check fails below this p-value
GRAD_RTOL32 = 1e-5  # float32 gradient tolerance, relative to the largest |gradient|

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


# -- correctness cross-checks --------------------------------------------------------------------
def _reference_view(shape: tuple[int, ...], U: int) -> tuple[int, ...]:
    """The reference's ``(N, C/U, U, H, W)`` or ``(..., K/U, U)`` view of an input shape."""
    if len(shape) == 4:
        return (shape[0], shape[1] // U, U, *shape[2:])
    return (*shape[:-1], shape[-1] // U, U)


def _blocks(x: torch.Tensor, U: int) -> torch.Tensor:
    """discover's ``(P, U, Q)`` block view (same memory as the reference view)."""
    if x.dim() == 4:
        n, c, hh, ww = x.shape
        return x.reshape(n * c // U, U, hh * ww)
    return x.reshape(-1, U, 1)


def _unfused_pair(
    x: torch.Tensor, grad_out: torch.Tensor, U: int, seed: int
) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Forward + backward of the unfused layer and the reference, uniforms from one RNG state.

    The reference runs with ``eps = 0`` so that its noise is exactly ``-log(-log(r))``; this
    aligns the two when discover draws one uniform tensor in memory order.
    """
    results = []
    for impl in ("unfused", "reference"):
        xi = x.clone().requires_grad_(True)
        torch.manual_seed(seed)
        if impl == "unfused":
            with lwta_kernel.enabled(False):
                y = LWTA(U, tau=TAU).train()(xi)
        else:
            y = reference_lwta(xi, U, eps=0.0)
        y.backward(grad_out)
        results.append((y.detach(), xi.grad))
    return results[0], results[1]


def cross_check_unfused64(device: torch.device, seed: int) -> list[dict[str, Any]]:
    """float64, unfused vs reference on replayed uniforms: same winners, outputs, gradients."""
    rows = []
    gen = torch.Generator().manual_seed(seed)
    for kind, shape in (("tokens", (2, 197, 768)), ("conv", (2, 256, 14, 14))):
        for U in (2, 8):
            x = torch.randn(shape, generator=gen, dtype=torch.float64).to(device)
            grad_out = torch.randn(shape, generator=gen, dtype=torch.float64).to(device)
            (y_d, g_d), (y_r, g_r) = _unfused_pair(x, grad_out, U, seed)
            same = bool(torch.equal(y_d != 0, y_r != 0))
            row = {
                "case": f"{kind} {tuple(shape)} U={U}",
                "noise_aligned_by": "seeded" if same else "none (could not align)",
                "same_winners": same,
                "active_fraction": (y_d != 0).double().mean().item(),
                "max_abs_out_diff": (y_d - y_r).abs().max().item(),
                "max_abs_grad_diff": (g_d - g_r).abs().max().item(),
                "max_abs_grad": g_r.abs().max().item(),
            }
            row["ok"] = (
                same
                and abs(row["active_fraction"] - 1 / U) < 1e-12
                and torch.allclose(y_d, y_r, rtol=1e-12, atol=1e-12)
                and torch.allclose(g_d, g_r, rtol=1e-9, atol=1e-12)
            )
            rows.append(row)
    torch.manual_seed(seed)
    return rows


def _winners(hard_or_out: torch.Tensor) -> torch.Tensor:
    return hard_or_out != 0


def cross_check_fused32(seed: int) -> list[dict[str, Any]]:
    """float32 (CPU), fused vs unfused vs reference on the same Gumbel noise.

    ``g = gumbel_noise(blocks)`` is drawn right after ``torch.manual_seed(s)``; the unfused
    layer, run after the same ``manual_seed(s)``, replays exactly these uniforms (checked: the
    winners must agree). The fused kernel gets ``g`` explicitly; the reference gets ``T g``.
    """
    rows = []
    gen = torch.Generator().manual_seed(seed + 1)
    for kind, shape in (("tokens", (2, 197, 768)), ("conv", (2, 256, 14, 14))):
        for U in (2, 8):
            for T in (1.0, 0.5):
                x = torch.randn(shape, generator=gen)
                grad_out = torch.randn(shape, generator=gen)
                s = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
                blocks = _blocks(x, U)
                torch.manual_seed(s)
                g = gumbel_noise(blocks)

                # fused: what _FusedLWTA.forward/backward call, with the noise supplied
                out_f, hard_f, soft_f = lwta_kernel.forward(blocks, T, TAU, noise=g)
                grad_f = lwta_kernel.backward(_blocks(grad_out, U), blocks, soft_f, hard_f, TAU)
                y_f, g_f = out_f.reshape(shape), grad_f.reshape(shape)

                # unfused: the layer's torch code, replaying the uniforms of g
                xu = x.clone().requires_grad_(True)
                layer = LWTA(U, tau=TAU, temperature=T).train()
                torch.manual_seed(s)
                with lwta_kernel.enabled(False):
                    y_u = layer(xu)
                y_u.backward(grad_out)
                y_u, g_u = y_u.detach(), xu.grad

                # reference transcription, given T g as its noise
                xr = x.clone().requires_grad_(True)
                y_r = reference_lwta(xr, U, noise=(T * g).view(_reference_view(shape, U)))
                y_r.backward(grad_out)
                y_r, g_r = y_r.detach(), xr.grad

                # the layer's own fused path returns what the kernel returns for a seed
                xl = x.clone().requires_grad_(True)
                torch.manual_seed(s)
                y_l = layer(xl)
                y_l.backward(grad_out)
                torch.manual_seed(s)
                out_k, hard_k, soft_k = lwta_kernel.forward(blocks, T, TAU)
                grad_k = lwta_kernel.backward(_blocks(grad_out, U), blocks, soft_k, hard_k, TAU)
                layer_is_kernel = bool(
                    torch.equal(y_l.detach(), out_k.reshape(shape))
                    and torch.equal(xl.grad, grad_k.reshape(shape))
                )

                w_f, w_u, w_r = _winners(y_f), _winners(y_u), _winners(y_r)
                scale = g_r.abs().max().item()
                row = {
                    "case": f"{kind} {tuple(shape)} U={U}",
                    "temperature": T,
                    "same_winners_fused_unfused": bool(torch.equal(w_f, w_u)),
                    "same_winners_fused_reference": bool(torch.equal(w_f, w_r)),
                    "active_fraction": hard_f.float().mean().item(),
                    "max_abs_out_diff_fused_unfused": (y_f - y_u).abs().max().item(),
                    "max_abs_out_diff_fused_reference": (y_f - y_r).abs().max().item(),
                    "max_abs_grad": scale,
                    "max_abs_grad_diff_fused_unfused": (g_f - g_u).abs().max().item(),
                    "max_abs_grad_diff_fused_reference": (g_f - g_r).abs().max().item(),
                    "max_abs_grad_diff_unfused_reference": (g_u - g_r).abs().max().item(),
                    "layer_equals_kernel": layer_is_kernel,
                }
                tol = GRAD_RTOL32 * scale
                row["ok"] = (
                    row["same_winners_fused_unfused"]
                    and row["same_winners_fused_reference"]
                    and abs(row["active_fraction"] - 1 / U) < 1e-9
                    and bool(torch.equal(y_f, y_u))
                    and bool(torch.equal(y_f, y_r))
                    and row["max_abs_grad_diff_fused_unfused"] <= tol
                    and row["max_abs_grad_diff_fused_reference"] <= tol
                    and row["max_abs_grad_diff_unfused_reference"] <= tol
                    and layer_is_kernel
                )
                rows.append(row)
    torch.manual_seed(seed)
    return rows


def chi2_sf(stat: float, dof: int) -> float:
    """P(X >= stat) for a chi-square variable with ``dof`` degrees of freedom."""
    return float(
        torch.special.gammaincc(
            torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(stat / 2, dtype=torch.float64)
        )
    )


CHI2_LOGITS = (0.0, 1.0, 2.0, -1.0, 0.5, -0.5, 1.5, -2.0)  # one block of U = 8


def chi_square_fused(seed: int, draws: int = 200_000, calls: int = 4) -> list[dict[str, Any]]:
    """Winner counts of the fused kernel (its own noise) vs ``softmax(h / T)``.

    One fixed block ``h`` repeated ``draws`` times, split over ``calls`` kernel calls (each
    call reseeds the kernel's generator from torch's RNG), training forward (``tau`` set).
    """
    h = torch.tensor(CHI2_LOGITS)
    U = h.numel()
    rows = []
    torch.manual_seed(seed)
    for layout, Q in (("units on the last axis (Q=1)", 1), ("conv layout (Q=50)", 50)):
        for T in (1.0, 0.5):
            per_call = draws // calls
            blocks = h.view(1, U, 1).expand(per_call // Q, U, Q).contiguous()
            counts = torch.zeros(U, dtype=torch.float64)
            for _ in range(calls):
                _, hard, _ = lwta_kernel.forward(blocks, T, TAU)
                counts += hard.sum(dim=(0, 2)).double()
            n = int(counts.sum().item())
            probs = torch.softmax(h.double() / T, 0)
            expected = probs * n
            stat = float(((counts - expected) ** 2 / expected).sum())
            p = chi2_sf(stat, U - 1)
            rows.append(
                {
                    "layout": layout,
                    "temperature": T,
                    "draws": n,
                    "kernel_calls": calls,
                    "chi2": stat,
                    "dof": U - 1,
                    "p_value": p,
                    "max_abs_freq_diff": float((counts / n - probs).abs().max()),
                    "min_expected": float(expected.min()),
                    "ok": n == (draws // calls // Q) * Q * calls and p >= CHI2_ALPHA,
                }
            )
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
    faults: list[int] = field(default_factory=list)
    saved_mb: float | None = None


def time_variants(variants: list[Variant], warmup: int, repeats: int, device: torch.device) -> None:
    """Time every variant once per round, round-robin (:func:`common.timed_rounds`), and keep
    its timed rounds: wall and process CPU seconds, minor page faults."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    rounds = timed_rounds({v.name: v.step for v in variants}, repeats, warmup=warmup, sync=sync)
    for v in variants:
        v.times_s = rounds.seconds[v.name]
        v.cpu_s = rounds.cpu_seconds[v.name]
        v.faults = rounds.minor_faults[v.name]


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
    """Median, quartiles (inclusive method), IQR and minimum, in milliseconds."""
    ms = [t * 1e3 for t in times]
    q = quartiles(ms)
    return {
        "median_ms": q["median"],
        "q1_ms": q["q1"],
        "q3_ms": q["q3"],
        "iqr_ms": q["q3"] - q["q1"],
        "min_ms": min(ms),
        "n": len(ms),
    }


def variant_record(v: Variant) -> dict[str, Any]:
    return {
        "name": v.name,
        **summary(v.times_s),
        "saved_mb": v.saved_mb,
        "cpu": summary(v.cpu_s),
        "minor_faults_median": statistics.median(v.faults),
        "times_ms": [t * 1e3 for t in v.times_s],
    }


def ratios(num: Variant, den: Variant) -> dict[str, Any]:
    a, b = summary(num.times_s), summary(den.times_s)
    return {
        "median": a["median_ms"] / b["median_ms"],
        "of_mins": a["min_ms"] / b["min_ms"],
        "paired": paired_ratio(num.times_s, den.times_s),  # same round = same noise
    }


# -- cases -------------------------------------------------------------------------------------
def layer_variants(
    kind: str, shape: tuple[int, ...], us: tuple[int, ...], device: torch.device, seed: int
) -> list[Variant]:
    """fused, unfused and reference at every U, the plain activation and the buffer floor."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).to(device).requires_grad_(True)
    grad_out = torch.randn(shape, generator=gen).to(device)
    plain: nn.Module = nn.GELU() if kind == "tokens" else nn.ReLU()

    def make(fn: Callable[[torch.Tensor], torch.Tensor], fused: bool = True) -> Step:
        def step() -> None:
            x.grad = None
            with contextlib.nullcontext() if fused else lwta_kernel.enabled(False):
                fn(x).backward(grad_out)

        return step

    def floor() -> None:
        # the fused path's fresh buffers: out, hard, soft (forward), grad (backward)
        x.grad = None
        out = torch.empty_like(x).fill_(0.0)
        hard = torch.empty(x.shape, dtype=torch.bool, device=x.device).fill_(False)
        soft = torch.empty_like(x).fill_(0.0)
        x.grad = torch.empty_like(x).fill_(0.0)
        del out, hard, soft

    variants = []
    for U in us:
        layer = LWTA(U, tau=TAU).train().to(device)
        variants.append(Variant(f"fused U={U}", make(layer)))
        variants.append(Variant(f"unfused U={U}", make(layer, fused=False)))
        variants.append(Variant(f"reference U={U}", make(lambda t, U=U: reference_lwta(t, U))))
    variants.append(Variant(f"plain {type(plain).__name__}", make(plain)))
    variants.append(Variant("floor", floor))
    return variants


def model_variants(
    name: str, U: int, batch: int, size: int, device: torch.device, seed: int
) -> tuple[list[Variant], dict[str, Any]]:
    """The LWTA model (fused, unfused) and its dense twin (same weights, same batch)."""
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

    def make(model: nn.Module, fused: bool = True) -> Step:
        model.to(device).train()

        def step() -> None:
            model.zero_grad(set_to_none=True)
            with contextlib.nullcontext() if fused else lwta_kernel.enabled(False):
                F.cross_entropy(model(x), labels).backward()

        return step

    variants = [
        Variant(f"{name} U={U} fused", make(cvn)),
        Variant(f"{name} U={U} unfused", make(cvn, fused=False)),
        Variant(f"{name} U=1 (dense)", make(dense)),
    ]
    return variants, info


# -- report ------------------------------------------------------------------------------------
MEASURED_FILES = ("nn/lwta.py", "nn/lwta_kernel.py", "nn/csrc/lwta.c")


def measured_code() -> dict[str, Any]:
    """Which discover code was measured (the ``provenance`` of the results file):
    :func:`common.measured_files` of the LWTA files, and the fused kernel loaded."""
    return {
        **measured_files(*MEASURED_FILES),
        "kernel_available": lwta_kernel.available(),
        "kernel_library": portable(str(lwta_kernel.library_path())),
    }


def fmt_stat(s: dict[str, float]) -> str:
    return median_iqr(s["median_ms"], s["q1_ms"], s["q3_ms"], digits=1)


def fmt_ratio(r: dict[str, Any]) -> str:
    return median_iqr(**r["paired"])


def verdict(ratio: float, target: float) -> str:
    return pass_fail(ratio <= target)


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

    device = torch.device("cpu")  # the fused kernel is a CPU kernel
    if not lwta_kernel.available():
        parser.error(
            "the fused LWTA kernel is not available (no C compiler, or DISCOVER_LWTA_KERNEL=0)"
        )
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
    chi2_draws = 40_000 if quick else 200_000

    command = command_line(argv)
    started = now_iso(utc=False)
    window = Window.open()
    torch.manual_seed(args.seed)

    prov = measured_code()
    print(
        f"measuring {prov['discover_file']} ("
        + ", ".join(f"{f['file']} matches HEAD: {f['matches_head']}" for f in prov["files"])
        + ")",
        flush=True,
    )
    print("cross-check 1 (float64, unfused vs reference, same noise) ...", flush=True)
    checks64 = cross_check_unfused64(device, args.seed)
    for row in checks64:
        print(
            f"  {row['case']:<32} {'ok' if row['ok'] else 'NOT OK'} "
            f"grad diff {row['max_abs_grad_diff']:.1e}",
            flush=True,
        )
    print("cross-check 2 (float32, fused vs unfused vs reference, same noise) ...", flush=True)
    checks32 = cross_check_fused32(args.seed)
    for row in checks32:
        print(
            f"  {row['case']:<32} T={row['temperature']:g} {'ok' if row['ok'] else 'NOT OK'} "
            f"grad diff f-u {row['max_abs_grad_diff_fused_unfused']:.1e} "
            f"f-r {row['max_abs_grad_diff_fused_reference']:.1e} "
            f"(max |grad| {row['max_abs_grad']:.1e})",
            flush=True,
        )
    print(f"cross-check 3 (fused winner frequencies, {chi2_draws} draws) ...", flush=True)
    chi2_rows = chi_square_fused(args.seed, draws=chi2_draws)
    for row in chi2_rows:
        print(
            f"  {row['layout']:<30} T={row['temperature']:g} chi2 {row['chi2']:.2f} "
            f"p {row['p_value']:.3f} {'ok' if row['ok'] else 'NOT OK'}",
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
        time_variants(variants, warmup, layer_repeats, device)
        by_name = {v.name: v for v in variants}
        plain, floor = variants[-2], variants[-1]
        for U in us:
            fu, un, ref = (by_name[f"{n} U={U}"] for n in ("fused", "unfused", "reference"))
            layer_results.append(
                {
                    "kind": kind,
                    "shape": list(shape),
                    "buffer_mb": math.prod(shape) * 4 / 2**20,
                    "U": U,
                    "fused": variant_record(fu),
                    "unfused": variant_record(un),
                    "reference": variant_record(ref),
                    "plain": variant_record(plain),
                    "floor": variant_record(floor),
                    "fused_over_reference": ratios(fu, ref),
                    "unfused_over_reference": ratios(un, ref),
                    "fused_over_plain": ratios(fu, plain),
                    "floor_over_reference": ratios(floor, ref),
                    "fused_over_floor": ratios(fu, floor),
                }
            )
            print(
                f"  U={U}: fused {fmt_stat(summary(fu.times_s))} ms, unfused "
                f"{fmt_stat(summary(un.times_s))} ms, reference {fmt_stat(summary(ref.times_s))}"
                f" ms, {plain.name} {fmt_stat(summary(plain.times_s))} ms, floor "
                f"{fmt_stat(summary(floor.times_s))} ms",
                flush=True,
            )

    model_results: list[dict[str, Any]] = []
    if not args.skip_models:
        for name, U in (("deit_tiny_patch16_224", 8), ("resnet18", 4)):
            variants, info = model_variants(name, U, batch, size, device, args.seed)
            for v in variants:
                v.saved_mb = saved_for_backward_mb(v.step)
            print(
                f"timing {name} U={U} (fused, unfused) vs U=1, batch {batch}, {size} px: "
                f"{warmup}+{model_repeats} rounds",
                flush=True,
            )
            time_variants(variants, warmup, model_repeats, device)
            fu, un, dense = variants
            model_results.append(
                {
                    "model": name,
                    "U": U,
                    "batch": batch,
                    "size": size,
                    **info,
                    "fused": variant_record(fu),
                    "unfused": variant_record(un),
                    "dense": variant_record(dense),
                    "fused_over_dense": ratios(fu, dense),
                    "unfused_over_dense": ratios(un, dense),
                }
            )
            print(
                f"  fused {fmt_stat(summary(fu.times_s))} ms, unfused "
                f"{fmt_stat(summary(un.times_s))} ms, dense {fmt_stat(summary(dense.times_s))} ms",
                flush=True,
            )

    load = window.close()
    elapsed = load["seconds"]
    machine = {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "timm": _version("timm"),
        "discover": discover.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "gpu": gpu_name(),
        "load_average_start": load["load_start"],
        "load_average_end": load["load_end"],
        "other_processes_cpu_share": load["other_cpu_share"],
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
        "chi2_draws": chi2_draws,
        "chi2_logits": list(CHI2_LOGITS),
        "chi2_alpha": CHI2_ALPHA,
        "grad_rtol_float32": GRAD_RTOL32,
    }
    record = {
        "command": command,
        "cwd": portable(os.getcwd()),
        "date": started,
        "elapsed_s": elapsed,
        "machine": machine,
        "provenance": prov,
        "settings": settings,
        "cross_check_unfused_float64": checks64,
        "cross_check_fused_float32": checks32,
        "chi_square_fused": chi2_rows,
        "layers": layer_results,
        "models": model_results,
        "targets": {"fused_over_reference": LAYER_TARGET, "fused_model_over_dense": MODEL_TARGET},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "lwta_speed.json", record)
    (args.out / "lwta_speed.md").write_text(render_markdown(record))
    print(
        f"wrote {args.out / 'lwta_speed.md'} and {args.out / 'lwta_speed.json'} ({elapsed:.0f} s)"
    )
    return 0 if all(row["ok"] for row in checks64 + checks32 + chi2_rows) else 1


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001
        return "n/a"


def _header(rec: dict[str, Any]) -> list[str]:
    """:func:`common.report_header` from a results record (this run's or a saved one)."""
    m, s, p = rec["machine"], rec["settings"], rec["provenance"]
    threads_note = ", set by --threads" if s.get("threads") is not None else ", the default"
    return report_header(
        "LWTA speed benchmark",
        {
            "command": rec["command"],
            "machine": f"CPU `{m['cpu_model']}`, {m['cpu_count']} cores (load average at start "
            f"{m['load_average_start']}; torch threads {m['torch_threads']}{threads_note}), "
            f"device `{m['device']}`; {m['platform']}",
            "git_head": (p["git_head"] or "n/a")[:12],
            "date": rec["date"],
        },
        took=f" (run took {rec['elapsed_s']:.0f} s)",
        load_end=m["load_average_end"],
    )


def _machine_lines(rec: dict[str, Any]) -> list[str]:
    m, s, p = rec["machine"], rec["settings"], rec["provenance"]
    lines = [
        f"- **Run from:** `{rec['cwd']}`",
        f"- **Software:** torch {m['torch']}, timm {m['timm']}, discover {m['discover']}, "
        f"Python {m['python']}",
        gpu_line(m.get("gpu"), timed="the CPU (the fused kernel is a CPU kernel)"),
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
    lines.append(
        f"- **Rounds:** {s['warmup']} warm-up + {s['layer_repeats']} timed (layers), "
        f"{s['warmup']} + {s['model_repeats']} timed (models); variants of a case run "
        "round-robin, starting variant rotated each round."
    )
    match = {True: "identical to", False: "**different from**", None: "not compared with"}
    files = "; ".join(
        f"`{f['file']}` (git blob `{f['blob'][:12]}`) {match[f['matches_head']]} HEAD"
        + (f", committed in `{f['first_commit']}`" if f["first_commit"] else ", uncommitted")
        for f in p["files"]
    )
    lines.append(
        f"- **Code measured:** `{p['discover_file']}`: {files}; fused kernel loaded from "
        f"`{p['kernel_library']}`"
        + (f"; PYTHONPATH=`{p['pythonpath']}`" if p["pythonpath"] else "")
    )
    if s["quick"]:
        lines.append(
            "- **--quick run: small shapes and few rounds. A smoke test, not a measurement.**"
        )
    return lines


def _check_tables(rec: dict[str, Any]) -> list[str]:
    s = rec["settings"]
    lines = [
        "## Correctness cross-checks (before timing)",
        "",
        "### 1. Unfused code vs reference, float64, same noise",
        "",
        "Both draw their uniforms from the same RNG state (the reference with eps = 0 for this "
        "check only). Required: same winners, active fraction 1/U, outputs and input gradients "
        "equal to 1e-12 / 1e-9.",
        "",
    ]
    lines += markdown_table(
        [
            "case", "noise aligned by", "same winners", "active fraction", "max abs output diff",
            "max abs grad diff", "ok",
        ],
        (
            [
                c["case"], c["noise_aligned_by"], c["same_winners"], f"{c['active_fraction']:.4f}",
                f"{c['max_abs_out_diff']:.1e}", f"{c['max_abs_grad_diff']:.1e}", _ok(c),
            ]
            for c in rec["cross_check_unfused_float64"]
        ),
    )  # fmt: skip
    lines += [
        "",
        "### 2. Fused kernel vs unfused code vs reference, float32, same noise",
        "",
        "Gumbel noise g drawn once; the fused kernel gets it through "
        "`lwta_kernel.forward(..., noise=g)` (backward: `lwta_kernel.backward`, as "
        "`_FusedLWTA` calls them), the unfused layer replays the same uniforms from the same "
        "seed, the reference gets T·g. Required: identical winners and outputs (bit-equal), "
        f"input-gradient differences <= {s['grad_rtol_float32']:g} x max |grad| for every pair. "
        "*layer = kernel*: the `LWTA` layer's own fused training path (its own noise) returns "
        "bit-identical outputs and gradients to direct kernel calls under the same torch seed.",
        "",
    ]
    lines += markdown_table(
        [
            "case", "T", "same winners f=u / f=r", "active fraction",
            "max abs out diff f-u / f-r", "max abs grad diff f-u / f-r / u-r", "max abs grad",
            "layer = kernel", "ok",
        ],
        (
            [
                c["case"],
                f"{c['temperature']:g}",
                f"{c['same_winners_fused_unfused']} / {c['same_winners_fused_reference']}",
                f"{c['active_fraction']:.4f}",
                f"{c['max_abs_out_diff_fused_unfused']:.1e} / "
                f"{c['max_abs_out_diff_fused_reference']:.1e}",
                f"{c['max_abs_grad_diff_fused_unfused']:.1e} / "
                f"{c['max_abs_grad_diff_fused_reference']:.1e} / "
                f"{c['max_abs_grad_diff_unfused_reference']:.1e}",
                f"{c['max_abs_grad']:.1e}",
                c["layer_equals_kernel"],
                _ok(c),
            ]
            for c in rec["cross_check_fused_float32"]
        ),
    )  # fmt: skip
    logits = ", ".join(f"{v:g}" for v in s["chi2_logits"])
    lines += [
        "",
        "### 3. Fused kernel winner distribution vs softmax(h / T)",
        "",
        f"One block h = ({logits}) (U = {len(s['chi2_logits'])}) repeated, the kernel's own "
        "noise (seeded from torch's RNG on every call), training forward. Chi-square statistic "
        f"of the winner counts against softmax(h / T); required p >= {s['chi2_alpha']:g}.",
        "",
    ]
    lines += markdown_table(
        [
            "layout", "T", "draws (calls)", "chi-square", "dof", "p-value", "max abs freq diff",
            "min expected count", "ok",
        ],
        (
            [
                c["layout"], f"{c['temperature']:g}", f"{c['draws']:,} ({c['kernel_calls']})",
                f"{c['chi2']:.2f}", c["dof"], f"{c['p_value']:.3f}",
                f"{c['max_abs_freq_diff']:.1e}", f"{c['min_expected']:.0f}", _ok(c),
            ]
            for c in rec["chi_square_fused"]
        ),
    )  # fmt: skip
    return lines


def _ok(check: dict[str, Any]) -> str:
    return "yes" if check["ok"] else "**NO**"


def render_markdown(rec: dict[str, Any]) -> str:
    """The human-readable report."""
    lines = [
        *_header(rec),
        "",
        "Training-mode forward + backward time of discover's `LWTA` (fused C kernel, and the "
        "unfused torch code for context) against a transcription of the reference code path "
        "(method.md §2.4), the plain activation and a fresh-buffer floor, and of LWTA models "
        "against their dense twins. Produced by `benchmarks/lwta_speed.py`.",
        "",
        *_machine_lines(rec),
        "",
        "Times are milliseconds per forward + backward: median (q1-q3 over the timed rounds). "
        "The bold ratio is the ratio of medians (the one judged against the target); *paired* is "
        "the median (q1-q3) of the per-round ratios; *of mins* is the ratio of the fastest rounds "
        "(least disturbed by other processes). *saved MB* is what autograd keeps for backward "
        "(unique storages, input included); *faults* is the median number of minor page faults "
        "per call.",
        "",
        *_check_tables(rec),
        "",
        f"## Layer level: fused vs reference (target ratio <= {LAYER_TARGET})",
        "",
        "*floor*: allocate and write once the four buffers the fused path returns (output, "
        "winner mask, soft sample, input gradient), nothing else; the same for every U.",
        "",
        *_layer_table(rec["layers"]),
    ]
    if rec["models"]:
        lines += [
            "",
            f"## Model level: LWTA model vs dense twin (target ratio <= {MODEL_TARGET})",
            "",
            *_model_table(rec["models"]),
        ]
    lines += ["", "## Verdict", "", *_verdict_lines(rec)]
    lines += [
        "",
        "Notes: the timings are wall-clock. The load average counts this benchmark's own "
        "threads too; the *other processes* line above is the measure of outside load. "
        "Round-robin interleaving spreads outside noise over all variants, and the paired "
        "ratios compare variants within the same round. Process CPU time and page faults per "
        "call are in the JSON file (`cpu`, `minor_faults_median`).",
        "",
    ]
    return "\n".join(lines)


def _layer_table(layers: list[dict[str, Any]]) -> list[str]:
    rows = []
    for r in layers:
        fr = r["fused_over_reference"]
        rows.append(
            [
                f"{r['kind']} {tuple(r['shape'])}",
                r["U"],
                fmt_stat(r["fused"]),
                fmt_stat(r["unfused"]),
                fmt_stat(r["reference"]),
                f"{r['plain']['name'].split()[-1]} {fmt_stat(r['plain'])}",
                fmt_stat(r["floor"]),
                f"**{fr['median']:.2f}x**",
                fmt_ratio(fr),
                f"{fr['of_mins']:.2f}",
                f"{r['unfused_over_reference']['median']:.2f}x",
                f"{r['fused_over_plain']['median']:.1f}x",
                f"{r['floor_over_reference']['median']:.2f}x",
                f"{r['fused']['minor_faults_median']:.0f} / {r['floor']['minor_faults_median']:.0f}",
                " / ".join(
                    f"{r[k]['saved_mb']:.0f}" for k in ("fused", "unfused", "reference", "plain")
                ),
                verdict(fr["median"], LAYER_TARGET),
            ]
        )
    return markdown_table(
        [
            "input", "U", "fused ms", "unfused ms", "reference ms", "plain ms", "floor ms",
            "**fused / reference**", "paired", "of mins", "unfused / reference", "fused / plain",
            "floor / reference", "faults fused / floor", "saved MB f / u / r / p", "target",
        ],
        rows,
    )  # fmt: skip


def _model_table(models: list[dict[str, Any]]) -> list[str]:
    rows = []
    for r in models:
        fd = r["fused_over_dense"]
        rows.append(
            [
                f"{r['model']} ({r['lwta_layers']} LWTA layers)",
                r["U"],
                f"{r['batch']}, {r['size']}",
                fmt_stat(r["fused"]),
                fmt_stat(r["unfused"]),
                fmt_stat(r["dense"]),
                f"**{fd['median']:.2f}x**",
                fmt_ratio(fd),
                f"{fd['of_mins']:.2f}",
                f"{r['unfused_over_dense']['median']:.2f}x",
                f"{r['fused']['saved_mb']:.0f} / {r['dense']['saved_mb']:.0f}",
                f"{r['params_lwta']:,} / {r['params_dense']:,}",
                verdict(fd["median"], MODEL_TARGET),
            ]
        )
    return markdown_table(
        [
            "model", "U", "batch, px", "fused ms", "unfused ms", "dense ms", "**fused / dense**",
            "paired", "of mins", "unfused / dense", "saved MB LWTA / dense",
            "params LWTA / dense", "target",
        ],
        rows,
    )  # fmt: skip


def _verdict_lines(rec: dict[str, Any]) -> list[str]:
    checks = (
        rec["cross_check_unfused_float64"]
        + rec["cross_check_fused_float32"]
        + rec["chi_square_fused"]
    )
    n_ok = sum(c["ok"] for c in checks)
    lines = [
        f"- Correctness cross-checks (float64 unfused = reference; float32 fused = unfused = "
        f"reference; fused winner frequencies = softmax(h / T)): {n_ok} of {len(checks)} "
        f"passed: **{pass_fail(n_ok == len(checks))}**",
    ]
    layers = rec["layers"]
    layer_pass = all(r["fused_over_reference"]["median"] <= LAYER_TARGET for r in layers)
    lines.append(
        f"- fused / reference <= {LAYER_TARGET} on every layer case: "
        f"**{pass_fail(layer_pass)}** ("
        + ", ".join(
            f"{r['kind']} U={r['U']} {r['fused_over_reference']['median']:.2f}x" for r in layers
        )
        + ")"
    )
    for r in layers:
        ratio = r["fused_over_reference"]["median"]
        if ratio <= LAYER_TARGET:
            continue
        ref, fused, floor = (r[k]["median_ms"] for k in ("reference", "fused", "floor"))
        lines.append(
            f"  - {r['kind']} {tuple(r['shape'])} U={r['U']} misses by "
            f"{ratio - LAYER_TARGET:.2f} ({ratio / LAYER_TARGET:.2f}x the target): the target "
            f"needs <= {LAYER_TARGET * ref:.1f} ms, the fused path takes {fused:.1f} ms. "
            f"Allocating and writing its output buffers alone (three float32 buffers of "
            f"{r['buffer_mb']:.1f} MB and a bool mask of {r['buffer_mb'] / 4:.1f} MB: the floor) "
            f"takes {floor:.1f} ms = {floor / ref:.2f}x the reference "
            f"({r['floor']['minor_faults_median']:.0f} page faults per call"
            + (
                "; buffers over 32 MB are mmap'd fresh by glibc on every allocation"
                if r["buffer_mb"] > 32
                else ""
            )
            + f"), leaving {fused - floor:.1f} ms of compute."
        )
    models = rec["models"]
    if models:
        model_pass = all(r["fused_over_dense"]["median"] <= MODEL_TARGET for r in models)
        lines.append(
            f"- LWTA model (fused) / dense twin <= {MODEL_TARGET} on every model case: "
            f"**{pass_fail(model_pass)}** ("
            + ", ".join(
                f"{r['model']} U={r['U']} {r['fused_over_dense']['median']:.2f}x" for r in models
            )
            + ")"
        )
        for r in models:
            ratio = r["fused_over_dense"]["median"]
            if ratio > MODEL_TARGET:
                lines.append(
                    f"  - {r['model']} misses by {ratio - MODEL_TARGET:.2f}: the target needs "
                    f"<= {MODEL_TARGET * r['dense']['median_ms']:.1f} ms, the fused model takes "
                    f"{r['fused']['median_ms']:.1f} ms."
                )
    share = rec["machine"].get("other_processes_cpu_share")
    if share is not None and share > 0.10:
        over = [
            f"{r['kind']} U={r['U']} {r['fused_over_reference']['of_mins']:.2f}"
            for r in layers
            if r["fused_over_reference"]["of_mins"] > LAYER_TARGET
        ] + [
            f"{r['model']} {r['fused_over_dense']['of_mins']:.2f}"
            for r in models
            if r["fused_over_dense"]["of_mins"] > MODEL_TARGET
        ]
        lines.append(
            f"- **Caveat:** other processes used {100 * share:.0f}% of the CPU during this run, "
            "so every time above is inflated and the model ratios in particular are compressed "
            "towards 1 (the dense twin suffers the same contention). Ratios of the fastest "
            "rounds above their target: "
            + (", ".join(over) if over else "none")
            + ". A run on an idle machine is the firmer measurement."
        )
    return lines


def rerender(json_path: Path) -> None:
    """Rewrite the Markdown next to a results JSON from that JSON (no new measurement)."""
    record = json.loads(json_path.read_text())
    json_path.with_suffix(".md").write_text(render_markdown(record))


if __name__ == "__main__":
    sys.exit(main())
