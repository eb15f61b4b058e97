"""Calibrated significance of unit labels: how far a label's score is above chance.

Raw similarity scores are not comparable across models, layers or concept sets (soft WPMI
is an unbounded log-ratio whose scale moves with both). Each label therefore gets its place
in a null distribution built from the same data with the association destroyed: the probe
images are shuffled under the unit (rows of ``Q`` permuted, ``P`` unchanged), the layer is
scored again, and the unit's best score is kept. Over ``repeats`` shuffles this gives, per
unit, the mean and spread of the best score that pure chance reaches with this concept set,
this similarity function and this probe size. The label's

* ``z`` = (label's score - null mean) / null standard deviation, a scale-free figure that
  can be compared across runs (same judging function), and
* ``p`` = the upper tail of a Gumbel distribution fitted to the null's mean and spread (the
  best of many concept scores is a maximum, skewed to the right: a normal tail would call
  too many chance labels significant; with few repeats the empirical rank is too coarse),

and ``above_chance`` = ``p <= SIGNIFICANT_P`` (0.001).

The score being judged need not come from the function that chose the label:
:func:`~discover.dissect` judges every label with ``corr`` (:data:`SIGNIFICANCE_SIMILARITY`)
by default, whatever function labelled it. Soft WPMI, the paper's labelling function,
saturates (its scores tie at ``log K`` for many concepts, see the sanity tests), so its own
null cannot separate a true label from chance (planted labels reach z of about 0.5 under
it, above 5 under a cosine). The label's correlation is then compared with the best
correlation that any concept reaches on shuffled images: conservative, since the label is
not the judge's own argmax.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from discover.errors import InputError

__all__ = [
    "SIGNIFICANT_P",
    "SIGNIFICANCE_SIMILARITY",
    "Significance",
    "label_significance",
    "null_permutations",
    "significance_from_null",
]

SIGNIFICANT_P = 1e-3
SIGNIFICANCE_SIMILARITY = "corr"
"""The function that judges labels for their significance in :func:`~discover.dissect`:
Pearson correlation, which passes both sanity tests (``benchmarks/results/similarity-sanity.md``)
and, unlike ``cos``, ignores the offset a vision-language model's cosines share (judged by
``cos`` on the Shapes CLIP, 81 % of the correct labels of a small ResNet were "not
significant"; ``benchmarks/results/label_quality.md``)."""
_EULER_GAMMA = 0.5772156649015329


@dataclass
class Significance:
    """Per unit of one layer: the null's mean and spread of the best score, ``z`` and ``p``."""

    null_mean: Tensor
    null_std: Tensor
    z: Tensor
    p: Tensor
    repeats: int

    @property
    def above_chance(self) -> Tensor:
        """Units whose label beats the shuffled-image null at ``p <= SIGNIFICANT_P``."""
        return self.p <= SIGNIFICANT_P


def label_significance(
    P: Tensor,
    Q: Tensor,
    best: Tensor,
    score_fn: Callable[..., Tensor],
    params: dict[str, Any] | None = None,
    *,
    repeats: int = 16,
    seed: int = 0,
) -> Significance:
    """Place each unit's best score ``best`` ``[K]`` in its shuffled-image null (see the module
    docstring): ``score_fn(P, Q[perm], **params)`` for ``repeats`` seeded permutations.

    Example:
        >>> from discover.dissection.similarity import cos
        >>> g = torch.Generator().manual_seed(0)
        >>> P = (torch.rand(500, 20, generator=g) < 0.3).float()
        >>> Q = torch.cat([P[:, :2], torch.randn(500, 2, generator=g)], dim=1)
        >>> sig = label_significance(P, Q, cos(P, Q).amax(1), cos, repeats=8)
        >>> sig.above_chance.tolist()
        [True, True, False, False]
    """
    if repeats < 2:
        raise InputError(f"repeats must be >= 2 (a spread needs two draws), got {repeats}")
    N, K = Q.shape
    if P.shape[0] != N or best.shape != (K,):
        raise InputError(
            f"label_significance: P has {P.shape[0]} images and Q {N}; best must have shape "
            f"({K},), got {tuple(best.shape)}"
        )
    null = torch.empty(repeats, K, dtype=torch.float64)
    for r, perm in enumerate(null_permutations(N, repeats, seed)):
        with warnings.catch_warnings():  # the caller's own scoring has warned already
            warnings.simplefilter("ignore", UserWarning)
            S = score_fn(P, Q.index_select(0, perm.to(Q.device)), **(params or {}))
        null[r] = S.amax(dim=1).double().cpu()
    return significance_from_null(null, best)


def null_permutations(N: int, repeats: int, seed: int) -> list[Tensor]:
    """The image permutations of the null draws, in order (a local generator seeded with
    ``seed``; the global RNG is untouched)."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randperm(N, generator=generator) for _ in range(repeats)]


def significance_from_null(null: Tensor, best: Tensor) -> Significance:
    """``z`` and ``p`` of each unit's ``best`` score ``[K]`` in its null of best scores on
    shuffled images, ``null`` ``[repeats, K]`` (see the module docstring).

    Example:
        >>> sig = significance_from_null(torch.tensor([[0.1], [0.2], [0.15]]), torch.tensor([0.9]))
        >>> bool(sig.above_chance[0])
        True
    """
    repeats = null.shape[0]
    if repeats < 2:
        raise InputError(f"repeats must be >= 2 (a spread needs two draws), got {repeats}")
    null = null.double().cpu()
    mean, std = null.mean(dim=0), null.std(dim=0)
    observed = best.double().cpu()
    z = (observed - mean) / std.clamp_min(1e-12)
    z = torch.where(std > 0, z, torch.where(observed > mean, math.inf, 0.0))
    # Gumbel by moments: scale = std * sqrt(6) / pi, location = mean - gamma * scale
    scale = std.clamp_min(1e-12) * math.sqrt(6.0) / math.pi
    location = mean - _EULER_GAMMA * scale
    p = -torch.expm1(-torch.exp(-(observed - location) / scale))
    p = torch.where(std > 0, p, (observed <= mean).double())
    return Significance(mean.float(), std.float(), z.float(), p.float(), repeats)
