"""The rank-reorder score (CLIP-Dissect ``rank_reorder``): how far a concept's ordering of a
unit's top images moves the unit's activations, against random orderings."""

from __future__ import annotations

import math
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import Tensor

from discover.dissection import similarity_kernel
from discover.dissection.similarity.common import (
    fill_info,
    positive_int,
    prepare,
    slices,
    top_images,
)
from discover.errors import InputError

__all__ = ["rank_reorder", "min_ranks", "reorder_errors"]

_RANK_ROWS = 16  # rows per block in min_ranks


def _packed_sort(rows: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Sort every row of a contiguous CPU ``float32`` ``[r, N]`` tensor (ascending) as 64-bit
    integer keys.

    Each key packs the order-preserving integer image of a float (``-0.0`` as ``+0.0``)
    above the column index, so ties keep index order (a
    stable sort) and numpy's SIMD integer sort does the work, several times faster than a
    float argsort. Returns the sorted integer images and the column order, each ``[r, N]``.
    """
    shift = max(1, (rows.shape[1] - 1).bit_length())
    keys = np.add(rows.numpy(), np.float32(0.0)).view(np.int32).astype(np.int64)  # -0.0 -> 0.0
    flip = keys >> 63  # all ones where negative: flip the magnitude bits there
    flip &= 0x7FFFFFFF
    keys ^= flip
    keys <<= shift
    keys |= np.arange(rows.shape[1], dtype=np.int64)
    keys.sort(axis=1)
    order = keys & ((1 << shift) - 1)
    keys >>= shift
    return keys, order


def _packable(x: Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.float32 and x.shape[-1] < 2**31


def min_ranks(x: Tensor, packed: bool | None = None) -> Tensor:
    """Rank of every entry of each row of ``x`` ``[r, N]`` in its row, as ``int32``.

    The rank is the number of strictly smaller entries, so equal values share the lowest
    rank and the order of ranks is the order of values. ``packed``: sort with
    :func:`_packed_sort` (default: wherever it applies, CPU ``float32``).
    """
    r, N = x.shape
    if packed is None:
        packed = _packable(x)
    if packed:  # in blocks of rows: small temporaries are reused, not paged in afresh
        ranks = torch.empty(r, N, dtype=torch.int32)
        ranks_np = ranks.numpy()
        positions = np.arange(N, dtype=np.int32)
        for rs in slices(r, _RANK_ROWS):
            keys, order = _packed_sort(x[rs])
            new = keys[:, 1:] != keys[:, :-1]
            if new.all():  # no ties: the rank is the sorted position
                first = np.broadcast_to(positions, keys.shape)
            else:  # ties take the position of the first of their run
                run = positions * np.concatenate([np.ones_like(new[:, :1]), new], axis=1)
                first = np.maximum.accumulate(run, axis=1)
            # Scatter with numpy: this runs on pool threads, where torch ops would start
            # parallel regions of their own.
            order += (np.arange(rs.stop - rs.start) * N)[:, None]
            ranks_np[rs].reshape(-1)[order.reshape(-1)] = first.reshape(-1)
        return ranks
    values, order = torch.sort(x, dim=1)
    new = torch.ones(r, N, dtype=torch.bool, device=x.device)
    torch.ne(values[:, 1:], values[:, :-1], out=new[:, 1:])
    first = torch.arange(N, device=x.device).mul(new).cummax(dim=1).values
    ranks = torch.empty(r, N, dtype=torch.int32, device=x.device)
    return ranks.scatter_(1, order, first.to(torch.int32))


def reorder_errors(
    ranks: Tensor,
    top: Tensor,
    acts: Tensor,
    p: float,
    chunk_size: int,
    pool: ThreadPoolExecutor | None = None,
) -> Tensor:
    """``err[k, m] = mean_j |acts[k, order_j] - asc[k, j]|^p`` for the concepts of ``ranks``.

    ``ranks`` ``[mc, N]`` are the concepts' :func:`min_ranks` over all images, ``top``
    ``[K, n]`` each unit's top images and ``acts`` ``[K, n]`` their activations, descending.
    ``order`` sorts a unit's images by concept score, ties kept in activation order (a
    stable argsort): each image's key packs its concept rank above its index in ``top``, so
    sorting small integers replaces the float argsort. With a ``pool`` (CPU tensors) the
    work is numpy's (a SIMD sort for 32-bit keys), unit chunks running on the pool's threads
    (numpy releases the GIL); without, torch's. Returns ``[K, mc]`` in the dtype of ``acts``.
    """
    N, n = ranks.shape[1], top.shape[1]
    local_bits = max(1, (n - 1).bit_length())
    wide = (N - 1).bit_length() + local_bits > 31
    if pool is None:
        return _torch_errors(ranks, top, acts, p, chunk_size, local_bits, wide)
    return _numpy_errors(ranks, top, acts, p, chunk_size, pool, local_bits, wide)


def _torch_errors(
    ranks: Tensor, top: Tensor, acts: Tensor, p: float, chunk_size: int, local_bits: int,
    wide: bool,
) -> Tensor:  # fmt: skip
    """:func:`reorder_errors` with torch operations, ``chunk_size`` units at a time."""
    (mc, _), (K, n) = ranks.shape, top.shape
    key_dtype = torch.int64 if wide else torch.int32
    local = torch.arange(n, dtype=key_dtype, device=ranks.device)
    out = torch.empty(K, mc, dtype=acts.dtype, device=ranks.device)
    for ks in slices(K, chunk_size):
        keys = ranks.index_select(1, top[ks].reshape(-1)).to(key_dtype).view(mc, -1, n)
        keys = keys.bitwise_left_shift_(local_bits).bitwise_or_(local)
        order = torch.sort(keys, dim=-1).values.bitwise_and_((1 << local_bits) - 1)
        moved = acts[ks].expand(mc, -1, -1).gather(-1, order.long())
        err = moved.sub_(acts[ks].flip(1)).abs_().pow_(p).mean(dim=-1)
        out[ks] = err.T
    return out


def _numpy_errors(
    ranks: Tensor, top: Tensor, acts: Tensor, p: float, chunk_size: int,
    pool: ThreadPoolExecutor, local_bits: int, wide: bool,
) -> Tensor:  # fmt: skip
    """:func:`reorder_errors` with numpy (or the C kernel), unit chunks on ``pool``'s threads,
    each with its own scratch buffers (fresh pages cost more than the work)."""
    R, top_np, acts_np = ranks.numpy(), top.cpu().numpy(), acts.numpy()
    (mc, _), (K, n) = ranks.shape, top.shape
    asc_np = np.ascontiguousarray(acts_np[:, ::-1])
    out_np = np.empty((K, mc), dtype=acts_np.dtype)
    size = mc * min(chunk_size, K) * n
    scratch = threading.local()
    fused = (
        not wide
        and acts_np.dtype == np.float32
        and R.dtype == np.int32
        and similarity_kernel.available()
    )
    if fused:  # the C kernel builds the keys and computes the errors in one pass each
        chunk = partial(
            _fused_chunk, ranks=np.ascontiguousarray(R),
            top=np.ascontiguousarray(top_np, dtype=np.int32),  # < N < 2**31 (not wide)
            acts=np.ascontiguousarray(acts_np), asc=asc_np, p=p, local_bits=local_bits,
            out=out_np, scratch=scratch, size=size,
        )  # fmt: skip
    else:
        chunk = partial(
            _numpy_chunk, ranks=R, top=top_np, acts=acts_np, asc=asc_np, p=p,
            local_bits=local_bits, key_dtype=np.int64 if wide else np.int32, out=out_np,
            scratch=scratch, size=size,
        )  # fmt: skip
    list(pool.map(chunk, slices(K, chunk_size)))
    return torch.from_numpy(out_np)


def _fused_chunk(
    ks: slice, *, ranks: np.ndarray, top: np.ndarray, acts: np.ndarray, asc: np.ndarray,
    p: float, local_bits: int, out: np.ndarray, scratch: threading.local, size: int,
) -> None:  # fmt: skip
    """The errors of the units ``ks`` by the C kernel: keys, a numpy sort, errors."""
    if not hasattr(scratch, "keys"):
        scratch.keys = np.empty(size, dtype=np.int32)
    mc, n, kc = ranks.shape[0], top.shape[1], ks.stop - ks.start
    keys = scratch.keys[: mc * kc * n].reshape(mc, kc, n)
    similarity_kernel.reorder_keys(ranks, top[ks], local_bits, keys)
    keys.sort(axis=-1)
    similarity_kernel.reorder_errors(keys, local_bits, acts[ks], asc[ks], p, out[ks])


def _numpy_chunk(
    ks: slice, *, ranks: np.ndarray, top: np.ndarray, acts: np.ndarray, asc: np.ndarray,
    p: float, local_bits: int, key_dtype: type, out: np.ndarray, scratch: threading.local,
    size: int,
) -> None:  # fmt: skip
    """The errors of the units ``ks`` with numpy, in the thread's scratch buffers."""
    if not hasattr(scratch, "keys"):
        scratch.keys = np.empty(size, dtype=key_dtype)
        scratch.index = np.empty(size, dtype=np.intp)
        scratch.moved = np.empty(size, dtype=acts.dtype)
        scratch.power = np.empty(size, dtype=acts.dtype)
    mc, n, kc = ranks.shape[0], top.shape[1], ks.stop - ks.start
    shape, used = (mc, kc, n), mc * kc * n
    keys = scratch.keys[:used].reshape(shape)
    np.take(ranks, top[ks].reshape(-1), axis=1, out=keys.reshape(mc, -1), mode="clip")
    keys <<= local_bits
    keys |= np.arange(n, dtype=key_dtype)
    keys.sort(axis=-1)
    index = scratch.index[:used].reshape(shape)
    np.bitwise_and(keys, (1 << local_bits) - 1, out=index)
    index += (np.arange(kc) * n)[:, None]
    moved = scratch.moved[:used].reshape(shape)
    np.take(acts[ks].reshape(-1), index, out=moved, mode="clip")
    moved -= asc[ks]
    np.abs(moved, out=moved)
    power = scratch.power[:used].reshape(shape)
    if p == 3.0:
        np.multiply(moved, moved, out=power)
        power *= moved
    else:
        np.power(moved, p, out=power)
    out[ks] = power.mean(axis=-1).T


