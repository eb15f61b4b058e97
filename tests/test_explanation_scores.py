"""score_explanations: precision of shown labels against known concepts, with baselines."""

import pytest
import torch

from discover.dissection.records import DissectConfig, UnitDescription
from discover.dissection.result import Dissection
from discover.evaluation.explanations import score_explanations
from discover.explanation import (
    Contributions,
    Explanation,
    LayerExplanation,
    UnitContribution,
    Winner,
)

NAMES = ["red", "blue", "star", "ring"]


def _dissection():
    """Layer "a": unit 0 "red", unit 1 "star", unit 2 unlabelled (a tie), unit 3 "ring"
    with p_null 0.01 (shown unless a stricter threshold is asked for)."""
    rows = [
        ("red", None, 1e-6),
        ("star", None, 1e-6),
        ("blue", "tie", 1e-6),
        ("ring", None, 1e-2),
    ]
    units = [
        UnitDescription("a", k, label, 1.0, [(label, 1.0), ("blue", 0.5)], p_null=p, abstained=why)
        for k, (label, why, p) in enumerate(rows)
    ]
    return Dissection(units, DissectConfig(["a"], "toy", "toy"))


def _explanation(units, seen=None):
    winners = [
        Winner(u, None, 1.0, candidates=["x"], seen=None if seen is None else seen[j])
        for j, u in enumerate(units)
    ]
    contributions = Contributions(
        "a", 0, "c", 1.0, 0.0, 1.0, [UnitContribution(u, None, 1.0, 1.0, 1.0) for u in units]
    )
    return Explanation(
        "img", "m", {"index": 0, "label": "c", "probability": 1.0}, None, None,
        [LayerExplanation("a", "lwta", 4, len(units), 0.25, None, winners)], contributions,
    )  # fmt: skip


def test_precision_counts_only_shown_labels_and_has_baselines():
    truth = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]])  # red star; blue ring
    explanations = [_explanation([0, 1, 2]), _explanation([0, 3, 2])]
    scores = score_explanations(explanations, _dissection(), truth, NAMES)
    table = scores.contributions
    # image 0: red (true), star (true), tie (not shown); image 1: red (false), ring (true)
    assert (table.listed, table.shown) == (6, 4) and table.precision == pytest.approx(3 / 4)
    assert table.abstained == pytest.approx(2 / 6)
    # shuffled: a random shown label (red, star, ring) on each row's image
    assert table.shuffled == pytest.approx((2 / 3 + 2 / 3 + 1 / 3 + 1 / 3) / 4)
    assert scores.chance == pytest.approx(0.5) and scores.winners["a"].precision == table.precision
    stricter = score_explanations(explanations, _dissection(), truth, NAMES, abstain_p=1e-3)
    assert stricter.contributions.shown == 3  # "ring" (p_null 0.01) is now unlabelled
    assert stricter.contributions.precision == pytest.approx(2 / 3)
    assert "contributions: 75.0 % of 4 shown labels" in scores.summary()


def test_conditioned_labels_and_their_controls():
    truth = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    seen = [[("red", 2.0)], [("blue", 1.0)], [("star", 1.0)]]
    explanations = [_explanation([0, 1, 2], seen)]
    # the embedder's scores: it sees red and star in the image
    image_scores = torch.tensor([[3.0, -1.0, 2.0, -2.0]])
    scores = score_explanations(
        explanations, _dissection(), truth, NAMES, image_scores=image_scores, candidates=2
    )
    w = scores.winners["a"]
    assert w.conditioned == pytest.approx(1 / 2)  # red (true), blue (false); the tie is not shown
    # random units: the shown units' candidates {red, blue}, {star, blue}, {ring, blue}: the
    # embedder picks red, star, blue -> 2 of 3 true
    assert w.control_random_units == pytest.approx(2 / 3)
    assert 0 <= w.control_random_concepts <= 1


def test_inputs_are_checked():
    explanations = [_explanation([0])]
    with pytest.raises(ValueError, match="do not fit"):
        score_explanations(explanations, _dissection(), torch.zeros(2, 4), NAMES)
    with pytest.raises(ValueError, match="not ground-truth concepts"):
        score_explanations(explanations, _dissection(), torch.zeros(1, 3), NAMES[:3])
    with pytest.raises(ValueError, match="image_scores"):
        score_explanations(
            explanations, _dissection(), torch.zeros(1, 4), NAMES, image_scores=torch.zeros(1, 3)
        )
