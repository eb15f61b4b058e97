"""From a layer's scores to its labels: order-independent ties, and abstaining when unsure.

:func:`choose_labels` turns the ``K x M`` scores ``S`` of a similarity function into each
unit's label and runner-up concepts:

* **Ties.** Concepts whose score is within ``rtol`` (relative to the unit's largest
  ``|S|``) of the best are *tied*. The tie is broken by a secondary score, ``corr``
  (:data:`TIE_BREAK_SIMILARITY`: Pearson correlation over the probe, which passes both label
  sanity tests, see ``benchmarks/results/similarity-sanity.md``, and ignores the offset that
  a vision-language model's cosines share). It is never broken by concept order. If the
  best tied concepts still tie on the secondary score, the unit is marked
  ``tie``: its candidate (the alphabetically first of them, so the result does not depend
  on the order of the concept file) is shown as unlabelled. Soft WPMI on annotations ties
  the true concept with its corrupted copies in every case. Without this rule its ties
  were broken by file order.
* **Runner-ups** are ordered by the score, then the secondary score, then the name.

:func:`abstentions` decides which units are shown *unlabelled* (with their candidates)
instead of with a confident word, and why (:data:`ABSTAIN_REASONS`): a dead unit (never
active on the probe), a unit with non-finite activations, a tie as above, a label that
does not beat the shuffled-image null (``p_null > abstain_p``, see
:mod:`discover.dissection.significance`), or a label that explains little of the unit: its
``match``, the Pearson correlation between the unit and the label's column of ``P`` over
the probe, is below ``min_match``. Significance is a low bar on a large probe (nearly every
correlation beats chance on 2,000 images); ``match`` is the effect size.

:data:`LABEL_DEFAULTS` holds the defaults for each kind of embedder (``annotations``:
ground-truth tables, ``vlm``: vision-language models and their offline stand-ins). They
were chosen by ``benchmarks/label_quality.py`` on a validation split; see its results.

Example:
    >>> import torch
    >>> S = torch.tensor([[2.0, 2.0, 1.0], [0.5, 0.1, 0.9]])
    >>> secondary = torch.tensor([[0.1, 0.7, 0.0], [0.0, 0.0, 0.0]])
    >>> choice = choose_labels(S, secondary, ["red", "blue", "star"], k=2)
    >>> choice.top.tolist(), choice.tie.tolist()
    ([[1, 0], [2, 0]], [False, False])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from discover.dissection.similarity import DEFAULT_SIMILARITY
from discover.errors import InputError

__all__ = [
    "ABSTAIN_REASONS",
    "TIE_BREAK_SIMILARITY",
    "MATCH_SIMILARITY",
    "TIE_RTOL",
    "LabelChoice",
    "LabelDefaults",
    "LABEL_DEFAULTS",
    "label_defaults",
    "choose_labels",
    "column_flags",
    "abstentions",
]

TIE_BREAK_SIMILARITY = "corr"
"""The secondary score that orders tied concepts."""
MATCH_SIMILARITY = "corr"
"""The function whose score of a unit's label is its ``match`` (the effect size)."""
TIE_RTOL = 1e-6
"""Scores within this fraction of the unit's largest ``|S|`` of each other count as tied."""
ABSTAIN_REASONS = ("not finite", "dead", "tie", "not significant", "weak match", "no detector")
"""Why a unit is shown unlabelled, in the order they are checked."""


@dataclass(frozen=True)
class LabelDefaults:
    """What :func:`~discover.dissect` and :func:`~discover.explain` use for one embedder kind.

    Attributes:
        similarity: the similarity function that labels units.
        similarity_params: its keyword arguments.
        abstain_p: units whose label's ``p_null`` is above this are shown unlabelled
            (``None``: significance alone never hides a label).
        min_match: units whose label's ``match`` (Pearson r with the unit over the probe) is
            below this are shown unlabelled (``None``: never for that).
        min_percentile: in an explanation, a listed unit that fires on the image below this
            share of the probe is shown unlabelled (``explain(min_percentile=)``).
        evidence: the results file that chose these values.
    """

    similarity: str
    similarity_params: dict[str, Any] = field(default_factory=dict)
    abstain_p: float | None = 1e-3
    min_match: float | None = None
    min_percentile: float | None = None
    evidence: str = "benchmarks/results/label_quality.md"