@torch.no_grad()
def rank_reorder(
    concept_acts: Tensor,
    neuron_acts: Tensor,
    *,
    top_fraction: float = 0.05,
    p: float = 3.0,
    scale_p: float = 0.5,
    num_permutations: int = 5,
    seed: int = 0,
    min_avg: float = 1e-6,
    chunk_size: int = 8,
    concept_chunk_size: int = 256,
    top_n: int | None = None,
    info: dict[str, Any] | None = None,
) -> Tensor:
    """Rank-reorder score (CLIP-Dissect ``rank_reorder``), ``docs/method.md`` §7.5.

    With ``n = clamp(floor(top_fraction N), 1, N)``, the top-n activations
    ``a_1 >= ... >= a_n`` of unit ``k`` on images ``A_k`` and ``c_i = P[A_k[i], m]``::

        rho_i    = ascending rank of c_i among c_1..c_n (stable: ties keep activation order)
        r_i      = (a sorted ascending)[rho_i]
        err[m]   = mean_i |a_i - r_i|^p
        baseline = mean over permutations pi of mean_i |a_asc,i - a_asc,pi(i)|^p
        S[k, m]  = -(err[m] / baseline) / max(mean_i c_i, min_avg)^scale_p

    The ``num_permutations`` permutations of ``0..n-1`` are drawn once, as
    ``torch.randperm(n, generator=g)`` in turn from a local ``torch.Generator`` seeded with
    ``seed``, and shared by all units (the reference draws new ones per unit; the baseline is
    a per-unit constant, so this never changes a unit's ranking of concepts). The global RNG
    is untouched. Guards absent from the reference: ``min_avg`` keeps concepts with a
    non-positive mean score finite (they rank last), and a zero baseline (a unit whose top-n
    activations are all equal, e.g. a dead unit) gives ``S = 0``.

    ``top_n`` sets ``n`` directly (clamped to ``N``) instead of ``top_fraction``: a streamed
    dissection (:mod:`discover.dissection.streaming`) scores the rows of the units' top
    images only, with the ``n`` of the whole probe.

    How: every concept column is ranked once over all ``N`` images (one sort per concept);
    a unit's ordering of its ``n`` images is then a sort of small integer keys (concept rank,
    then position in the unit's top list), done for ``chunk_size`` units at a time on all
    threads. Largest temporaries: about ``3 * N * concept_chunk_size`` 8-byte values for the
    ranks and ``3 * chunk_size * n * concept_chunk_size`` values per thread.

    Example:
        >>> P, Q = torch.rand(200, 4), torch.randn(200, 3)
        >>> torch.equal(rank_reorder(P, Q, seed=1), rank_reorder(P, Q, seed=1))
        True
    """
    dtype = prepare(concept_acts, neuron_acts)
    P, Q = concept_acts, neuron_acts
    if not 0.0 < top_fraction <= 1.0:
        raise InputError(f"top_fraction must be in (0, 1], got {top_fraction!r}")
    num_permutations = positive_int("num_permutations", num_permutations)
    chunk_size = positive_int("chunk_size", chunk_size)
    concept_chunk_size = positive_int("concept_chunk_size", concept_chunk_size)
    N = P.shape[0]
    requested = math.floor(top_fraction * N) if top_n is None else positive_int("top_n", top_n)
    n = min(N, max(1, requested))
    if n != requested and top_n is None:
        warnings.warn(
            f"top_fraction={top_fraction} of N={N} images is {requested}; using 1 image",
            stacklevel=3,
        )
    acts, idx, baseline = _top_activations(Q, dtype, n, p, num_permutations, seed, P.device)
    out = _reorder_scores(
        P, dtype, acts, idx, baseline, p=p, scale_p=scale_p, min_avg=min_avg,
        chunk_size=chunk_size, concept_chunk_size=concept_chunk_size,
    )  # fmt: skip
    fill_info(
        info, "rank_reorder", P, Q, dtype, top_fraction=top_fraction, top_n=n,
        top_n_requested=requested, top_n_clamped=n != requested, p=p, scale_p=scale_p,
        num_permutations=num_permutations, seed=seed, min_avg=min_avg,
    )  # fmt: skip
    return out


