"""The plateau rule on validation curves, and the demo's warning built from it."""

from __future__ import annotations

import math

import pytest

from discover.demo import DemoResult, convergence_notes
from discover.errors import InputError
from discover.training import PLATEAU_GAIN, PLATEAU_GAP, PLATEAU_WINDOW, plateau


def test_a_flat_end_has_plateaued():
    check = plateau([0.5, 0.8, 0.9, 0.91, 0.912, 0.911, 0.912])
    assert check.plateaued and check.reason == ""
    assert check.best == 0.912 and check.gap == 0.0 and check.gain == pytest.approx(0.002)


def test_a_rising_curve_is_still_gaining():
    check = plateau([0.5, 0.6, 0.7, 0.8])
    assert not check.plateaued
    assert check.reason == f"still gaining (+30.00 points in the last {PLATEAU_WINDOW} epochs)"


def test_a_curve_that_fell_from_its_best_has_not_plateaued():
    check = plateau([0.5, 0.95, 0.90, 0.90, 0.90, 0.90])
    assert not check.plateaued and "5.00 points below the best" in check.reason


def test_the_thresholds_are_the_edges():
    window = PLATEAU_WINDOW
    just_below = [0.5] + [0.8] * window + [0.8 + PLATEAU_GAIN / 2]
    assert plateau(just_below).plateaued
    at_gain = [0.5] + [0.8] * window + [0.8 + PLATEAU_GAIN]
    assert not plateau(at_gain).plateaued  # a gain of exactly PLATEAU_GAIN is still gaining
    gap = [0.9 + 2 * PLATEAU_GAP] + [0.9] * (window + 1)
    assert not plateau(gap).plateaued


def test_too_short_a_curve_cannot_have_plateaued():
    check = plateau([0.9] * PLATEAU_WINDOW)
    assert not check.plateaued and "need >" in check.reason
    assert check.to_dict() == {"plateaued": False, "reason": check.reason}


def test_a_non_finite_curve_is_refused():
    with pytest.raises(InputError, match="non-finite"):
        plateau([0.5, math.nan, 0.7, 0.8])


def test_demo_notes_name_the_models_that_were_still_learning():
    convergence = {
        "CVN (U=4)": plateau([0.5, 0.9, 0.91, 0.912, 0.911, 0.912]).to_dict(),
        "dense twin (U=1)": plateau([0.3, 0.5, 0.6, 0.7]).to_dict(),
    }
    (note,) = convergence_notes(convergence)
    assert note.startswith("Not a verdict on competition")
    assert "dense twin (U=1): still gaining" in note and "CVN (U=4):" not in note
    assert convergence_notes({"CVN (U=4)": convergence["CVN (U=4)"]}) == []


def test_demo_summary_prints_the_note(tmp_path):
    result = DemoResult(
        out=tmp_path, report=tmp_path / "report" / "index.html",
        accuracy={"CVN (U=4)": {"top1": 0.9, "top5": 1.0}}, sparsity={"CVN (U=4)": 0.25},
        description_scores={}, final_labels={}, explanation_precision={}, class_names=[],
        policy="sample", test_images=10,
        convergence={"CVN (U=4)": plateau([0.3, 0.5, 0.6, 0.7]).to_dict()},
    )  # fmt: skip
    assert "NOTE: Not a verdict on competition" in result.summary()
