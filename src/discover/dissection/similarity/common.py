"""Checks and building blocks shared by the similarity functions: input validation, chunking,
each unit's top images, column norms and the ``info`` summary."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from discover.errors import InputError

__all__ = [
    "LN2",
    "BLOCK",
    "prepare",
    "positive_int",
    "clamped",
    "slices",
    "top_images",
    "top_sets",
    "fill_info",
    "column_norms",
]

LN2 = math.log(2.0)
BLOCK = 2**23  # entries per row block of column norms and WPMI row normalisers


def prepare(concept_acts: Tensor, neuron_acts: Tensor) -> torch.dtype:
    """Validate ``P`` and ``Q``; return the compute dtype."""
    for arg, x in (("concept_acts", concept_acts), ("neuron_acts", neuron_acts)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{arg} must be a torch.Tensor, got {type(x).__name__}")
    P, Q = concept_acts, neuron_acts
    if P.dim() != 2 or Q.dim() != 2 or P.shape[0] != Q.shape[0]:
        raise InputError(
            "expected concept_acts [N, M] and neuron_acts [N, K] with the same N, got "
            f"concept_acts {tuple(P.shape)} and neuron_acts {tuple(Q.shape)}"
        )
    if 0 in P.shape or 0 in Q.shape:
        raise InputError(
            "need at least one image, concept and neuron, got "
            f"concept_acts {tuple(P.shape)} and neuron_acts {tuple(Q.shape)}"
        )
    if P.device != Q.device:
        raise InputError(f"inputs are on different devices: {P.device} and {Q.device}")
    return torch.float64 if torch.float64 in (P.dtype, Q.dtype) else torch.float32


def positive_int(name: str, value: int) -> int:
    """``value``, checked to be a positive ``int`` (named ``name`` in the error)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return value


def clamped(name: str, value: int, num_images: int) -> int:
    """Clamp a number of top images to ``num_images``, warning when it changes."""
    if value > num_images:
        warnings.warn(
            f"{name}={value} exceeds the number of probe images N={num_images}; "
            f"using {name}={num_images}",
            stacklevel=4,
        )
        return num_images
    return value


def slices(total: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` covering ``range(total)``."""
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def top_images(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-``k`` rows of every column of ``x`` ``[N, c]``: values and indices, each ``[c, k]``.

    Descending order, ties broken by the lower row index (the order of a stable sort, with
    ``-0.0`` equal to ``+0.0``). ``torch.topk`` finds each column's ``k + 1`` largest in one
    pass; only the columns whose ``k``-th value also occurs outside the top ``k`` (ties at the
    boundary, such as the zeros of a rarely active ReLU unit) are sorted whole.
    """
    rows = torch.empty(x.shape[::-1], dtype=x.dtype, device=x.device).copy_(x.T).add_(0.0)
    values, indices = torch.topk(rows, min(k + 1, rows.shape[1]), dim=1)
    # a tie at the boundary: the (k+1)-th largest equals the k-th (none when k = N)
    spill = (values[:, k] == values[:, k - 1]) if values.shape[1] > k else None
    values, indices = values[:, :k], indices[:, :k]
    indices, perm = indices.sort(dim=1)  # by index, then stably by value: a stable sort's order
    values, perm = values.gather(1, perm).sort(dim=1, descending=True, stable=True)
    indices = indices.gather(1, perm)
    if spill is not None and bool(spill.any()):
        which = spill.nonzero()[:, 0]
        full, order = torch.sort(rows[which], dim=1, descending=True, stable=True)
        values[which], indices[which] = full[:, :k], order[:, :k]
    return values, indices


def top_sets(x: Tensor, k: int) -> Tensor:
    """Indices ``[c, k]`` of the ``k`` largest rows of every column of ``x`` ``[N, c]``.

    The same sets as :func:`top_images` (ties to the lower index) without a full sort, in
    ascending index order.
    """
    threshold = torch.topk(x, k, dim=0).values[-1]
    above, tied = x > threshold, x == threshold
    keep = above | (tied & (tied.cumsum(dim=0) <= k - above.sum(dim=0)))
    return keep.T.nonzero()[:, 1].view(-1, k)


def fill_info(
    info: dict[str, Any] | None,
    name: str,
    P: Tensor,
    Q: Tensor,
    dtype: torch.dtype,
    **params: Any,
) -> None:
    """Record the effective parameters and a summary of the inputs in ``info`` (if given)."""
    if info is None:
        return
    info.update(
        similarity=name,
        num_images=P.shape[0],
        num_concepts=P.shape[1],
        num_neurons=Q.shape[1],
        num_dead_neurons=int((Q.count_nonzero(dim=0) == 0).sum()),
        compute_dtype=str(dtype).removeprefix("torch."),
        **params,
    )


def column_norms(x: Tensor, rows: int | None = None) -> Tensor:
    """L2 norm of every column of ``x`` ``[N, c]``, accumulated over blocks of ``rows`` rows.

    Much faster than ``vector_norm(x, dim=0)``, which reduces across rows one column at a time.
    Default blocks hold about ``2**23`` entries: few parallel regions, one reused buffer.
    """
    rows = rows or max(1, BLOCK // max(1, x.shape[1]))
    total = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
    square = torch.empty(min(rows, x.shape[0]), x.shape[1], dtype=x.dtype, device=x.device)
    for rs in slices(x.shape[0], rows):
        total += torch.mul(x[rs], x[rs], out=square[: rs.stop - rs.start]).sum(dim=0)
    return total.sqrt_()
