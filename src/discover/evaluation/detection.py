"""Units as detectors of binary concepts: AUPRC, and IoU / F1 at a fitted threshold.

The measurements behind the ground-truth scores (:mod:`discover.evaluation.groundtruth`):
a unit (column of ``Q``, ``N x K``) is scored as a detector of every concept (column of a
binary ``A``, ``N x C``), higher activation meaning "present".

* **AUPRC** (average precision), as ``sklearn.metrics.average_precision_score``:
  ``AP = sum_t (R_t - R_{t-1}) P_t`` over the distinct activation values ``t`` in decreasing
  order, with ``P_t`` and ``R_t`` the precision and recall of "activation >= t". Tied
  activations form one threshold (no credit from the order inside a tie). A constant unit
  scores the concept's base rate; a unit equal to the concept column scores 1.
* **IoU and F1 at a fitted threshold.** The probe is split at random (seeded, see
  :func:`probe_split`) into a *fit* half and a *held-out* half. On the fit half the
  threshold ``t`` is the activation value (predict "present" when activation >= ``t``) that
  maximises F1; of equal F1 the highest ``t`` wins. IoU ``= TP / (TP + FP + FN)`` and F1
  ``= 2 TP / (2 TP + FP + FN)`` are then measured with that ``t`` on the held-out half only.
  They are NaN (``None`` in the saved files) when the concept has no positive image in the
  fit half or in the held-out half.

One sort per unit and one sort of the positives' ranks per concept keep the cost at
``K x (N + positives in A)``, whatever ``C``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from discover.errors import InputError

__all__ = ["probe_split", "average_precision", "threshold_metrics"]

_ENTRIES = 2**23  # (unit, image) entries per chunk of the ranking computations


# --------------------------------------------------------------------------- validation


def binary_table(name: str, x: Tensor) -> Tensor:
    """Check that ``x`` is a non-empty 2-D 0/1 (or bool) tensor; return it as float32."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 or 0 in x.shape:
        raise InputError(f"{name} must be a non-empty 2-D tensor, got shape {tuple(x.shape)}")
    A = x.to(torch.float32)
    odd = A[(A != 0) & (A != 1)]
    if odd.numel():
        raise InputError(f"{name} must be binary (0/1 or bool), found value {odd[0].item():g}")
    return A


def check_detector_inputs(
    activations: Tensor, annotations: Tensor, concepts: Sequence[str] | None = None
) -> tuple[Tensor, Tensor]:
    """Validate ``Q`` ``(N, K)`` and ``A`` ``(N, C)``; return them on the CPU, ``Q`` as
    float32 (float64 stays float64) and ``A`` as float32."""
    if not isinstance(activations, Tensor):
        raise TypeError(f"activations must be a torch.Tensor, got {type(activations).__name__}")
    if activations.dim() != 2 or 0 in activations.shape:
        raise InputError(
            f"activations must be a non-empty 2-D tensor (N, K), got shape "
            f"{tuple(activations.shape)}"
        )
    A = binary_table("annotations", annotations)
    if activations.shape[0] != A.shape[0]:
        raise InputError(
            f"activations {tuple(activations.shape)} and annotations {tuple(A.shape)} "
            "must have one row per probe image (the same N)"
        )
    if activations.shape[0] < 2:
        raise InputError(f"activations: need at least 2 probe images, got {activations.shape[0]}")
    Q = activations.detach().cpu()
    if Q.dtype not in (torch.float32, torch.float64):
        Q = Q.float()
    if not torch.isfinite(Q).all():
        raise InputError("activations hold NaN or Inf values")
    names = list(concepts) if concepts is not None else [str(c) for c in range(A.shape[1])]
    if len(names) != A.shape[1]:
        raise InputError(f"concepts: {len(names)} names for {A.shape[1]} annotation columns")
    counts = A.sum(dim=0)
    for what, bad in (
        ("no positive image (an empty concept)", counts == 0),
        ("every image positive (nothing to detect)", counts == A.shape[0]),
    ):
        if bad.any():
            which = [names[i] for i in bad.nonzero().flatten().tolist()]
            raise InputError(
                f"annotations: concept(s) {', '.join(map(repr, which[:10]))} have {what} on "
                "the probe; drop those columns"
            )
    return Q, A


