"""The C kernel behind :func:`discover.dissection.similarity.soft_wpmi` (float32, CPU).

``csrc/similarity.c`` is compiled on first use with the system C compiler into the cache
root (see :func:`discover._utils.load_c_library`) and loaded with :mod:`ctypes`. Without a
compiler, or with ``DISCOVER_SIMILARITY_KERNEL=0``, :func:`available` is false and the
similarity functions use their torch code, which computes the same sums.
"""

from __future__ import annotations

import ctypes

import torch

from discover._utils import CKernel
from discover.errors import InputError

__all__ = [
    "available",
    "centred_cubes",
    "enabled",
    "reorder_errors",
    "reorder_keys",
    "soft_wpmi_sums",
]


def _declare(lib: ctypes.CDLL) -> None:
    i64, ptr, c_int, f32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int, ctypes.c_float
    lib.soft_wpmi_sums.argtypes = [ptr, i64, ptr, i64, i64, ptr, ptr, i64, i64, ptr, i64, c_int]
    lib.soft_wpmi_sums.restype = None
    lib.centred_cubes.argtypes = [ptr, i64, i64, i64, ptr, ptr, c_int]
    lib.centred_cubes.restype = None
    lib.reorder_keys.argtypes = [ptr, i64, i64, ptr, i64, c_int, c_int, ptr]
    lib.reorder_keys.restype = None
    lib.reorder_errors.argtypes = [ptr, i64, i64, i64, c_int, ptr, ptr, f32, ptr, i64]
    lib.reorder_errors.restype = None


_KERNEL = CKernel(
    "discover.dissection",
    "csrc/similarity.c",
    "similarity kernel",
    env="DISCOVER_SIMILARITY_KERNEL",
    declare=_declare,
)
available = _KERNEL.available
enabled = _KERNEL.enabled  # ``with enabled(False):`` runs the torch code (benchmarks, checks)
_library = _KERNEL.library


def soft_wpmi_sums(
    prob: torch.Tensor,
    local: torch.Tensor,
    scale: torch.Tensor,
    shift: torch.Tensor,
    group: int,
    out: torch.Tensor,
) -> torch.Tensor:
    """``out[k, m] = sum_g log(prod_{j in g} (scale[j] prob[local[k, j], m] + shift[j]))``
    over consecutive groups of ``group`` ranks; ``prob`` ``[R, W]`` float32 contiguous,
    ``local`` ``[K, top_k]`` int64, ``out`` ``[K, W]`` float32 with unit row stride."""
    lib = _library()
    if lib is None or not _KERNEL.on:
        raise RuntimeError("the similarity kernel is not available")
    K, top_k = local.shape
    if not (
        prob.dtype == scale.dtype == shift.dtype == out.dtype == torch.float32
        and local.dtype == torch.int64
        and prob.is_contiguous()
        and local.is_contiguous()
        and out.stride(1) == 1
        and out.shape == (K, prob.shape[1])
        and scale.numel() == shift.numel() == top_k
    ):
        raise InputError("soft_wpmi_sums: unexpected dtypes, shapes or strides")
    scale, shift = scale.contiguous(), shift.contiguous()
    lib.soft_wpmi_sums(
        prob.data_ptr(),
        prob.shape[1],
        local.data_ptr(),
        K,
        top_k,
        scale.data_ptr(),
        shift.data_ptr(),
        int(group),
        prob.shape[0],
        out.data_ptr(),
        out.stride(0),
        torch.get_num_threads(),
    )
    return out


def centred_cubes(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out = (x - x.mean(0))**3`` (float32, columns of ``x`` may be a strided slice of a
    wider matrix, rows contiguous); returns the squared column norms of ``out``."""
    lib = _library()
    if lib is None or not _KERNEL.on:
        raise RuntimeError("the similarity kernel is not available")
    rows, cols = x.shape
    if not (
        x.dtype == out.dtype == torch.float32
        and x.stride(1) == 1
        and out.is_contiguous()
        and out.shape == x.shape
    ):
        raise InputError("centred_cubes: unexpected dtypes, shapes or strides")
    sumsq = torch.empty(cols, dtype=torch.float32)
    lib.centred_cubes(
        x.data_ptr(),
        rows,
        cols,
        x.stride(0),
        out.data_ptr(),
        sumsq.data_ptr(),
        torch.get_num_threads(),
    )
    if cols and float(sumsq[0]) < 0:
        raise MemoryError("centred_cubes: out of memory for the column sums")
    return sumsq


def reorder_keys(ranks, top, bits: int, keys) -> None:
    """``keys[m, k, j] = ranks[m, top[k, j]] << bits | j`` (numpy arrays: ``ranks`` int32
    ``[mc, N]``, ``top`` int32 ``[kc, n]``, ``keys`` int32 ``[mc, kc, n]``, all C-ordered).
    Releases the GIL (ctypes)."""
    lib = _library()
    if lib is None:
        raise RuntimeError("the similarity kernel is not available")
    (mc, N), (kc, n) = ranks.shape, top.shape
    lib.reorder_keys(ranks.ctypes.data, N, mc, top.ctypes.data, kc, n, bits, keys.ctypes.data)


def reorder_errors(keys, bits: int, acts, asc, p: float, out) -> None:
    """``out[k, m] = mean_j |acts[k, keys[m, k, j] & mask] - asc[k, j]|^p`` with the sorted
    ``keys`` (int32 ``[mc, kc, n]``), ``acts``/``asc`` float32 ``[kc, n]`` and ``out`` a
    float32 ``[kc, mc']`` view with unit column stride. Releases the GIL (ctypes)."""
    lib = _library()
    if lib is None:
        raise RuntimeError("the similarity kernel is not available")
    mc, kc, n = keys.shape
    lib.reorder_errors(
        keys.ctypes.data,
        mc,
        kc,
        n,
        bits,
        acts.ctypes.data,
        asc.ctypes.data,
        float(p),
        out.ctypes.data,
        out.strides[0] // out.itemsize,
    )
