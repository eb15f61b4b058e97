"""Ranks of a known concept among a unit's scores, and the figures made from them.

Ranks are 1-based and pessimistic: a concept tied with the true one counts as ranked above
it, so a dead unit whose scores are all equal gets rank ``M``, never 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from discover.dissection.records import UnitDescription
from discover.errors import InputError

__all__ = ["RANK_METRICS", "ranks_from_scores", "ranks_from_top", "rank_figures"]

RANK_METRICS = ("top1", "top5", "mean_rank", "median_rank", "auc")


def ranks_from_scores(S: Tensor, columns: Tensor) -> Tensor:
    """``R[k, j]``: pessimistic 1-based rank of concept ``columns[j]`` among ``S[k, :]``."""
    if not torch.isfinite(S).all():
        raise InputError("the dissection's score matrix holds NaN or Inf values")
    ascending = S.double().sort(dim=1).values
    values = S.double()[:, columns].contiguous()
    below = torch.searchsorted(ascending, values, side="left")
    return (S.shape[1] - below).double()


def ranks_from_top(rows: Sequence[UnitDescription], classes: Sequence[str]) -> Tensor:
    """Ranks from the stored top-n lists; ``inf`` where a class is beyond a unit's top-n."""
    ranks = torch.full((len(rows), len(classes)), math.inf, dtype=torch.float64)
    for k, row in enumerate(rows):
        position = {}
        for r, (concept, _) in enumerate(row.top, start=1):
            position.setdefault(concept, r)
        for j, name in enumerate(classes):
            if name in position:
                ranks[k, j] = position[name]
    return ranks


def _average_ranks(x: Tensor) -> Tensor:
    from scipy.stats import rankdata

    return torch.as_tensor(rankdata(x.double().numpy()), dtype=torch.float64)


def _auc(scores: Tensor, positive: Tensor) -> Tensor:
    """ROC AUC of ``scores`` ``[n]`` for each row of labels ``positive`` ``[R, n]`` (ties 1/2).

    ``nan`` for a row whose labels are all equal (the AUC is undefined there).
    """
    ranks = _average_ranks(scores)
    pos = positive.double()
    n_pos = pos.sum(-1)
    n_neg = pos.shape[-1] - n_pos
    u = (pos * ranks).sum(-1) - n_pos * (n_pos + 1) / 2
    auc = u / (n_pos * n_neg)
    return torch.where((n_pos > 0) & (n_neg > 0), auc, torch.full_like(auc, math.nan))


def _median(x: Tensor) -> Tensor:
    s = x.sort(dim=-1).values
    n = s.shape[-1]
    return (s[..., (n - 1) // 2] + s[..., n // 2]) / 2


def rank_figures(ranks: Tensor, best: Tensor) -> dict[str, Tensor]:
    """Each rank figure for every row of ``ranks`` ``[R, n]``: ``{name: [R]}``."""
    return {
        "top1": (ranks <= 1).double().mean(-1),
        "top5": (ranks <= 5).double().mean(-1),
        "mean_rank": ranks.mean(-1),
        "median_rank": _median(ranks),
        "auc": _auc(best, ranks <= 1),
    }