LABEL_DEFAULTS: dict[str, LabelDefaults] = {
    "annotations": LabelDefaults("jsd", abstain_p=None, min_match=0.4, min_percentile=0.75),
    "vlm": LabelDefaults(DEFAULT_SIMILARITY, abstain_p=None, min_match=0.2, min_percentile=0.75),
}
"""Defaults per embedder kind (:attr:`discover.dissection.embedders.Embedder.kind`)."""


def label_defaults(kind: str) -> LabelDefaults:
    """The label defaults for an embedder kind (``annotations`` or ``vlm``).

    Example:
        >>> label_defaults("annotations").similarity
        'jsd'
    """
    if kind not in LABEL_DEFAULTS:
        raise InputError(
            f"no label defaults for embedder kind {kind!r}; known kinds: "
            f"{', '.join(LABEL_DEFAULTS)}"
        )
    return LABEL_DEFAULTS[kind]


@dataclass
class LabelChoice:
    """Each unit's concepts, best first, and whether its best concepts tie.

    Attributes:
        top: ``(K, k)`` concept indices; column 0 is the label (or, for a tie, the candidate).
        scores: ``(K, k)`` their primary scores.
        tie: ``(K,)`` the best concepts tie on both the primary and the secondary score.
    """

    top: Tensor
    scores: Tensor
    tie: Tensor


def _near_best(x: Tensor, rtol: float) -> Tensor:
    """``x >= row max - rtol * (row max of the finite |x|)``."""
    best = x.amax(dim=1, keepdim=True)
    scale = x.masked_fill(~torch.isfinite(x), 0.0).abs().amax(dim=1, keepdim=True)
    return x >= best - rtol * scale


@torch.no_grad()
def choose_labels(
    scores: Tensor,
    secondary: Tensor,
    names: Sequence[str],
    k: int,
    *,
    rtol: float = TIE_RTOL,
) -> LabelChoice:
    """Order every unit's concepts and pick its label without looking at concept order.

    Args:
        scores: ``(K, M)`` primary scores (higher is better).
        secondary: ``(K, M)`` the tie-breaking scores (:data:`TIE_BREAK_SIMILARITY`).
        names: the ``M`` concept names (the last resort for ordering runner-ups).
        k: concepts kept per unit (clamped to ``M``).
        rtol: tie tolerance, relative to each unit's largest ``|score|``.

    Returns:
        a :class:`LabelChoice`. Non-finite scores are ordered last.
    """
    K, M = scores.shape
    if secondary.shape != scores.shape or len(names) != M:
        raise InputError(
            f"choose_labels: scores {tuple(scores.shape)}, secondary "
            f"{tuple(secondary.shape)} and {len(names)} names do not match"
        )
    k = max(1, min(int(k), M))
    S = torch.nan_to_num(scores.detach().double().cpu(), nan=-np.inf)
    S2 = torch.nan_to_num(secondary.detach().double().cpu(), nan=-np.inf)
    name_rank = torch.from_numpy(np.argsort(np.argsort(np.asarray(names, dtype=object))))

    # the label: best score, then best secondary score among the tied, then the name
    tied = _near_best(S, rtol) | torch.isinf(S).all(dim=1, keepdim=True)
    among = torch.where(tied, S2, torch.full_like(S2, -np.inf))
    still = tied & (_near_best(among, rtol) | torch.isinf(among).all(dim=1, keepdim=True))
    label = torch.where(still, name_rank, torch.full_like(name_rank, M)).argmin(dim=1)
    tie = still.sum(dim=1) > 1

    # runner-ups: every concept scoring at least the k-th best (ties included), ordered by
    # (score, secondary score, name); then the label is moved to the front
    kth = S.topk(k, dim=1).values[:, -1:]
    rows, cols = torch.nonzero(S >= kth, as_tuple=True)
    order = np.lexsort(
        (name_rank[cols].numpy(), -S2[rows, cols].numpy(), -S[rows, cols].numpy(), rows.numpy())
    )
    rows, cols = rows[order], cols[order]
    counts = torch.bincount(rows, minlength=K)
    starts = torch.cumsum(counts, 0) - counts
    top = torch.empty(K, k, dtype=torch.long)
    for j in range(k):  # the j-th concept of every unit: one gather per rank
        top[:, j] = cols[starts + j]
    # the label first, then the others in their order (stable: the label's slot sorts last)
    keep = torch.sort((top == label[:, None]).long(), dim=1, stable=True).indices[:, : k - 1]
    top = torch.cat([label[:, None], top.gather(1, keep)], dim=1)
    return LabelChoice(top=top, scores=scores.detach().cpu().gather(1, top).float(), tie=tie)


