"""The cosine family: ``cos`` and ``cos3`` (CLIP-Dissect's) and ``corr`` (Pearson correlation),
one GEMM per chunk of units and concepts straight into the output."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from discover.dissection import similarity_kernel
from discover.dissection.similarity.common import (
    column_norms,
    fill_info,
    positive_int,
    prepare,
    slices,
)

__all__ = ["cos", "cos3", "corr"]


@torch.no_grad()
def cos(
    concept_acts: Tensor,
    neuron_acts: Tensor,
    *,
    min_norm: float = 1e-12,
    chunk_size: int = 1024,
    concept_chunk_size: int = 1024,
    info: dict[str, Any] | None = None,
) -> Tensor:
    """Cosine similarity of uncentred columns (CLIP-Dissect ``cos``), ``docs/method.md`` §7.1.

    ``S[k, m] = <Q[:, k], P[:, m]> / (max(||Q[:, k]||, min_norm) * max(||P[:, m]||, min_norm))``

    The reference has no ``min_norm`` and returns NaN for an all-zero column; here such a
    unit scores 0 against every concept. ``min_norm`` is tiny so that it changes nothing else.
    ``P`` is read one chunk of ``concept_chunk_size`` concepts at a time (no copy when it has
    the compute dtype, else a cast of the chunk): the chunk's norms, then one GEMM per
    ``chunk_size`` units straight into the output, divided by those norms while the block is
    in cache (``benchmarks/dissect_speed.py`` times it against a bare matmul). Largest
    temporaries: ``N x K`` (the normalised ``Q``) and, for a
    cast, ``N x concept_chunk_size``.

    Example:
        >>> P = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> cos(P, torch.tensor([[2.0], [2.0]]))
        tensor([[0.7071, 0.7071]])
    """
    dtype = prepare(concept_acts, neuron_acts)
    P, Q = concept_acts, neuron_acts
    chunk_size = positive_int("chunk_size", chunk_size)
    concept_chunk_size = positive_int("concept_chunk_size", concept_chunk_size)
    (_, M), K = P.shape, Q.shape[1]
    q = Q.to(dtype)
    q = q / column_norms(q).clamp_min_(min_norm)
    out = torch.empty(K, M, dtype=dtype, device=P.device)
    for cs in slices(M, concept_chunk_size):
        p = P[:, cs].to(dtype)  # a view when P has the compute dtype
        p_norm = column_norms(p).clamp_min_(min_norm)
        for ks in slices(K, chunk_size):
            block = out[ks, cs]  # BLAS writes the slice in place (beta 0 ignores its contents)
            torch.addmm(block, q[:, ks].T, p, beta=0.0, out=block).div_(p_norm)
    fill_info(info, "cos", P, Q, dtype, min_norm=min_norm)
    return out


def _centred_cubed_unit(x: Tensor, min_norm: float) -> Tensor:
    """``(x - mean)^3`` per column, divided by ``max(||.||_2, min_norm)``; a new tensor."""
    x = x - x.mean(dim=0, keepdim=True)
    x.pow_(3)
    return x.div_(column_norms(x).clamp_min_(min_norm))


@torch.no_grad()
def cos3(
    concept_acts: Tensor,
    neuron_acts: Tensor,
    *,
    min_norm: float = 1e-3,
    chunk_size: int = 1024,
    concept_chunk_size: int = 1024,
    info: dict[str, Any] | None = None,
) -> Tensor:
    """Cosine of centred, cubed columns (CLIP-Dissect ``cos_similarity_cubed``), §7.2.

    ``X' = (X - mean_n X)^3`` column-wise for ``X`` in ``P, Q``;
    ``S[k, m] = <Q'[:, k], P'[:, m]> / (max(||Q'[:, k]||, min_norm) * max(||P'[:, m]||, min_norm))``

    Cubing emphasises the most activating images. A constant (e.g. dead) unit scores 0.
    ``Q'`` is computed once; each chunk of ``P'`` is written into one reused
    ``N x concept_chunk_size`` buffer (on a CPU in float32 by the C kernel of
    :mod:`discover.dissection.similarity_kernel`: two passes over the chunk instead of four;
    1,024 concepts at a time by default, which timed faster than 2,048 at N = 10k on a
    2-core EPYC with 32 MB of L3), multiplied by ``chunk_size`` units at a time straight
    into the output, and divided by the chunk's norms. Largest temporaries: that buffer and ``N x K``.

    Example:
        >>> P = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
        >>> cos3(P, P[:, :1]).argmax(dim=1)
        tensor([0])
    """
    dtype = prepare(concept_acts, neuron_acts)
    P, Q = concept_acts, neuron_acts
    chunk_size = positive_int("chunk_size", chunk_size)
    concept_chunk_size = positive_int("concept_chunk_size", concept_chunk_size)
    (_, M), K = P.shape, Q.shape[1]
    q = _centred_cubed_unit(Q.to(dtype), min_norm)
    out = torch.empty(K, M, dtype=dtype, device=P.device)
    width = min(M, concept_chunk_size)
    buffer = torch.empty(P.shape[0] * width, dtype=dtype, device=P.device)
    fused = P.dtype == dtype == torch.float32 and P.device.type == "cpu"
    fused = fused and P.stride(1) == 1 and similarity_kernel.available()
    for cs in slices(M, concept_chunk_size):
        p = buffer[: P.shape[0] * (cs.stop - cs.start)].view(P.shape[0], -1)
        if fused:  # two passes: column means, then centre, cube and square together
            p_norm = similarity_kernel.centred_cubes(P[:, cs], p).sqrt_().clamp_min_(min_norm)
        else:
            x = P[:, cs].to(dtype)
            p = torch.sub(x, x.mean(dim=0), out=p).pow_(3)
            p_norm = column_norms(p).clamp_min_(min_norm)
        for ks in slices(K, chunk_size):
            block = out[ks, cs]  # BLAS writes the slice in place (beta 0 ignores its contents)
            torch.addmm(block, q[:, ks].T, p, beta=0.0, out=block).div_(p_norm)
    fill_info(info, "cos3", P, Q, dtype, min_norm=min_norm)
    return out


@torch.no_grad()
def corr(
    concept_acts: Tensor,
    neuron_acts: Tensor,
    *,
    min_norm: float = 1e-12,
    chunk_size: int = 1024,
    concept_chunk_size: int = 1024,
    info: dict[str, Any] | None = None,
) -> Tensor:
    """Pearson correlation over the probe images: the cosine of centred columns.

    ``X' = X - mean_n X`` column-wise for ``X`` in ``P, Q``;
    ``S[k, m] = <Q'[:, k], P'[:, m]> / (max(||Q'[:, k]||, min_norm) * max(||P'[:, m]||, min_norm))``

    Not one of CLIP-Dissect's functions. It is ``cos`` after removing each column's mean.
    A vision-language model's cosines share a large offset (every image scores about 0.2-0.3
    with every phrase), so uncentred ``cos`` mostly measures that offset. Pearson correlation
    passes both label sanity tests (Neuron_Eval, ICML 2025). Values lie in ``[-1, 1]``. A
    constant (e.g. dead) unit or concept scores 0. ``Q'`` is computed once, and each chunk
    of ``P'`` is centred into one reused ``N x concept_chunk_size`` buffer. Largest
    temporaries: that buffer and ``N x K``.

    Example:
        >>> P = torch.tensor([[0.3, 0.2], [0.2, 0.3], [0.3, 0.2]])
        >>> corr(P, torch.tensor([[1.0], [0.0], [1.0]]))
        tensor([[ 1., -1.]])
    """
    dtype = prepare(concept_acts, neuron_acts)
    P, Q = concept_acts, neuron_acts
    chunk_size = positive_int("chunk_size", chunk_size)
    concept_chunk_size = positive_int("concept_chunk_size", concept_chunk_size)
    (N, M), K = P.shape, Q.shape[1]
    q = Q.to(dtype)
    q = q - q.mean(dim=0, keepdim=True)
    q.div_(column_norms(q).clamp_min_(min_norm))
    out = torch.empty(K, M, dtype=dtype, device=P.device)
    buffer = torch.empty(N * min(M, concept_chunk_size), dtype=dtype, device=P.device)
    for cs in slices(M, concept_chunk_size):
        x = P[:, cs].to(dtype)
        p = torch.sub(x, x.mean(dim=0), out=buffer[: x.numel()].view(x.shape))
        p_norm = column_norms(p).clamp_min_(min_norm)
        for ks in slices(K, chunk_size):
            block = out[ks, cs]  # BLAS writes the slice in place (beta 0 ignores its contents)
            torch.addmm(block, q[:, ks].T, p, beta=0.0, out=block).div_(p_norm)
    fill_info(info, "corr", P, Q, dtype, min_norm=min_norm)
    return out