def _top_activations(
    Q: Tensor, dtype: torch.dtype, n: int, p: float, num_permutations: int, seed: int,
    device: torch.device,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Each unit's top-``n`` activations (descending) and their images, ``[K, n]`` each, and
    its baseline error ``[K]``: the mean error of ``num_permutations`` random orderings,
    drawn from a generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    perms = torch.stack(
        [torch.randperm(n, generator=generator) for _ in range(num_permutations)]
    ).to(device)
    top = [top_images(Q[:, ks].to(dtype), n) for ks in slices(Q.shape[1], 64)]
    acts = torch.cat([values for values, _ in top])  # [K, n], descending
    idx = torch.cat([indices for _, indices in top])
    asc = acts.flip(1)
    baseline = (asc[:, None, :] - asc[:, perms]).abs_().pow_(p).mean(dim=(1, 2))
    baseline.clamp_min_(torch.finfo(dtype).tiny)
    return acts, idx, baseline


def _reorder_scores(
    P: Tensor, dtype: torch.dtype, acts: Tensor, idx: Tensor, baseline: Tensor, *, p: float,
    scale_p: float, min_avg: float, chunk_size: int, concept_chunk_size: int,
) -> Tensor:  # fmt: skip
    """``S`` ``[K, M]``, one chunk of concepts at a time: their ranks over all images (one
    sort per concept, on all threads), then every unit's reorder error."""
    K, M = acts.shape[0], P.shape[1]
    out = torch.empty(K, M, dtype=dtype, device=P.device)
    threads = max(1, torch.get_num_threads()) if P.device.type == "cpu" else 0
    with ThreadPoolExecutor(threads or 1) as pool:
        for cs in slices(M, concept_chunk_size):
            c = P[:, cs].to(dtype).contiguous()
            avg = torch.nn.functional.embedding_bag(idx, c, mode="mean")  # [K, mc]
            parts = c.T.contiguous().chunk(threads or 1)  # ranks: one sort per concept
            ranks = torch.cat(list(pool.map(min_ranks, parts)))
            err = reorder_errors(ranks, idx, acts, p, chunk_size, pool if threads else None)
            scale = avg.clamp_min_(min_avg).pow_(scale_p)
            out[:, cs] = err.div_(baseline[:, None]).div_(scale).neg_()
    return out
