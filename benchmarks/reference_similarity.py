"""CLIP-Dissect's similarity functions, transcribed in float32: the speed baseline.

Operation-for-operation transcriptions of the functions in ``similarity.py`` of the reference
code (Oikarinen & Weng, CLIP-Dissect), which DISCOVER reuses, on CPU tensors. They exist to
time ``discover.dissection.similarity`` against what the reference code does with the same inputs, and
live in ``benchmarks/`` (not in the package) for that reason. What was changed:

* no ``device`` argument, ``.to(device)`` copies, ``torch.cuda.empty_cache()``, progress bars
  or prints (no-ops or noise on a CPU);
* ``rank_reorder`` draws its random permutations from a seeded ``torch.Generator`` (the
  reference uses the global RNG; unseeded, its baseline is not reproducible), and takes
  optional fixed ``permutations`` so that agreement checks can share discover's draw.

Everything else is kept, including what makes the reference slow: one Python iteration per
unit, ``gather`` with an expanded index, the ``N x M`` softmax held in memory, two argsorts
along the image dimension of an ``n x M`` block.

Notation as in ``discover.dissection.similarity``: ``P`` (``clip_feats``) is ``N x M``, ``Q``
(``target_feats``) ``N x K``; every function returns ``K x M``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["cos", "cos3", "wpmi", "soft_wpmi", "rank_reorder", "REFERENCES"]


def _blocked_product(P: Tensor, Q: Tensor, batch_size: int) -> Tensor:
    """``Q^T P`` in blocks of ``batch_size`` units and concepts, as the reference does."""
    rows = []
    for k0 in range(0, Q.shape[1], batch_size):
        q = Q[:, k0 : k0 + batch_size].T
        blocks = [q @ P[:, m0 : m0 + batch_size] for m0 in range(0, P.shape[1], batch_size)]
        rows.append(torch.cat(blocks, dim=1))
    return torch.cat(rows, dim=0)


@torch.no_grad()
def cos(P: Tensor, Q: Tensor, batch_size: int = 10_000) -> Tensor:
    """``cos_similarity``: L2-normalised columns, then ``Q^T P`` in blocks."""
    P = P / torch.norm(P, p=2, dim=0, keepdim=True)
    Q = Q / torch.norm(Q, p=2, dim=0, keepdim=True)
    return _blocked_product(P, Q, batch_size)


@torch.no_grad()
def cos3(P: Tensor, Q: Tensor, batch_size: int = 10_000, min_norm: float = 1e-3) -> Tensor:
    """``cos_similarity_cubed``: centred, cubed, clipped-norm columns, then ``Q^T P``."""
    P = P - torch.mean(P, dim=0, keepdim=True)
    Q = Q - torch.mean(Q, dim=0, keepdim=True)
    P = P**3
    Q = Q**3
    P = P / torch.clip(torch.norm(P, p=2, dim=0, keepdim=True), min_norm)
    Q = Q / torch.clip(torch.norm(Q, p=2, dim=0, keepdim=True), min_norm)
    return _blocked_product(P, Q, batch_size)


def _minus_prior(L: Tensor, lam: float) -> Tensor:
    prior = torch.logsumexp(L, dim=0, keepdim=True) - torch.log(L.shape[0] * torch.ones([1]))
    return L - lam * prior


@torch.no_grad()
def wpmi(
    P: Tensor, Q: Tensor, top_k: int = 28, a: float = 2.0, lam: float = 0.6, min_prob: float = 1e-7
) -> Tensor:
    """``wpmi``: ``softmax(a P)``; per unit, the log of its top-k rows summed; minus the prior."""
    P = torch.nn.functional.softmax(a * P, dim=1)
    inds = torch.topk(Q, dim=0, k=top_k)[1]
    L = []
    for k in range(Q.shape[1]):
        rows = P.gather(0, inds[:, k : k + 1].expand(-1, P.shape[1]))
        L.append(torch.sum(torch.log(rows + min_prob), dim=0, keepdim=True))
    return _minus_prior(torch.cat(L, dim=0), lam)


@torch.no_grad()
def soft_wpmi(
    P: Tensor,
    Q: Tensor,
    top_k: int = 100,
    a: float = 10.0,
    lam: float = 1.0,
    min_prob: float = 1e-7,
    p_start: float = 0.998,
    p_end: float = 0.97,
) -> Tensor:
    """``soft_wpmi``: as :func:`wpmi`, each top row weighted by a falling inclusion probability."""
    P = torch.nn.functional.softmax(a * P, dim=1)
    inds = torch.topk(Q, dim=0, k=top_k)[1]
    inclusion = p_start - (torch.arange(start=0, end=top_k) / top_k * (p_start - p_end)).unsqueeze(
        1
    )
    L = []
    for k in range(Q.shape[1]):
        rows = P.gather(0, inds[:, k : k + 1].expand(-1, P.shape[1]))
        terms = 1 + inclusion * (rows - 1)
        L.append(torch.sum(torch.log(terms + min_prob), dim=0, keepdim=True))
    return _minus_prior(torch.cat(L, dim=0), lam)


@torch.no_grad()
def rank_reorder(
    P: Tensor,
    Q: Tensor,
    p: float = 3.0,
    top_fraction: float = 0.05,
    scale_p: float = 0.5,
    seed: int = 0,
    permutations: Tensor | None = None,
    batch: int = 1500,
) -> Tensor:
    """``rank_reorder``: how well each concept orders a unit's top activations, negated.

    ``permutations`` (``[5, n]``) replaces the five per-unit random permutations of the
    baseline with the same five for every unit (for agreement checks only).
    """
    generator = torch.Generator().manual_seed(seed)
    top_n = int(Q.shape[0] * top_fraction)
    Q, inds = torch.topk(Q, dim=0, k=top_n)
    errors = []
    for k in range(Q.shape[1]):
        clip = P.gather(0, inds[:, k : k + 1].expand([-1, P.shape[1]]))
        avg_clip = torch.mean(clip, dim=0, keepdim=True)
        ranks = torch.argsort(torch.argsort(clip, dim=0), dim=0)
        target = Q[:, k : k + 1]
        sorted_target = torch.flip(target, dims=[0])
        if permutations is None:
            perms = [torch.randperm(len(sorted_target), generator=generator) for _ in range(5)]
        else:
            perms = list(permutations)
        baseline = sorted_target - torch.cat([sorted_target[pi] for pi in perms], dim=1)
        baseline = torch.mean(torch.abs(baseline) ** p)
        unit_errors = []
        for i in range(math.ceil(ranks.shape[1] / batch)):
            reorg = sorted_target.expand(-1, batch).gather(0, ranks[:, i * batch : (i + 1) * batch])
            diff = target - reorg
            unit_errors.append(torch.mean(torch.abs(diff) ** p, dim=0, keepdim=True) / baseline)
        errors.append(torch.cat(unit_errors, dim=1) / avg_clip**scale_p)
    return -torch.cat(errors, dim=0)


REFERENCES = {
    "cos": cos,
    "cos3": cos3,
    "wpmi": wpmi,
    "soft_wpmi": soft_wpmi,
    "rank_reorder": rank_reorder,
}
