import random

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from discover.dissection.concepts import concept_set_from_lines
from discover.dissection.core import dissect
from discover.dissection.embedders import AnnotationEmbedder
from discover.dissection.labels import abstentions, choose_labels, label_defaults

NAMES = ["red", "star", "striped background", "small", "top left", "circle", "blue", "ring"]


def _probe(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    table = (torch.rand(n, len(NAMES), generator=g) < 0.3).float()
    return TensorDataset(table.reshape(n, 1, 1, len(NAMES)), torch.zeros(n)), table


class Units(nn.Module):
    """``fc``: unit k copies concept ``perm[k]`` (a perfect detector), then one unit of pure
    noise and one dead unit."""

    def __init__(self, perm):
        super().__init__()
        self.perm = perm

    def forward(self, x):
        x = x.flatten(1)
        g = torch.Generator().manual_seed(1)
        noise = torch.randn(len(x), 1, generator=g)
        return torch.cat([x[:, self.perm], noise, torch.zeros(len(x), 1)], dim=1)

    def fc(self, x):  # pragma: no cover - only here so that the layer name resolves
        return x


class Wrapped(nn.Module):
    def __init__(self, perm):
        super().__init__()
        self.fc = Units(perm)

    def forward(self, x):
        return self.fc(x)


def _dissect(probe, table, names, similarity, **options):
    return dissect(
        Wrapped([0, 1, 5]),
        ["fc"],
        probe,
        concept_set_from_lines(names, name="toy"),
        AnnotationEmbedder(table, names),
        similarity,
        transform=lambda x: x,
        progress=False,
        cache_dir=None,
        **options,
    )


@pytest.mark.parametrize("similarity", ["soft_wpmi", "wpmi", "cos", "corr", "rank_reorder"])
def test_labels_do_not_depend_on_concept_order(similarity):
    probe, table = _probe()
    first = _dissect(probe, table, NAMES, similarity)
    order = list(range(len(NAMES)))
    random.Random(3).shuffle(order)
    names = [NAMES[i] for i in order]
    # the same probe, concepts in another order in the file (and in the annotation table)
    again = _dissect(probe, table[:, order], names, similarity)
    for a, b in zip(first.layer("fc"), again.layer("fc"), strict=True):
        assert (a.label, a.abstained) == (b.label, b.abstained)
        assert a.candidates == b.candidates
    # the planted units are recognised, whatever soft WPMI's saturation does to the scores
    assert first.labels("fc")[:3] == ["red", "star", "circle"]


def test_soft_wpmi_ties_are_broken_by_cos_not_file_order():
    probe, table = _probe()
    g = torch.Generator().manual_seed(5)
    # "warm colour": every red image and a quarter of the others (extra labels, a superset)
    warm = torch.maximum(table[:, :1], (torch.rand(len(table), 1, generator=g) < 0.25).float())
    for names, columns in [
        (["warm colour", *NAMES], [warm, table]),
        ([*NAMES, "warm colour"], [table, warm]),
    ]:
        options = {"null_repeats": 0, "keep_scores": True}
        result = _dissect(probe, torch.cat(columns, dim=1), names, "soft_wpmi", **options)
        S, red, warmest = result.scores["fc"][0], names.index("red"), names.index("warm colour")
        assert S[red] == S[warmest]  # soft WPMI saturates: the superset ties the true concept
        assert result.labels("fc")[0] == "red" and result.layer("fc")[0].abstained is None


def test_identical_concepts_tie_and_the_unit_abstains():
    probe, table = _probe()
    twin = torch.cat([table, table[:, :1]], dim=1)  # "scarlet" is the same column as "red"
    names = [*NAMES, "scarlet"]
    result = _dissect(probe, twin, names, "cos")
    red = result.layer("fc")[0]
    assert red.abstained == "tie" and red.shown_label is None
    assert red.label == "red" and set(red.candidates[:2]) == {"red", "scarlet"}  # by name


def test_noise_and_dead_units_abstain():
    probe, table = _probe()
    result = _dissect(probe, table, NAMES, "cos", abstain_p=1e-3, min_match=None)
    units = result.layer("fc")
    assert [u.abstained for u in units] == [None, None, None, "not significant", "dead"]
    assert result.shown_labels("fc") == ["red", "star", "circle", None, None]
    assert result.meta["layers"]["fc"]["abstained"] == {"not significant": 1, "dead": 1}
    by_default = _dissect(probe, table, NAMES, "cos")  # the annotations' default: min_match
    assert label_defaults("annotations").min_match is not None
    assert [u.abstained for u in by_default.layer("fc")] == [
        None, None, None, "weak match", "dead",
    ]  # fmt: skip
    kept = _dissect(probe, table, NAMES, "cos", abstain_p=None, min_match=None)
    assert [u.abstained for u in kept.layer("fc")] == [None, None, None, None, "dead"]


def test_abstain_p_needs_the_null_and_a_probability():
    probe, table = _probe(100)
    with pytest.raises(ValueError, match="null_repeats"):
        _dissect(probe, table, NAMES, "cos", null_repeats=0, abstain_p=0.01)
    with pytest.raises(ValueError, match="abstain_p"):
        _dissect(probe, table, NAMES, "cos", abstain_p=2.0)
    without = _dissect(probe, table, NAMES, "cos", null_repeats=0)  # the default needs none
    assert without.config.abstain_p is None


def test_defaults_follow_the_embedder_kind():
    probe, table = _probe(100)
    result = _dissect(probe, table, NAMES, None)
    default = label_defaults("annotations")
    assert result.config.similarity == default.similarity
    assert result.config.similarity_params == default.similarity_params
    with pytest.raises(ValueError, match="known kinds"):
        label_defaults("telepathy")


def test_choose_labels_orders_runner_ups_by_score_then_cos_then_name():
    S = torch.tensor([[1.0, 3.0, 3.0, 2.0, 2.0]])
    secondary = torch.tensor([[0.0, 0.2, 0.5, 0.1, 0.1]])
    choice = choose_labels(S, secondary, ["a", "b", "c", "e", "d"], k=4)
    assert choice.top.tolist() == [[2, 1, 4, 3]] and choice.tie.tolist() == [False]
    assert choice.scores.tolist() == [[3.0, 3.0, 2.0, 2.0]]
    nan = choose_labels(torch.tensor([[float("nan"), 1.0]]), torch.zeros(1, 2), ["a", "b"], k=2)
    assert nan.top.tolist() == [[1, 0]]
    with pytest.raises(ValueError, match="do not match"):
        choose_labels(S, secondary, ["a"], k=2)


def test_abstentions_order_of_reasons():
    Q = torch.tensor([[0.0, float("nan"), 1.0], [0.0, 1.0, 2.0]])
    reasons = abstentions(Q, torch.tensor([True, True, True]), torch.ones(3), 1e-3)
    assert reasons == ["dead", "not finite", "tie"]


def test_labels_that_explain_little_of_the_unit_abstain():
    probe, table = _probe()
    result = _dissect(probe, table, NAMES, "cos", abstain_p=None, min_match=0.5)
    units = result.layer("fc")
    assert [u.abstained for u in units] == [None, None, None, "weak match", "dead"]
    assert units[0].match == pytest.approx(1.0) and abs(units[3].match) < 0.5
    assert result.config.min_match == 0.5
    with pytest.raises(ValueError, match="min_match must be in"):
        _dissect(probe, table, NAMES, "cos", min_match=2.0)


def test_formula_labels_are_neutralised_in_the_csv():
    """Issue 22: a concept named like a spreadsheet formula reaches descriptions.csv with a
    leading quote (OWASP), while numbers (negative scores included) stay numbers."""
    import csv
    import io

    probe, table = _probe()
    names = ['=HYPERLINK("http://x","y")', "+cmd|' /C calc'!A0", *NAMES[2:5], "@SUM(1)", *NAMES[6:]]
    result = _dissect(probe, table, names, "corr", min_match=None)
    rows = list(csv.DictReader(io.StringIO(result.to_csv())))
    assert [r["label"] for r in rows[:3]] == [
        '\'=HYPERLINK("http://x","y")',
        "'+cmd|' /C calc'!A0",
        "'@SUM(1)",
    ]
    assert result.labels("fc")[0] == names[0]  # only the CSV cell changes
    for row in rows:
        float(row["score"])  # numbers are never quoted
        assert not row["label"].startswith(("=", "+", "-", "@"))
