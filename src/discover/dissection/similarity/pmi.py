"""The pointwise-mutual-information family: ``wpmi`` and ``soft_wpmi`` (CLIP-Dissect's), scored
from each unit's top images on the union of those images only."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from discover.dissection import similarity_kernel
from discover.dissection.similarity.common import (
    BLOCK,
    LN2,
    clamped,
    fill_info,
    positive_int,
    prepare,
    slices,
    top_images,
)

__all__ = ["wpmi", "soft_wpmi"]

_SOFT_CONCEPT_BLOCK = 1024  # concepts per gathered block in soft WPMI
_SOFT_MAX_GROUP = 8  # soft-WPMI evidence terms multiplied together before one log


def _product_group(inclusion: Tensor, min_prob: float, dtype: torch.dtype) -> int:
    """How many soft-WPMI terms can be multiplied before taking one log, without underflow.

    Each term is ``p_j x + (1 - p_j) + min_prob`` with ``x`` in ``[0, 1]``, so it lies in
    ``[1 - p_j + min_prob, 1 + min_prob]`` when ``0 <= p_j <= 1``; the product of ``g`` terms
    stays a normal float when the smallest term to the power ``g`` does. Other ``p_j`` get 1.
    """
    p_min, p_max = float(inclusion.min()), float(inclusion.max())
    floor = 1.0 - p_max + min_prob
    if p_min < 0.0 or p_max > 1.0 or floor <= 0.0:
        return 1
    if floor >= 1.0:
        return _SOFT_MAX_GROUP
    safe = math.log(torch.finfo(dtype).tiny) + 20 * LN2  # 2**20 above the smallest normal
    return max(1, min(_SOFT_MAX_GROUP, int(safe / math.log(floor))))


def _rows_of(P: Tensor, rows: Tensor, dtype: torch.dtype, out: Tensor) -> Tensor:
    """``P[rows]`` in ``dtype``, written into ``out`` (contiguous)."""
    if P.dtype == dtype:
        return torch.index_select(P, 0, rows, out=out)
    return out.copy_(P.index_select(0, rows))


def _row_logsumexp(P: Tensor, rows: Tensor, a: float, dtype: torch.dtype) -> Tensor:
    """``logsumexp_m(a P[n, m])`` for the images ``rows``, in cache-sized row blocks."""
    lse = torch.empty(len(rows), dtype=dtype, device=P.device)
    block = max(1, min(len(rows), BLOCK // P.shape[1]))
    buffer = torch.empty(block * P.shape[1], dtype=dtype, device=P.device)
    for rs in slices(len(rows), block):
        x = _rows_of(
            P, rows[rs], dtype, buffer[: (rs.stop - rs.start) * P.shape[1]].view(-1, P.shape[1])
        )
        x.mul_(a)
        top = x.amax(dim=1, keepdim=True)
        lse[rs] = x.sub_(top).exp_().sum(dim=1).log_().add_(top[:, 0])
    return lse


def _evidence_weights(
    inclusion: Tensor, min_prob: float, dtype: torch.dtype, top_k: int
) -> tuple[int, int, Tensor, Tensor]:
    """Soft WPMI's terms ``scale_j x + shift_j`` (``p_j`` and ``1 - p_j + min_prob``), padded
    with terms equal to 1 to whole groups of :func:`_product_group` terms: ``(group, pad,
    scale, shift)``."""
    group = _product_group(inclusion, min_prob, dtype)
    pad = -top_k % group  # padded terms are 0 * x + 1 = 1
    scale = torch.nn.functional.pad(inclusion.view(top_k, 1), (0, 0, 0, pad))
    shift = torch.nn.functional.pad(
        (1.0 - inclusion + min_prob).view(top_k, 1), (0, 0, 0, pad), value=1.0
    )
    return group, pad, scale, shift


def _pmi(
    P: Tensor,
    Q: Tensor,
    dtype: torch.dtype,
    *,
    top_k: int,
    a: float,
    lam: float,
    min_prob: float,
    inclusion: Tensor | None,
    chunk_size: int,
    concept_chunk_size: int,
) -> Tensor:
    """Shared WPMI core: ``L[k, m]`` from the top-k rows of ``softmax(a P)``, minus the prior.

    ``softmax(a P)`` is only ever computed on the *union* of the units' top images (units
    share many): row normalisers ``logsumexp_m(a P[n, m])`` first, in cache-sized row
    blocks, then ``P~`` one concept chunk at a time in one reused buffer. Soft WPMI's terms
    depend on the rank ``j`` through ``inclusion`` (its ``p_j``; ``None`` for WPMI, which is
    the case ``p_j = 1``). On a CPU in float32 the C kernel
    (:mod:`discover.dissection.similarity_kernel`) sums the terms of both in one pass per
    unit, multiplying a few terms before each log (see :func:`_product_group`): for WPMI's
    28 terms 7 logs instead of 28. Elsewhere soft WPMI gathers its terms per unit chunk in
    the same groups, and WPMI sums ``log(P~ + min_prob)`` with one ``embedding_bag``. The
    prior of a concept chunk is taken as soon as its ``L`` is
    complete.
    """
    (_, M), K = P.shape, Q.shape[1]
    top = torch.cat([top_images(Q[:, ks], top_k)[1] for ks in slices(K, chunk_size)])
    rows, local = torch.unique(top, return_inverse=True)  # local: [K, top_k] into rows
    lse = _row_logsumexp(P, rows, a, dtype).unsqueeze(1)
    kernel = dtype == torch.float32 and P.device.type == "cpu" and similarity_kernel.available()
    if inclusion is None and kernel:  # WPMI is soft WPMI with every p_j = 1: the kernel sums it
        inclusion = torch.ones(1, top_k, 1, dtype=dtype, device=P.device)
    fused = inclusion is not None and kernel
    if inclusion is not None:
        group, pad, scale, shift = _evidence_weights(inclusion, min_prob, dtype, top_k)
    if fused:  # the kernel takes the unpadded ranks and forms the same groups
        local_k = local.contiguous()
        scale_k, shift_k = scale[:top_k, 0].contiguous(), shift[:top_k, 0].contiguous()
    elif inclusion is not None:
        concept_chunk_size = min(concept_chunk_size, _SOFT_CONCEPT_BLOCK)
        local = torch.nn.functional.pad(local, (0, pad))
        size = min(K, chunk_size) * (top_k + pad) * min(M, concept_chunk_size)
        scratch = torch.empty(size, dtype=dtype, device=P.device)  # gathered terms
    width = min(M, concept_chunk_size)
    buffer = torch.empty(len(rows) * width, dtype=dtype, device=P.device)
    out = torch.empty(K, M, dtype=dtype, device=P.device)
    for cs in slices(M, width):
        mc = cs.stop - cs.start
        prob = _rows_of(P[:, cs], rows, dtype, buffer[: len(rows) * mc].view(-1, mc))
        prob.mul_(a).sub_(lse).exp_()  # P~ on the union rows
        if inclusion is None:
            L = torch.nn.functional.embedding_bag(local, prob.add_(min_prob).log_(), mode="sum")
        elif fused:  # one pass per unit over its rows, products and logs in registers
            L = torch.empty(K, mc, dtype=dtype, device=P.device)
            similarity_kernel.soft_wpmi_sums(prob, local_k, scale_k, shift_k, group, L)
        else:
            L = torch.empty(K, mc, dtype=dtype, device=P.device)
            for ks in slices(K, chunk_size):
                used = (ks.stop - ks.start) * (top_k + pad) * mc
                terms = torch.index_select(
                    prob, 0, local[ks].reshape(-1), out=scratch[:used].view(-1, mc)
                ).view(-1, top_k + pad, mc)
                terms = terms.mul_(scale).add_(shift)  # p_j x + 1 - p_j + min_prob
                terms = terms.view(terms.shape[0], -1, group, mc).prod(dim=2)
                L[ks] = terms.log_().sum(dim=1)
        prior = torch.logsumexp(L, dim=0).sub_(math.log(K))
        out[:, cs] = L.sub_(lam * prior)
    return out


def _wpmi_scores(
    name: str,
    concept_acts: Tensor,
    neuron_acts: Tensor,
    info: dict[str, Any] | None,
    *,
    top_k: int,
    a: float,
    lam: float,
    min_prob: float,
    chunk_size: int,
    concept_chunk_size: int,
    inclusion_range: tuple[float, float] | None = None,
) -> Tensor:
    """The checks, :func:`_pmi` and ``info`` of :func:`wpmi` and (with ``inclusion_range`` =
    ``(p_start, p_end)``, the evidence weights ``p_j``) :func:`soft_wpmi`."""
    dtype = prepare(concept_acts, neuron_acts)
    P, Q = concept_acts, neuron_acts
    requested = positive_int("top_k", top_k)
    top_k = clamped("top_k", requested, P.shape[0])
    inclusion, extra = None, {}
    if inclusion_range is not None:
        p_start, p_end = inclusion_range
        j = torch.arange(top_k, dtype=dtype, device=P.device)
        inclusion = (p_start - j / top_k * (p_start - p_end)).view(1, top_k, 1)
        extra = {"p_start": p_start, "p_end": p_end}
    S = _pmi(
        P,
        Q,
        dtype,
        top_k=top_k,
        a=a,
        lam=lam,
        min_prob=min_prob,
        inclusion=inclusion,
        chunk_size=positive_int("chunk_size", chunk_size),
        concept_chunk_size=positive_int("concept_chunk_size", concept_chunk_size),
    )
    fill_info(
        info,
        name,
        P,
        Q,
        dtype,
        top_k=top_k,
        top_k_requested=requested,
        top_k_clamped=top_k != requested,
        a=a,
        lam=lam,
        **extra,
        min_prob=min_prob,
        prior_over_neurons=Q.shape[1],
    )
    return S


@torch.no_grad()
def wpmi(
    concept_acts: Tensor,
    neuron_acts: Tensor,
    *,
    top_k: int = 28,
    a: float = 2.0,
    lam: float = 0.6,
    min_prob: float = 1e-7,
    chunk_size: int = 64,
    concept_chunk_size: int = 4096,
    info: dict[str, Any] | None = None,
) -> Tensor:
    """Weighted pointwise mutual information (CLIP-Dissect ``wpmi``), ``docs/method.md`` §7.3.

    ``P~ = softmax(a P)`` over concepts (row-wise), ``A_k`` = top-k images of unit ``k``::

        L[k, m]  = sum_{i in A_k} log(P~[i, m] + min_prob)
        prior[m] = logsumexp_k L[k, m] - log K
        S[k, m]  = L[k, m] - lam * prior[m]

    The prior runs over all ``K`` columns passed in: score a whole layer at once
    (``info["prior_over_neurons"]`` records ``K``). Scores are unbounded log-ratios; compare
    them only within one setup. Largest temporary: ``N x concept_chunk_size`` (``P~`` on
    the union of the units' top images); ``chunk_size`` only batches the top-image search.

    Example:
        >>> P, Q = torch.rand(50, 4), torch.randn(50, 3)
        >>> wpmi(P, Q, top_k=5).shape
        torch.Size([3, 4])
    """
    return _wpmi_scores(
        "wpmi",
        concept_acts,
        neuron_acts,
        info,
        top_k=top_k,
        a=a,
        lam=lam,
        min_prob=min_prob,
        chunk_size=chunk_size,
        concept_chunk_size=concept_chunk_size,
    )


@torch.no_grad()
def soft_wpmi(
    concept_acts: Tensor,
    neuron_acts: Tensor,
    *,
    top_k: int = 100,
    a: float = 10.0,
    lam: float = 1.0,
    p_start: float = 0.998,
    p_end: float = 0.97,
    min_prob: float = 1e-7,
    chunk_size: int = 64,
    concept_chunk_size: int = 4096,
    info: dict[str, Any] | None = None,
) -> Tensor:
    """Soft WPMI (CLIP-Dissect ``soft_wpmi``; ``PAPER_SIMILARITY``), ``docs/method.md`` §7.4.

    ``P~ = softmax(a P)`` over concepts; ``i_0, ..., i_{top_k-1}`` are the top images of unit
    ``k`` in descending activation order; image ``i_j`` counts as evidence with probability
    ``p_j = p_start - (j / top_k) (p_start - p_end)``::

        L[k, m]  = sum_j log(p_j P~[i_j, m] + (1 - p_j) + min_prob)
        prior[m] = logsumexp_k L[k, m] - log K
        S[k, m]  = L[k, m] - lam * prior[m]

    ``top_k`` in ``p_j`` is the effective (clamped) value. Prior and units as in
    :func:`wpmi`. Largest temporaries: ``N x concept_chunk_size`` and
    ``chunk_size * top_k * 1024`` (the terms of one unit chunk and concept block).

    Example:
        >>> P, Q = torch.rand(300, 4), torch.randn(300, 3)
        >>> soft_wpmi(P, Q).shape
        torch.Size([3, 4])
    """
    return _wpmi_scores(
        "soft_wpmi",
        concept_acts,
        neuron_acts,
        info,
        top_k=top_k,
        a=a,
        lam=lam,
        min_prob=min_prob,
        chunk_size=chunk_size,
        concept_chunk_size=concept_chunk_size,
        inclusion_range=(p_start, p_end),
    )