def _chunk(num_images: int, chunk_size: int | None) -> int:
    if chunk_size is None:
        return max(1, _ENTRIES // num_images)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InputError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return chunk_size


def _sorted_and_ranks(values: Tensor) -> tuple[Tensor, Tensor]:
    """For ``values`` ``(n, k)``: every unit's activations in ascending order ``(k, n)``,
    and ``R`` ``(k, n)`` (int32): ``R[j, i]`` = how many images activate unit ``j`` at least
    as strongly as image ``i`` does, i.e. the images predicted positive at the threshold
    ``values[i, j]`` (tied images share the rank of the end of their tie).

    numpy's sort does the work (several times faster than torch's on a CPU)."""
    rows = values.T.contiguous()
    k, n = rows.shape
    order = np.argsort(rows.numpy(), axis=1)
    ascending = np.take_along_axis(rows.numpy(), order, axis=1)
    starts = np.empty(ascending.shape, dtype=bool)  # where a run of equal values starts
    starts[:, 0] = True
    np.not_equal(ascending[:, 1:], ascending[:, :-1], out=starts[:, 1:])
    first = np.where(starts, np.arange(n, dtype=np.int32), np.int32(0))
    np.maximum.accumulate(first, axis=1, out=first)
    ranks = torch.empty(k, n, dtype=torch.int32)
    ranks.scatter_(1, torch.from_numpy(order), torch.from_numpy(n - first))
    return torch.from_numpy(ascending), ranks


def _positive_ranks(ranks: Tensor, positives: Tensor) -> tuple[Tensor, Tensor]:
    """The ranks ``R`` of the ``positives`` (image indices), per unit in ascending order
    ``(k, p)``, and the true positives at each: the positives ranked at or before it, ties
    included ``(k, p)``."""
    ordered = torch.index_select(ranks, 1, positives)
    ordered.numpy().sort(axis=1)
    p = ordered.shape[1]
    tp = torch.arange(1, p + 1, dtype=torch.int32).expand_as(ordered)
    tied = (ordered[:, 1:] == ordered[:, :-1]).any(dim=1)
    if tied.any():  # a tie counts all its positives
        rows = tied.nonzero().flatten()
        tp = tp.clone()
        tp[rows] = torch.searchsorted(ordered[rows], ordered[rows], side="right").int()
    return ordered, tp


# --------------------------------------------------------------------------- metrics


def probe_split(num_images: int, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """The seeded random split of ``num_images`` probe images into a fit and a held-out half.

    The fit half has ``num_images - num_images // 2`` images; both are sorted index tensors.

    Example:
        >>> fit, held_out = probe_split(5, seed=0)
        >>> len(fit), len(held_out), sorted(fit.tolist() + held_out.tolist())
        (3, 2, [0, 1, 2, 3, 4])
    """
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 2:
        raise InputError(f"num_images must be an integer >= 2, got {num_images!r}")
    perm = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed))
    fit = num_images - num_images // 2
    return perm[:fit].sort().values, perm[fit:].sort().values


@torch.no_grad()
def average_precision(
    activations: Tensor, annotations: Tensor, *, chunk_size: int | None = None
) -> Tensor:
    """AUPRC of every unit (column of ``activations``, ``(N, K)``) as a detector of every
    concept (column of the binary ``annotations``, ``(N, C)``): a ``(K, C)`` float64 tensor.

    Matches ``sklearn.metrics.average_precision_score`` (ties form one threshold):
    ``AP = mean over positives i of TP(i) / R(i)``, with ``R(i)`` the images that activate
    the unit at least as strongly as ``i`` and ``TP(i)`` the positives among them. One sort
    per unit, then one sort of the positives' ranks per concept: the cost grows with
    ``K x (N + positives in A)``, not ``K x N x C``. ``chunk_size`` units at a time (default:
    about ``2**23`` unit-image entries).

    Raises:
        ValueError: shapes that differ in ``N``, non-binary annotations, a concept with no
            positive image (or only positives), non-finite activations.

    Example:
        >>> A = torch.tensor([[1.0], [0.0], [1.0], [0.0]])
        >>> average_precision(torch.tensor([[0.9], [0.8], [0.7], [0.1]]), A)
        tensor([[0.8333]], dtype=torch.float64)
    """
    Q, A = check_detector_inputs(activations, annotations)
    (N, K), C = Q.shape, A.shape[1]
    positives = [A[:, c].nonzero().flatten() for c in range(C)]
    out = torch.empty(K, C, dtype=torch.float64)
    step = _chunk(N, chunk_size)
    for start in range(0, K, step):
        _, ranks = _sorted_and_ranks(Q[:, start : start + step])
        for c, pos in enumerate(positives):
            ordered, tp = _positive_ranks(ranks, pos)
            out[start : start + step, c] = (tp.double() / ordered).mean(dim=1)
    return out


