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
import os
import threading
import warnings

import torch

from discover._utils import load_c_library

__all__ = ["available", "backward", "enabled", "forward", "gumbel_of", "supports"]

_LOCK = threading.Lock()
_LIB: ctypes.CDLL | None = None
_TRIED = False
_ENABLED = True


def _build() -> ctypes.CDLL | None:
    lib = load_c_library("discover.nn", "csrc/lwta.c", "fused LWTA kernel")
    if lib is None:
        return None
    i64, f32, ptr, c_int = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p, ctypes.c_int
    lib.lwta_forward.argtypes = [ptr, ptr, ptr, ptr, i64, i64, i64, f32, f32, ctypes.c_uint64]
    lib.lwta_forward.argtypes += [ptr, c_int]
    lib.lwta_forward.restype = None
    lib.lwta_backward.argtypes = [ptr, ptr, ptr, ptr, ptr, i64, i64, i64, f32, c_int]
    lib.lwta_backward.restype = None
    lib.lwta_gumbel_of.argtypes = [ctypes.c_uint32]
    lib.lwta_gumbel_of.restype = ctypes.c_float
    return lib


def _library() -> ctypes.CDLL | None:
    global _LIB, _TRIED
    if not _TRIED:
        with _LOCK:
            if not _TRIED:
                try:
                    _LIB = _build() if os.environ.get("DISCOVER_LWTA_KERNEL", "1") != "0" else None
                except OSError as error:  # unwritable cache, unloadable object
                    warnings.warn(
                        f"discover: fused LWTA kernel unavailable ({error}); using the unfused "
                        "torch code",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                    _LIB = None
                _TRIED = True
    return _LIB


def library_path() -> str | None:
    """The compiled shared object in use (``None`` without a compiler)."""
    lib = _library()
    return None if lib is None else str(lib._name)


def available() -> bool:
    """Whether the fused kernel is built, loaded and enabled."""
    return _ENABLED and _library() is not None


class enabled:  # noqa: N801  (used like torch.no_grad)
    """Context manager that switches the fused kernel on or off (benchmarks, checks).

    Example:
        >>> with enabled(False):  # doctest: +SKIP
        ...     y = LWTA(4)(x)  # the unfused torch code
    """

    def __init__(self, on: bool) -> None:
        self.on = on

    def __enter__(self) -> None:
        global _ENABLED
        self.previous, _ENABLED = _ENABLED, self.on

    def __exit__(self, *exc: object) -> None:
        global _ENABLED
        _ENABLED = self.previous


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
