"""Paired comparisons over seeds: the mean difference, its confidence interval and a verdict.

A CVN and its dense twin trained from the same seed share their data order, hold-out split
and initialisation of every layer the two have in common, so the fair comparison is the
*paired* one: the difference of the two per seed, averaged, with an interval from those
differences (Student's t by default, or a percentile bootstrap).

A claim of the form "the treatment is at most ``margin`` worse" (or "at least ``margin``
better") is judged on the interval:

* **holds** when its lower end is above ``margin``;
* **does not hold** when its upper end is below ``margin``;
* **inconclusive** otherwise (the interval contains ``margin``, or there are fewer than two
  pairs, so there is no interval).

Example:
    >>> d = paired_difference([91.3, 91.2, 91.5], [92.4, 92.3, 92.2])
    >>> round(d.mean, 2), d.verdict(margin=-1.0)
    (-0.97, 'inconclusive')
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from discover.errors import InputError

__all__ = ["VERDICTS", "PairedDifference", "paired_difference", "verdict"]

Verdict = Literal["holds", "does not hold", "inconclusive"]
VERDICTS: tuple[str, ...] = ("holds", "does not hold", "inconclusive")
METHODS = ("t", "bootstrap")


def verdict(low: float, high: float, margin: float) -> Verdict:
    """The verdict on "the difference is above ``margin``" from a confidence interval.

    A NaN end (no interval) is inconclusive.

    Example:
        >>> verdict(-0.4, 0.2, margin=-1.0), verdict(-2.5, -1.2, -1.0), verdict(-1.3, -0.2, -1.0)
        ('holds', 'does not hold', 'inconclusive')
    """
    if math.isnan(low) or math.isnan(high):
        return "inconclusive"
    if low > high:
        raise InputError(f"verdict: the interval's low end {low} is above its high end {high}")
    if low > margin:
        return "holds"
    if high < margin:
        return "does not hold"
    return "inconclusive"


@dataclass(frozen=True)
class PairedDifference:
    """The mean of ``treatment - control`` over pairs, with its confidence interval."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float
    method: str
    differences: tuple[float, ...]

    def verdict(self, margin: float) -> Verdict:
        """:func:`verdict` on this interval."""
        return verdict(self.low, self.high, margin)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "differences": list(self.differences)}

    def summary(self) -> str:
        if self.n < 2:
            return f"{self.mean:+.3g} (n = {self.n}, no interval)"
        return (
            f"{self.mean:+.3g} [{self.low:+.3g}, {self.high:+.3g}] "
            f"({100 * self.confidence:.0f} % {self.method} interval, n = {self.n})"
        )


def paired_difference(
    treatment: Sequence[float],
    control: Sequence[float],
    *,
    confidence: float = 0.95,
    method: str = "t",
    resamples: int = 10_000,
    seed: int = 0,
) -> PairedDifference:
    """The mean paired difference ``treatment[i] - control[i]`` and its confidence interval.

    ``method="t"``: Student's t interval on the differences (exact when they are normal; the
    usual choice for a handful of seeds). ``method="bootstrap"``: the percentile interval
    of ``resamples`` resampled means (seeded), which with few pairs is too narrow; reported
    for comparison. With fewer than two pairs the interval is ``(nan, nan)``.

    Example:
        >>> paired_difference([1.0, 2.0, 3.0], [0.5, 1.0, 2.5]).summary()
        '+0.667 [-0.0504, +1.38] (95 % t interval, n = 3)'
    """
    if len(treatment) != len(control):
        raise InputError(
            f"paired_difference: {len(treatment)} treatment values for {len(control)} control "
            "values; each treatment needs its own control (the same seed)"
        )
    if not 0 < confidence < 1:
        raise InputError(f"paired_difference: confidence must be in (0, 1), got {confidence}")
    if method not in METHODS:
        raise InputError(f"paired_difference: method must be one of {METHODS}, got {method!r}")
    diffs = [float(a) - float(b) for a, b in zip(treatment, control, strict=True)]
    if not all(math.isfinite(d) for d in diffs):
        raise InputError(f"paired_difference: non-finite values in {diffs}")
    n = len(diffs)
    if n == 0:
        raise InputError("paired_difference: no pairs")
    mean = statistics.fmean(diffs)
    low = high = math.nan
    if n >= 2 and method == "t":
        from scipy import stats

        half = stats.t.ppf(0.5 + confidence / 2, n - 1) * statistics.stdev(diffs) / math.sqrt(n)
        low, high = mean - half, mean + half
    elif n >= 2:
        rng = np.random.default_rng(seed)
        means = rng.choice(np.asarray(diffs), size=(resamples, n), replace=True).mean(axis=1)
        tail = 100 * (1 - confidence) / 2
        low, high = (float(v) for v in np.percentile(means, [tail, 100 - tail]))
    return PairedDifference(mean, low, high, n, confidence, method, tuple(diffs))
