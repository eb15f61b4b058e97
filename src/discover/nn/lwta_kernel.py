"""The fused CPU kernel behind :class:`discover.LWTA` (float32, contiguous inputs).

``csrc/lwta.c`` is compiled on first use with the system C compiler (``$CC``, default
``gcc``; about a second) into ``<cache root>/kernels/`` and loaded with :mod:`ctypes`. The
shared object's name hashes the source, the flags, the compiler and the CPU's feature flags,
so a changed source or another machine never loads a stale build. Without a compiler, or
with ``DISCOVER_LWTA_KERNEL=0``, :func:`available` is false and ``LWTA`` uses its unfused
torch code, which draws from the same distribution.

The kernel draws its Gumbel noise from a counter-based generator (a keyed 32-bit hash of
the element's index) seeded by one 63-bit draw from torch's default generator per call, so
``torch.manual_seed`` makes runs reproducible, independent of the number of threads.
"""

from __future__ import annotations

import ctypes

import torch

from discover._utils import CKernel, c_flags

__all__ = [
    "available",
    "backward",
    "compile_flags",
    "enabled",
    "forward",
    "gumbel_of",
    "library_path",
    "supports",
]


def _declare(lib: ctypes.CDLL) -> None:
    i64, f32, ptr, c_int = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p, ctypes.c_int
    lib.lwta_forward.argtypes = [ptr, ptr, ptr, ptr, i64, i64, i64, f32, f32, ctypes.c_uint64]
    lib.lwta_forward.argtypes += [ptr, c_int]
    lib.lwta_forward.restype = None
    lib.lwta_backward.argtypes = [ptr, ptr, ptr, ptr, ptr, i64, i64, i64, f32, c_int]
    lib.lwta_backward.restype = None
    lib.lwta_gumbel_of.argtypes = [ctypes.c_uint32]
    lib.lwta_gumbel_of.restype = ctypes.c_float


_KERNEL = CKernel(
    "discover.nn", "csrc/lwta.c", "fused LWTA kernel", env="DISCOVER_LWTA_KERNEL", declare=_declare
)
available = _KERNEL.available
enabled = _KERNEL.enabled  # ``with enabled(False):`` runs the unfused torch code (checks)
_library = _KERNEL.library


def compile_flags() -> tuple[str, ...]:
    """The flags discover's C kernels are compiled with (``$DISCOVER_C_FLAGS`` replaces them);
    they are linked apart, without them, so loading one leaves the process's floating point
    alone."""
    return c_flags()


def library_path() -> str | None:
    """The compiled shared object in use (``None`` without a compiler)."""
    lib = _library()
    return None if lib is None else str(lib._name)


def supports(x: torch.Tensor) -> bool:
    """Whether the kernel can take ``x`` (float32, CPU, contiguous) and is available."""
    return x.dtype == torch.float32 and x.device.type == "cpu" and x.is_contiguous() and available()


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _seed() -> int:
    return int(torch.randint(0, 2**63 - 1, (1,), dtype=torch.int64).item())


def forward(
    blocks: torch.Tensor,
    temperature: float,
    tau: float | None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(out, hard, soft)`` for ``(P, U, Q)`` blocks; ``tau=None`` skips the surrogate.

    ``temperature = 0`` takes the largest value of every block (no noise). ``noise``, when
    given, is the Gumbel noise to use (same shape), for checks against the unfused code.
    """
    lib = _library()
    assert lib is not None and blocks.is_contiguous() and blocks.dtype == torch.float32
    P, U, Q = blocks.shape
    out = torch.empty_like(blocks)
    hard = torch.empty(blocks.shape, dtype=torch.bool)
    soft = torch.empty_like(blocks) if tau is not None else None
    if noise is not None:
        noise = noise.to(torch.float32).contiguous()
    lib.lwta_forward(
        _ptr(blocks),
        _ptr(out),
        _ptr(hard),
        _ptr(soft),
        P,
        U,
        Q,
        float(temperature),
        1.0 / tau if tau is not None else 1.0,
        _seed() if temperature > 0 and noise is None else 0,
        _ptr(noise),
        torch.get_num_threads(),
    )
    return out, hard, soft


def gumbel_of(bits: int) -> float:
    """The kernel's Gumbel noise for 32 random bits (to check the extremes)."""
    lib = _library()
    assert lib is not None
    return float(lib.lwta_gumbel_of(bits))


def backward(
    grad_out: torch.Tensor, h: torch.Tensor, soft: torch.Tensor, hard: torch.Tensor, tau: float
) -> torch.Tensor:
    """The straight-through gradient with respect to ``h`` (see ``csrc/lwta.c``)."""
    lib = _library()
    assert lib is not None
    grad_out = grad_out.to(torch.float32).contiguous()
    P, U, Q = h.shape
    grad = torch.empty_like(h)
    lib.lwta_backward(
        _ptr(grad_out),
        _ptr(h),
        _ptr(soft),
        _ptr(hard),
        _ptr(grad),
        P,
        U,
        Q,
        1.0 / tau,
        torch.get_num_threads(),
    )
    return grad
