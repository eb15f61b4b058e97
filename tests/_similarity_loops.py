"""Per-neuron loop transcriptions of ``method.md`` §7, the references for ``discover.dissection.similarity``.

Each function follows the spec's formulas literally, one neuron (or one neuron-concept pair)
at a time, in float64, with no chunking: slow, obviously correct, shared by the tests and
by benchmarks. Arguments and defaults mirror the vectorised functions. Top images are chosen
with Python's stable ``sorted`` (descending signed value, ties to the lower image index).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "top_images",
    "cos_loop",
    "cos3_loop",
    "wpmi_loop",
    "soft_wpmi_loop",
    "rank_reorder_permutations",
    "rank_reorder_loop",
    "jsd_loop",
    "LOOPS",
]


def top_images(column: Tensor, k: int) -> list[int]:
    """Indices of the ``k`` largest entries of a 1-D tensor, descending, ties to lower index."""
    values = column.tolist()
    return sorted(range(len(values)), key=lambda i: -values[i])[:k]


def _prior_corrected(L: Tensor, lam: float) -> Tensor:
    K = L.shape[0]
    prior = torch.stack([torch.logsumexp(L[:, m], dim=0) - math.log(K) for m in range(L.shape[1])])
    return L - lam * prior


def cos_loop(P: Tensor, Q: Tensor, min_norm: float = 1e-12) -> Tensor:
    P, Q = P.double(), Q.double()
    S = torch.empty(Q.shape[1], P.shape[1], dtype=torch.float64)
    for k in range(Q.shape[1]):
        q = Q[:, k] / max(Q[:, k].norm().item(), min_norm)
        for m in range(P.shape[1]):
            S[k, m] = q @ (P[:, m] / max(P[:, m].norm().item(), min_norm))
    return S


def cos3_loop(P: Tensor, Q: Tensor, min_norm: float = 1e-3) -> Tensor:
    def unit(x: Tensor) -> Tensor:
        x = (x - x.mean()) ** 3
        return x / max(x.norm().item(), min_norm)

    P, Q = P.double(), Q.double()
    S = torch.empty(Q.shape[1], P.shape[1], dtype=torch.float64)
    for k in range(Q.shape[1]):
        for m in range(P.shape[1]):
            S[k, m] = unit(Q[:, k]) @ unit(P[:, m])
    return S


def corr_loop(P: Tensor, Q: Tensor, min_norm: float = 1e-12) -> Tensor:
    P, Q = P.double(), Q.double()
    S = torch.empty(Q.shape[1], P.shape[1], dtype=torch.float64)
    for k in range(Q.shape[1]):
        q = Q[:, k] - Q[:, k].mean()
        q = q / max(q.norm().item(), min_norm)
        for m in range(P.shape[1]):
            p = P[:, m] - P[:, m].mean()
            S[k, m] = q @ (p / max(p.norm().item(), min_norm))
    return S


def wpmi_loop(
    P: Tensor, Q: Tensor, top_k: int = 28, a: float = 2.0, lam: float = 0.6, min_prob: float = 1e-7
) -> Tensor:
    P, Q = P.double(), Q.double()
    top_k = min(top_k, P.shape[0])
    P_tilde = torch.softmax(a * P, dim=1)
    L = torch.empty(Q.shape[1], P.shape[1], dtype=torch.float64)
    for k in range(Q.shape[1]):
        L[k] = sum(torch.log(P_tilde[i] + min_prob) for i in top_images(Q[:, k], top_k))
    return _prior_corrected(L, lam)


def soft_wpmi_loop(
    P: Tensor,
    Q: Tensor,
    top_k: int = 100,
    a: float = 10.0,
    lam: float = 1.0,
    p_start: float = 0.998,
    p_end: float = 0.97,
    min_prob: float = 1e-7,
) -> Tensor:
    P, Q = P.double(), Q.double()
    top_k = min(top_k, P.shape[0])
    P_tilde = torch.softmax(a * P, dim=1)
    L = torch.empty(Q.shape[1], P.shape[1], dtype=torch.float64)
    for k in range(Q.shape[1]):
        L[k] = 0.0
        for j, i in enumerate(top_images(Q[:, k], top_k)):
            p_j = p_start - (j / top_k) * (p_start - p_end)
            L[k] += torch.log(1 + p_j * (P_tilde[i] - 1) + min_prob)
    return _prior_corrected(L, lam)


def rank_reorder_permutations(n: int, num_permutations: int = 5, seed: int = 0) -> Tensor:
    """The documented permutation recipe of ``rank_reorder``: ``[num_permutations, n]``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=generator) for _ in range(num_permutations)])


