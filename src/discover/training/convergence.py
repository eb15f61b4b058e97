"""Has a run converged? The plateau rule on its per-epoch validation top-1.

A run has *plateaued* when the best validation top-1 of its last ``window`` epochs is within
``gap`` of the best of the whole run, and those epochs gained less than ``gain`` in total
(fractions: 0.003 is 0.3 points). The converged accuracy study judges every run by it, and
``discover demo`` uses it to say when its short comparison is between models that were
still learning.

Example:
    >>> plateau([0.5, 0.8, 0.9, 0.91, 0.912, 0.911, 0.912]).plateaued
    True
    >>> plateau([0.5, 0.6, 0.7, 0.8]).reason
    'still gaining (+30.00 points in the last 3 epochs)'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from discover.errors import InputError

__all__ = ["PLATEAU_WINDOW", "PLATEAU_GAP", "PLATEAU_GAIN", "Plateau", "plateau"]

PLATEAU_WINDOW = 3
PLATEAU_GAP = 0.003
PLATEAU_GAIN = 0.005


@dataclass(frozen=True)
class Plateau:
    """The plateau rule's verdict on one validation curve (``gap``/``gain`` in fractions)."""

    plateaued: bool
    reason: str
    best: float | None = None
    gap: float | None = None
    gain: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def plateau(
    val_top1: Sequence[float],
    *,
    window: int = PLATEAU_WINDOW,
    gap: float = PLATEAU_GAP,
    gain: float = PLATEAU_GAIN,
) -> Plateau:
    """Whether a per-epoch validation top-1 curve (fractions) has plateaued."""
    curve = [float(v) for v in val_top1]
    if not all(math.isfinite(v) for v in curve):
        raise InputError(f"plateau: the validation curve has non-finite values: {curve}")
    if len(curve) <= window:
        return Plateau(False, f"{len(curve)} epoch(s), need > {window}")
    best, last = max(curve), curve[-window:]
    below = best - max(last)
    gained = curve[-1] - curve[-window - 1]
    reasons = []
    if below > gap:
        reasons.append(f"last {window} epochs {100 * below:.2f} points below the best")
    if gained >= gain:
        reasons.append(f"still gaining ({100 * gained:+.2f} points in the last {window} epochs)")
    return Plateau(not reasons, "; ".join(reasons), best, below, gained)