def _indices(name: str, idx: Tensor, num_images: int) -> Tensor:
    idx = torch.as_tensor(idx)
    if idx.dim() != 1 or idx.numel() == 0 or idx.is_floating_point() or idx.dtype == torch.bool:
        raise InputError(
            f"{name} must be a non-empty 1-D integer index tensor, got {idx.dtype} of shape "
            f"{tuple(idx.shape)}"
        )
    if int(idx.min()) < 0 or int(idx.max()) >= num_images:
        raise InputError(f"{name} holds indices outside 0..{num_images - 1}")
    return idx.long()


@torch.no_grad()
def threshold_metrics(
    activations: Tensor,
    annotations: Tensor,
    *,
    fit: Tensor,
    held_out: Tensor,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per unit and concept: the F1-maximising threshold on the ``fit`` images, and the IoU
    and F1 of "activation >= threshold" on the ``held_out`` images. Each ``(K, C)``.

    ``fit`` and ``held_out`` are index tensors into the ``N`` probe images (e.g. from
    :func:`probe_split`). The threshold is the activation of a positive fit image (F1 is
    highest at one of those); of equal F1 the highest threshold wins. The threshold is NaN
    where the concept has no positive fit image, and IoU and F1 (float64) are NaN where it
    has no positive fit or held-out image.

    Example:
        >>> Q = torch.tensor([[3.0], [2.0], [1.0], [0.0]])
        >>> A = torch.tensor([[1.0], [1.0], [0.0], [0.0]])
        >>> t, iou, f1 = threshold_metrics(Q, A, fit=torch.tensor([0, 2]),
        ...                                held_out=torch.tensor([1, 3]))
        >>> t.item(), iou.item(), f1.item()
        (3.0, 0.0, 0.0)
    """
    Q, A = check_detector_inputs(activations, annotations)
    N = Q.shape[0]
    fit, held_out = _indices("fit", fit, N), _indices("held_out", held_out, N)
    K, C = Q.shape[1], A.shape[1]
    A_fit, A_held = A[fit], A[held_out]
    pos_fit = [A_fit[:, c].nonzero().flatten() for c in range(C)]
    pos_held = [A_held[:, c].nonzero().flatten() for c in range(C)]
    threshold = torch.full((K, C), math.nan, dtype=Q.dtype)
    tp_held = torch.zeros(K, C, dtype=torch.float64)
    predicted = torch.zeros(K, C, dtype=torch.float64)
    step = _chunk(max(len(fit), len(held_out)), chunk_size)
    for start in range(0, K, step):
        ks = slice(start, start + step)
        fit_ascending, ranks = _sorted_and_ranks(Q[fit, ks])
        for c, pos in enumerate(pos_fit):
            if len(pos) == 0:
                continue
            ordered, tp = _positive_ranks(ranks, pos)
            f1 = 2 * tp.double() / (ordered + len(pos))
            best = ordered.gather(1, f1.argmax(dim=1, keepdim=True))  # the first: fewest images
            # the images at or above the threshold are the top ``best`` of the fit half
            threshold[ks, c] = fit_ascending.gather(1, len(fit) - best.long()).squeeze(1)
        t = threshold[ks].contiguous()  # (k, C)
        Q_held = Q[held_out, ks].T.contiguous()  # (k, n_held)
        ascending = torch.from_numpy(np.sort(Q_held.numpy(), axis=1))
        predicted[ks] = (len(held_out) - torch.searchsorted(ascending, t, side="left")).double()
        for c, pos in enumerate(pos_held):
            if len(pos):
                values = torch.from_numpy(np.sort(Q_held[:, pos].numpy(), axis=1))
                above = len(pos) - torch.searchsorted(values, t[:, c : c + 1].contiguous())
                tp_held[ks, c] = above.squeeze(1).double()
    n_pos = torch.tensor([len(p) for p in pos_held], dtype=torch.float64)
    iou = tp_held / (predicted + n_pos - tp_held)
    f1 = 2 * tp_held / (predicted + n_pos)
    undefined = torch.tensor(
        [len(a) == 0 or len(b) == 0 for a, b in zip(pos_fit, pos_held, strict=True)]
    )
    iou[:, undefined] = math.nan
    f1[:, undefined] = math.nan
    return threshold, iou, f1