def rank_reorder_loop(
    P: Tensor,
    Q: Tensor,
    top_fraction: float = 0.05,
    p: float = 3.0,
    scale_p: float = 0.5,
    num_permutations: int = 5,
    seed: int = 0,
    min_avg: float = 1e-6,
    perms: Tensor | None = None,
) -> Tensor:
    """Loop version; ``perms`` overrides the permutations (default: the documented recipe)."""
    P, Q = P.double(), Q.double()
    n = max(1, math.floor(top_fraction * P.shape[0]))
    if perms is None:
        perms = rank_reorder_permutations(n, num_permutations, seed)
    S = torch.empty(Q.shape[1], P.shape[1], dtype=torch.float64)
    for k in range(Q.shape[1]):
        A = top_images(Q[:, k], n)
        a = Q[A, k]  # descending
        a_asc = a.flip(0)
        baseline = torch.stack([((a_asc - a_asc[pi]).abs() ** p).mean() for pi in perms]).mean()
        baseline = max(baseline.item(), torch.finfo(torch.float64).tiny)
        for m in range(P.shape[1]):
            c = P[A, m]
            rho = torch.argsort(torch.argsort(c, stable=True), stable=True)
            r = a_asc[rho]
            err = ((a - r).abs() ** p).mean().item()
            S[k, m] = -(err / baseline) / max(c.mean().item(), min_avg) ** scale_p
    return S


def jsd_loop(
    P: Tensor,
    Q: Tensor,
    tau_q: float = 1.0,
    tau_p: float = 1.0,
    transform_q: str = "zscore",
    transform_p: str = "zscore",
    support: str = "union_topk",
    support_k: int = 100,
    min_std: float = 1e-12,
) -> Tensor:
    def logits(x: Tensor, transform: str, tau: float) -> Tensor:
        if transform == "zscore":
            x = (x - x.mean()) / max(x.std(correction=0).item(), min_std)
        return x / tau

    P, Q = P.double(), Q.double()
    N = P.shape[0]
    k = min(support_k, N)
    S = torch.empty(Q.shape[1], P.shape[1], dtype=torch.float64)
    for kk in range(Q.shape[1]):
        x = logits(Q[:, kk], transform_q, tau_q)
        for m in range(P.shape[1]):
            y = logits(P[:, m], transform_p, tau_p)
            if support == "all":
                T = list(range(N))
            elif support == "neuron_topk":
                T = top_images(Q[:, kk], k)
            else:
                T = sorted(set(top_images(Q[:, kk], k)) | set(top_images(P[:, m], k)))
            p = torch.softmax(x[T], dim=0)
            r = torch.softmax(y[T], dim=0)
            mu = ((p + r) / 2).tolist()
            kl_p = sum(a * math.log(a / b) for a, b in zip(p.tolist(), mu, strict=True) if a)
            kl_r = sum(a * math.log(a / b) for a, b in zip(r.tolist(), mu, strict=True) if a)
            S[kk, m] = -(kl_p + kl_r) / 2
    return S


LOOPS = {
    "cos": cos_loop,
    "cos3": cos3_loop,
    "corr": corr_loop,
    "wpmi": wpmi_loop,
    "soft_wpmi": soft_wpmi_loop,
    "rank_reorder": rank_reorder_loop,
    "jsd": jsd_loop,
}
