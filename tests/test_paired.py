"""Paired differences over seeds and the verdict rule of the evidence page."""

from __future__ import annotations

import math

import pytest

from discover.errors import InputError
from discover.evaluation import paired_difference, verdict


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (-0.4, 0.3, "holds"),  # lower end above -1
        (-0.99, -0.5, "holds"),
        (-1.6, -0.2, "inconclusive"),  # straddles -1
        (-1.0, 0.5, "inconclusive"),  # touching the margin is not above it
        (-2.5, -1.2, "does not hold"),  # upper end below -1
        (math.nan, math.nan, "inconclusive"),  # one pair: no interval
    ],
)
def test_verdict_rule_on_made_up_intervals(low, high, expected):
    assert verdict(low, high, margin=-1.0) == expected


def test_verdict_refuses_an_inverted_interval():
    with pytest.raises(InputError, match="low end"):
        verdict(0.5, -0.5, margin=0.0)


def test_t_interval_matches_a_hand_computation():
    # differences 0.5, 1.0, 0.5: mean 2/3, sd 0.288675, t(0.975, 2) = 4.302653
    d = paired_difference([1.0, 2.0, 3.0], [0.5, 1.0, 2.5])
    half = 4.302653 * 0.288675 / math.sqrt(3)
    assert d.n == 3 and d.mean == pytest.approx(2 / 3)
    assert (d.low, d.high) == pytest.approx((2 / 3 - half, 2 / 3 + half), rel=1e-5)
    assert d.differences == (0.5, 1.0, 0.5)


def test_verdicts_follow_from_the_paired_differences():
    dense = [92.4, 92.3, 92.2, 92.5, 92.4]
    assert paired_difference([d - 0.3 for d in dense], dense).verdict(-1.0) == "holds"
    assert paired_difference([d - 2.0 for d in dense], dense).verdict(-1.0) == "does not hold"
    noisy = [dense[0] - 2.5, dense[1] + 0.5, dense[2] - 1.5, dense[3] + 0.2, dense[4] - 1.2]
    assert paired_difference(noisy, dense).verdict(-1.0) == "inconclusive"


def test_pairing_removes_the_seed_effect_that_unpaired_means_keep():
    # a seed effect of several points shared by both arms: the paired interval is narrow
    dense = [90.0, 95.0, 85.0, 92.0, 88.0]
    cvn = [d - 0.2 for d in dense]
    d = paired_difference(cvn, dense)
    assert d.high - d.low < 1e-9 and d.verdict(-1.0) == "holds"


def test_bootstrap_interval_is_seeded_and_contains_the_mean():
    a, b = [1.0, 1.5, 0.2, 0.9, 1.1], [0.0] * 5
    first = paired_difference(a, b, method="bootstrap", seed=3)
    assert first == paired_difference(a, b, method="bootstrap", seed=3)
    assert first.low <= first.mean <= first.high and first.method == "bootstrap"


def test_one_pair_has_no_interval():
    d = paired_difference([1.0], [0.0])
    assert math.isnan(d.low) and math.isnan(d.high) and d.verdict(0.0) == "inconclusive"
    assert "no interval" in d.summary()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"treatment": [1.0, 2.0], "control": [1.0]}, "same seed"),
        ({"treatment": [], "control": []}, "no pairs"),
        ({"treatment": [math.nan], "control": [0.0]}, "non-finite"),
        ({"treatment": [1.0], "control": [0.0], "confidence": 1.5}, "confidence"),
        ({"treatment": [1.0], "control": [0.0], "method": "z"}, "method"),
    ],
)
def test_bad_inputs_name_the_problem(kwargs, match):
    with pytest.raises(InputError, match=match):
        paired_difference(**kwargs)