def column_flags(Q: Any) -> tuple[Tensor, Tensor]:
    """Which units of ``Q`` (``N x K``, a tensor or a row source of
    :mod:`discover.dissection.streaming`) are dead (all zero) and which are finite."""
    if isinstance(Q, Tensor):
        return Q.abs().sum(dim=0) == 0, torch.isfinite(Q).all(dim=0)
    dead = torch.ones(Q.shape[1], dtype=torch.bool)
    finite = torch.ones(Q.shape[1], dtype=torch.bool)
    for _, block in Q.blocks(4096):
        dead &= (block == 0).all(dim=0)
        finite &= torch.isfinite(block).all(dim=0)
    return dead, finite


def abstentions(
    Q: Tensor,
    tie: Tensor,
    p_null: Tensor | None,
    abstain_p: float | None,
    match: Tensor | None = None,
    min_match: float | None = None,
) -> list[str | None]:
    """Why each unit of a layer is shown unlabelled (``None``: it is labelled).

    Args:
        Q: ``(N, K)`` the layer's probe activations.
        tie: ``(K,)`` from :func:`choose_labels`.
        p_null: ``(K,)`` each label's null tail (``None``: significance not measured).
        abstain_p: labels with ``p_null`` above this abstain (``None``: never for that).
        match: ``(K,)`` each label's match (``None``: not measured).
        min_match: labels whose match is below this abstain (``None``: never for that).

    Example:
        >>> Q = torch.tensor([[0.0, 1.0, 2.0, 1.0], [0.0, 2.0, 1.0, 3.0]])
        >>> abstentions(Q, torch.tensor([False, True, False, False]),
        ...             torch.tensor([0.5, 0.0, 0.2, 0.0]), 1e-3,
        ...             torch.tensor([0.0, 0.9, 0.9, 0.05]), 0.1)
        ['dead', 'tie', 'not significant', 'weak match']
    """
    dead, finite = (x.tolist() for x in column_flags(Q))
    tied = tie.tolist()
    p = p_null.tolist() if p_null is not None else [None] * len(tied)
    r = match.tolist() if match is not None else [None] * len(tied)
    reasons: list[str | None] = []
    for is_dead, is_finite, is_tied, p_k, r_k in zip(dead, finite, tied, p, r, strict=True):
        if not is_finite:
            reasons.append("not finite")
        elif is_dead:
            reasons.append("dead")
        elif is_tied:
            reasons.append("tie")
        elif abstain_p is not None and p_k is not None and not p_k <= abstain_p:
            reasons.append("not significant")
        elif min_match is not None and r_k is not None and not r_k >= min_match:
            reasons.append("weak match")
        else:
            reasons.append(None)
    return reasons
