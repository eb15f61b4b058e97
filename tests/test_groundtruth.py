"""Ground-truth scores (AUPRC, held-out IoU / F1, best concept, monosemanticity) and the
missing- / extra-labels sanity tests of the similarity functions."""

import json
import math
import shutil
from dataclasses import replace

import pytest
import torch
from torch.utils.data import Subset, TensorDataset

import discover
from _helpers import SHAPES_PROBE
from discover.data.shapes import ShapesWorld
from discover.dissection.records import DissectConfig, UnitDescription
from discover.dissection.result import Dissection
from discover.dissection.similarity import DEFAULT_SIMILARITY, SIMILARITIES, register_similarity
from discover.evaluation import (
    MONOSEMANTIC_BAR,
    GroundTruthReport,
    LayerGroundTruth,
    SanityConfig,
    SanityResult,
    average_precision,
    corrupt_labels,
    evaluate_groundtruth,
    groundtruth_dissection,
    groundtruth_scores,
    probe_annotations,
    probe_split,
    saved_groundtruth,
    similarity_sanity,
    threshold_metrics,
)


def _annotations(n=2000, c=6, seed=0, low=0.1, high=0.4):
    g = torch.Generator().manual_seed(seed)
    rates = low + (high - low) * torch.rand(c, generator=g)
    A = (torch.rand(n, c, generator=g) < rates).float()
    A[0], A[1] = 1.0, 0.0  # no concept is empty or everywhere
    return A


def _names(c):
    return [f"concept {i}" for i in range(c)]


def _loop_average_precision(scores, labels):
    """AP by a direct loop over the distinct thresholds, highest first."""
    total, previous_recall, positives = 0.0, 0.0, float(labels.sum())
    for t in sorted(set(scores.tolist()), reverse=True):
        predicted = scores >= t
        tp = float(labels[predicted].sum())
        recall, precision = tp / positives, tp / float(predicted.sum())
        total += (recall - previous_recall) * precision
        previous_recall = recall
    return total


def _loop_threshold(scores, labels):
    """The F1-maximising threshold by a loop (highest threshold of equal F1)."""
    best, best_t = -1.0, None
    for t in sorted(set(scores.tolist()), reverse=True):
        predicted = (scores >= t).float()
        f1 = 2 * float((predicted * labels).sum()) / float(predicted.sum() + labels.sum())
        if f1 > best:
            best, best_t = f1, t
    return best_t


# --------------------------------------------------------------------------- AUPRC


def test_hand_computed_average_precision():
    # ranks 1..4 hold labels 1, 0, 1, 0: AP = (1/1 + 2/3) / 2
    Q = torch.tensor([[0.9], [0.8], [0.7], [0.1]])
    A = torch.tensor([[1.0], [0.0], [1.0], [0.0]])
    assert average_precision(Q, A).item() == pytest.approx(5 / 6)
    # a tie between a positive and a negative at the top: one threshold with precision 1/2
    Q = torch.tensor([[1.0], [1.0], [0.5], [0.0]])
    A = torch.tensor([[1.0], [0.0], [1.0], [0.0]])
    assert average_precision(Q, A).item() == pytest.approx((0.5 + 2 / 3) / 2)


@pytest.mark.parametrize("ties", [False, True])
def test_average_precision_matches_sklearn_and_a_loop(ties):
    g = torch.Generator().manual_seed(1)
    A = _annotations(n=150, c=4, seed=2)
    if ties:  # a few distinct values: many tied activations
        Q = torch.randint(0, 5, (150, 5), generator=g).float()
    else:
        Q = torch.randn(150, 5, generator=g)
    ap = average_precision(Q, A, chunk_size=2)
    assert ap.shape == (5, 4) and ap.dtype == torch.float64
    for k in range(5):
        for c in range(4):
            assert ap[k, c].item() == pytest.approx(_loop_average_precision(Q[:, k], A[:, c]))
    metrics = pytest.importorskip("sklearn.metrics")
    for k in range(5):
        for c in range(4):
            expected = metrics.average_precision_score(A[:, c].numpy(), Q[:, k].numpy())
            assert ap[k, c].item() == pytest.approx(expected, abs=1e-12)


def test_exact_concept_unit_scores_one_and_random_unit_scores_the_base_rate():
    N = 20000
    A = _annotations(n=N, c=3, seed=3)
    g = torch.Generator().manual_seed(4)
    Q = torch.stack(
        [
            A[:, 0],  # exactly concept 0 (binary, tied)
            3 * A[:, 1] + 0.1 * torch.rand(N, generator=g),  # concept 1, separated
            torch.randn(N, generator=g),  # random
            torch.zeros(N),  # constant
        ],
        dim=1,
    )
    ap = average_precision(Q, A)
    base = A.mean(dim=0).double()
    assert ap[0, 0].item() == 1.0 and ap[1, 1].item() == 1.0
    assert torch.allclose(ap[2], base, atol=0.02)  # about the base rate
    assert torch.allclose(ap[3], base, atol=1e-12)  # a constant unit: exactly the base rate
    result = groundtruth_scores(Q, A, _names(3), ["concept 0", "concept 1", "concept 2", "x"])
    exact, separated = result.units[:2]
    assert (exact.label_auprc, exact.label_iou, exact.label_f1) == (1.0, 1.0, 1.0)
    # separated but not tied: the fit half's threshold (its lowest positive) can miss a
    # held-out positive just below it
    assert separated.label_auprc == 1.0 and separated.label_iou > 0.99
    for unit in (exact, separated):
        assert unit.label_is_best and unit.best_concept == unit.label


def test_chunking_and_dtypes_do_not_change_scores():
    A = _annotations(n=300, c=3)
    Q = torch.randn(300, 7)
    ref = average_precision(Q, A)
    assert torch.equal(average_precision(Q, A, chunk_size=1), ref)
    assert torch.allclose(average_precision(Q.double(), A.bool()), ref)
    assert torch.allclose(average_precision(Q.half(), A), average_precision(Q.half().float(), A))


# --------------------------------------------------------------------------- threshold


def test_threshold_is_chosen_on_the_fit_half_only():
    # fit images: positives at 3, negatives at 1 -> the fit threshold is 3 (F1 = 1 there);
    # held-out images: positives at 2, negatives at 0 -> above 3 nothing, so F1 = IoU = 0.
    # Had the held-out half chosen the threshold, it would be 2 with F1 = IoU = 1.
    fit, held_out = torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5, 6, 7])
    A = torch.tensor([[1.0], [1.0], [0.0], [0.0], [1.0], [1.0], [0.0], [0.0]])
    Q = torch.tensor([[3.0], [3.0], [1.0], [1.0], [2.0], [2.0], [0.0], [0.0]])
    t, iou, f1 = threshold_metrics(Q, A, fit=fit, held_out=held_out)
    assert (t.item(), iou.item(), f1.item()) == (3.0, 0.0, 0.0)
    # swapping the halves swaps the answer
    t, iou, f1 = threshold_metrics(Q, A, fit=held_out, held_out=fit)
    assert (t.item(), iou.item(), f1.item()) == (2.0, 1.0, 1.0)


def test_groundtruth_scores_use_the_seeded_split():
    N, seed = 400, 7
    fit, held_out = probe_split(N, seed=seed)
    A = torch.zeros(N, 2)
    A[::2, 0] = 1.0
    A[:3, 1], A[-1, 1] = 1.0, 1.0
    Q = torch.zeros(N, 1)
    Q[fit, 0] = 1.0 + 2.0 * A[fit, 0]  # fit: positives 3, negatives 1
    Q[held_out, 0] = 2.0 * A[held_out, 0]  # held-out: positives 2, negatives 0
    unit = groundtruth_scores(Q, A, ["even", "odd"], ["even"], seed=seed).units[0]
    assert unit.threshold == 3.0 and unit.label_f1 == 0.0 and unit.label_iou == 0.0
    other = groundtruth_scores(Q, A, ["even", "odd"], ["even"], seed=seed + 1).units[0]
    assert other.label_f1 > 0.0  # another split mixes the halves


def test_threshold_metrics_match_a_loop():
    g = torch.Generator().manual_seed(5)
    A = _annotations(n=120, c=3, seed=6)
    Q = torch.cat([torch.randn(120, 2, generator=g), torch.randint(0, 4, (120, 2)).float()], 1)
    fit, held_out = probe_split(120, seed=3)
    t, iou, f1 = threshold_metrics(Q, A, fit=fit, held_out=held_out, chunk_size=3)
    for k in range(4):
        for c in range(3):
            best = _loop_threshold(Q[fit, k], A[fit, c])
            predicted = (Q[held_out, k] >= best).float()
            labels = A[held_out, c]
            tp = float((predicted * labels).sum())
            assert t[k, c].item() == best
            assert iou[k, c].item() == pytest.approx(
                tp / float(predicted.sum() + labels.sum() - tp)
            )
            assert f1[k, c].item() == pytest.approx(2 * tp / float(predicted.sum() + labels.sum()))


def test_metrics_are_nan_without_positives_in_a_half():
    A = torch.tensor([[1.0], [0.0], [0.0], [0.0]])
    Q = torch.tensor([[1.0], [0.0], [0.5], [0.2]])
    t, iou, f1 = threshold_metrics(Q, A, fit=torch.tensor([0, 1]), held_out=torch.tensor([2, 3]))
    assert t.item() == 1.0 and math.isnan(iou.item()) and math.isnan(f1.item())
    t, iou, f1 = threshold_metrics(Q, A, fit=torch.tensor([2, 3]), held_out=torch.tensor([0, 1]))
    assert math.isnan(t.item()) and math.isnan(f1.item())


def test_probe_split_is_seeded_and_complete():
    fit, held_out = probe_split(11, seed=3)
    assert len(fit) == 6 and len(held_out) == 5
    assert sorted(fit.tolist() + held_out.tolist()) == list(range(11))
    assert torch.equal(probe_split(11, seed=3)[0], fit)
    assert not torch.equal(probe_split(11, seed=4)[0], fit)


# --------------------------------------------------------------------------- labels and layers


def test_labels_outside_the_ground_truth_score_zero_and_are_never_best():
    A = _annotations(n=500, c=3)
    Q = torch.cat([A[:, :1], A[:, 2:3]], dim=1)
    result = groundtruth_scores(Q, A, ["Red", "blue", "green"], [" red ", "a dog"])
    known, unknown = result.units
    assert known.label_concept == "Red" and known.label_known and known.label_auprc == 1.0
    assert unknown.label_concept is None and not unknown.label_known
    assert (unknown.label_auprc, unknown.label_iou, unknown.label_f1) == (0.0, 0.0, 0.0)
    assert unknown.threshold is None and not unknown.label_is_best
    assert unknown.best_concept == "green" and unknown.best_auprc == 1.0
    summary = result.summary()
    assert summary["labels_known"] == 1 and summary["label_is_best"] == 0.5
    assert summary["mean_label_auprc"] == 0.5  # the unknown label counts as 0
    mapped = groundtruth_scores(Q, A, ["Red", "blue", "green"], ["Red", "a dog"],
                                label_map={"a dog": "green"})  # fmt: skip
    assert mapped.units[1].label_concept == "green" and mapped.units[1].label_is_best


def test_monosemanticity_and_summary():
    N = 3000
    A = _annotations(n=N, c=4, seed=8)
    g = torch.Generator().manual_seed(9)
    Q = torch.cat(
        [A[:, :2] + 0.01 * torch.rand(N, 2, generator=g), torch.randn(N, 2, generator=g)], 1
    )
    labels = ["concept 0", "concept 3", "concept 2", "concept 1"]
    result = groundtruth_scores(Q, A, _names(4), labels)
    s = result.summary()
    assert MONOSEMANTIC_BAR == 0.75 and s["bar"] == 0.75
    assert s["monosemantic"] == 0.5  # the two planted units; random ones stay near base rates
    best = [u.best_auprc for u in result.units]
    assert s["mean_best_auprc"] == pytest.approx(sum(best) / 4)
    assert [u.label_is_best for u in result.units[:2]] == [True, False]
    assert groundtruth_scores(Q, A, _names(4), labels, bar=0.0).summary()["monosemantic"] == 1.0
    text = result.table()
    assert "monosemantic" in text and "concept 3" in text and "*" in text


def test_errors_name_the_parameter():
    A = _annotations(n=50, c=3)
    Q = torch.randn(50, 2)
    names, labels = _names(3), ["concept 0", "concept 1"]
    with pytest.raises(ValueError, match="annotations"):
        groundtruth_scores(Q[:40], A, names, labels)
    with pytest.raises(ValueError, match="annotations must be binary.*0.5"):
        groundtruth_scores(Q, A * 0.5, names, labels)
    empty = A.clone()
    empty[:, 1] = 0
    with pytest.raises(ValueError, match="'concept 1'.*empty concept"):
        groundtruth_scores(Q, empty, names, labels)
    with pytest.raises(ValueError, match="labels: 1 labels for 2 units"):
        groundtruth_scores(Q, A, names, labels[:1])
    with pytest.raises(ValueError, match="concepts: 2 names for 3"):
        groundtruth_scores(Q, A, names[:2], labels)
    with pytest.raises(ValueError, match="activations hold NaN"):
        groundtruth_scores(Q.masked_fill(Q > 1, math.nan), A, names, labels)
    with pytest.raises(ValueError, match="activations must be a non-empty 2-D"):
        average_precision(torch.randn(50), A)
    with pytest.raises(ValueError, match="bar"):
        groundtruth_scores(Q, A, names, labels, bar=1.0)
    with pytest.raises(ValueError, match="label_map"):
        groundtruth_scores(Q, A, names, labels, label_map={"x": "not a concept"})
    with pytest.raises(ValueError, match="held_out holds indices outside"):
        threshold_metrics(Q, A, fit=torch.tensor([0]), held_out=torch.tensor([99]))
    with pytest.raises(ValueError, match="fit must be a non-empty 1-D integer"):
        threshold_metrics(Q, A, fit=torch.tensor([0.5]), held_out=torch.tensor([1]))


def test_save_and_load_round_trip(tmp_path):
    A = _annotations(n=200, c=3)
    Q = torch.cat([A[:, :1], torch.randn(200, 2)], dim=1)
    Q[:, 2] = 0.0  # a constant unit
    layer = groundtruth_scores(Q, A, _names(3), ["concept 0", "nope", "concept 2"], layer="l1")
    path = layer.save(tmp_path / "gt")
    assert path.name == "groundtruth.json"
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "groundtruth.json",
        "groundtruth_units.csv",
    ]
    json.loads(path.read_text())  # strict JSON: no NaN
    back = LayerGroundTruth.load(tmp_path / "gt")
    assert back.units == layer.units
    for key, value in layer.summary().items():
        assert back.summary()[key] == (pytest.approx(value) if isinstance(value, float) else value)
    assert torch.allclose(back.auprc, layer.auprc, atol=1e-5)
    header = (path.parent / "groundtruth_units.csv").read_text().splitlines()[0]
    assert header.startswith("layer,unit,label,label_concept,label_auprc")
    report = GroundTruthReport({"l1": layer, "l2": replace(layer, layer="l2")}, {"probe": "test"})
    report.save(tmp_path / "two")
    loaded = GroundTruthReport.load(tmp_path / "two" / "groundtruth.json")
    assert list(loaded.layers) == ["l1", "l2"] and loaded.meta == {"probe": "test"}
    assert len(loaded.table().splitlines()) == 2
    with pytest.raises(ValueError, match="pass layer="):
        LayerGroundTruth.load(tmp_path / "two")
    assert LayerGroundTruth.load(tmp_path / "two", layer="l2").layer == "l2"
    with pytest.raises(ValueError, match="holds layer 'l1'"):
        GroundTruthReport({"l2": layer})


def test_groundtruth_of_a_dissection():
    A = _annotations(n=300, c=3)
    Q = torch.cat([A[:, 1:2], torch.randn(300, 1)], dim=1)
    units = [
        UnitDescription(layer="fc", unit=0, label="concept 1", score=1.0, top=[]),
        UnitDescription(layer="fc", unit=1, label="concept 0", score=0.5, top=[]),
    ]
    config = DissectConfig(layers=["fc"], concepts="gt", embedder="none")
    dissection = Dissection(units, config, activations={"fc": Q})
    report = groundtruth_dissection(dissection, A, _names(3))
    layer = report.layer("fc")
    assert [u.label for u in layer.units] == ["concept 1", "concept 0"]
    assert layer.units[0].label_auprc == 1.0 and layer.units[0].label_is_best
    with pytest.raises(ValueError, match="annotations has 299 rows"):
        groundtruth_dissection(dissection, A[:299], _names(3))


# --------------------------------------------------------------------------- evaluate_groundtruth


def _copy(shapes_dissection, tmp_path):
    folder, probe = shapes_dissection
    return shutil.copytree(folder, tmp_path / "dissection"), probe


def test_evaluate_groundtruth_scores_the_dissection_on_its_probe_and_saves(
    shapes_dissection, tmp_path
):
    folder, probe = _copy(shapes_dissection, tmp_path)
    assert discover.evaluate_groundtruth is evaluate_groundtruth
    report = evaluate_groundtruth(folder, probe)
    # the same numbers as groundtruth_dissection on the probe's scorable concepts
    A, names = probe_annotations(probe)
    keep = (A.sum(0) > 0) & (A.sum(0) < len(probe))
    assert not keep.all()  # 32 images leave some of the 46 concepts empty
    kept = [n for n, k in zip(names, keep.tolist(), strict=True) if k]
    direct = groundtruth_dissection(Dissection.load(folder), A[:, keep], kept)
    assert list(report.layers) == ["layer2.0.act2", "fc"]
    for name, layer in report.layers.items():
        assert layer.rows() == direct.layer(name).rows()  # NaN IoU / F1 as None
        assert torch.equal(layer.auprc, direct.layer(name).auprc)
        assert layer.summary() == direct.layer(name).summary()
        assert layer.concepts == kept
    assert report.meta["dropped_concepts"] == [n for n in names if n not in kept]
    assert report.meta["probe"]["images"] == len(probe)
    # saved into the dissection folder, where later stages read it
    assert report.folder == folder
    saved = GroundTruthReport.load(folder)
    assert saved.summary() == report.summary()
    assert saved_groundtruth(Dissection.load(folder)).summary() == report.summary()
    assert (folder / "groundtruth_units.csv").is_file()
    # a Dissection object (or save=False) writes nothing
    (folder / "groundtruth.json").unlink()
    evaluate_groundtruth(Dissection.load(folder), probe, layers=["fc"], seed=1)
    evaluate_groundtruth(folder, probe, save=False)
    assert not (folder / "groundtruth.json").exists()
    assert saved_groundtruth(Dissection.load(folder)) is None


def test_evaluate_groundtruth_refuses_another_probe(shapes_dissection, tmp_path):
    folder, probe = _copy(shapes_dissection, tmp_path)
    for other in (
        ShapesWorld(**SHAPES_PROBE, split="val", seed=1),  # same size, other images
        ShapesWorld(**SHAPES_PROBE, split="test"),
        Subset(probe, range(20)),
    ):
        with pytest.raises(ValueError, match="probe: not the probe set the dissection in .* was"):
            evaluate_groundtruth(folder, other)
    assert not (folder / "groundtruth.json").exists()


def test_evaluate_groundtruth_needs_annotations(shapes_dissection, tmp_path):
    folder, probe = _copy(shapes_dissection, tmp_path)
    plain = TensorDataset(torch.zeros(len(probe), 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="probe: TensorDataset carries no ground-truth concept"):
        evaluate_groundtruth(folder, plain)
    with pytest.raises(ValueError, match="dissection: expected a Dissection or its saved folder"):
        evaluate_groundtruth(3, probe)
    with pytest.raises(ValueError, match="no layer 'nope'"):
        evaluate_groundtruth(folder, probe, layers=["nope"])


def test_probe_annotations_of_a_subset():
    probe = ShapesWorld(n=20, image_size=16)
    table, names = probe_annotations(Subset(probe, [3, 1]))
    assert names == probe.concept_names
    assert torch.equal(table, probe.concepts_table([3, 1]))


def test_a_saved_report_of_another_dissection_is_ignored(shapes_dissection, tmp_path):
    folder, probe = _copy(shapes_dissection, tmp_path)
    evaluate_groundtruth(folder, probe)
    changed = Dissection.load(folder)
    changed.layer("fc")[0].label = "star" if changed.layer("fc")[0].label != "star" else "red"
    with pytest.warns(UserWarning, match="computed from another dissection"):
        assert saved_groundtruth(changed) is None
    changed.activations["fc"] = changed.activations["fc"] + 1.0
    with pytest.warns(UserWarning, match="computed from another dissection"):
        assert saved_groundtruth(changed) is None
    (folder / "groundtruth.json").write_text("{broken")
    with pytest.warns(UserWarning, match="not valid JSON"):
        assert saved_groundtruth(Dissection.load(folder)) is None
    # a dissection saved again over its folder takes its derived results with it
    evaluate_groundtruth(folder, probe)
    Dissection.load(folder).save(folder)
    assert not (folder / "groundtruth.json").exists()


# --------------------------------------------------------------------------- sanity tests


def test_corrupt_labels_counts():
    A = _annotations(n=400, c=5)
    g = torch.Generator().manual_seed(0)
    missing, extra = corrupt_labels(A, 0.25, generator=g)
    pos, neg = A.sum(0), (1 - A).sum(0)
    assert torch.equal(missing.sum(0), pos - (0.25 * pos).round().clamp_min(1))
    assert torch.equal(extra.sum(0), pos + (0.25 * neg).round().clamp_min(1))
    assert bool((missing <= A).all()) and bool((extra >= A).all())
    again = corrupt_labels(A, 0.25, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[0], missing) and torch.equal(again[1], extra)
    with pytest.raises(ValueError, match="fraction"):
        corrupt_labels(A, 1.0)
    with pytest.raises(ValueError, match="columns must be binary"):
        corrupt_labels(A + 0.5, 0.5)


def test_sanity_harness_on_a_metric_blind_to_extra_labels():
    # precision among the unit's top 5 % images: missing labels lower it, extra labels cannot
    @register_similarity("test_top_precision")
    def top_precision(concept_acts, neuron_acts, **_):
        n = max(1, neuron_acts.shape[0] // 20)
        top = neuron_acts.topk(n, dim=0).indices.T  # (K, n)
        return concept_acts[top].mean(dim=1)  # (K, M)

    try:
        result = similarity_sanity(
            similarities=("cos", "test_top_precision"),
            planted_units=20,
            planted_images=600,
            planted_noise=0.3,
            fractions=(0.5,),
            seeds=(0, 1),
        )
    finally:
        SIMILARITIES.unregister("test_top_precision")
    assert result.rate("test_top_precision", "planted", "missing") > 0.9
    assert result.rate("test_top_precision", "planted", "extra") == 0.0
    assert result.rate("test_top_precision", "planted", "extra", count="tied") == 1.0
    assert result.verdicts() == {"cos": True, "test_top_precision": False}
    row = result.rows[0]
    assert row["cases"] == 40 and set(row) >= {"passed", "tied", "rate", "fraction"}


def test_similarity_sanity_on_shapes_ground_truth(tmp_path):
    A = ShapesWorld(n=500, split="val", seed=0).concepts_table()
    A[:, 5] = 0.0  # a column that cannot be corrupted is skipped
    result = similarity_sanity(
        A,
        source="shapes",
        planted_units=8,
        planted_images=300,
        fractions=(0.25, 0.5),
        seeds=(0,),
    )
    assert result.sources == ["planted", "shapes"]
    assert result.similarities == list(SIMILARITIES)
    assert result.meta["sources"]["shapes"]["skipped_columns"] == 1
    assert result.meta["default_similarity"] == DEFAULT_SIMILARITY
    # the concept column itself is a perfect unit: cosine prefers it to both corruptions
    assert result.rate("cos", "shapes", "missing") == 1.0
    assert result.rate("cos", "shapes", "extra") == 1.0
    table = result.table()
    assert f"{DEFAULT_SIMILARITY} (default)" in table and "shapes extra" in table
    assert len(result.table(by_fraction=True).splitlines()) == 2 + 2 * len(SIMILARITIES)
    path = result.save(tmp_path)
    back = SanityResult.load(path)
    assert back.rows == result.rows and back.summary() == result.summary()
    assert (tmp_path / "similarity_sanity.csv").read_text().startswith("similarity,source,test")


def test_sanity_config_errors():
    with pytest.raises(ValueError, match="fractions"):
        SanityConfig(fractions=(0.0,))
    with pytest.raises(ValueError, match="unknown"):
        SanityConfig(similarities=("cosine_typo",))
    with pytest.raises(ValueError, match="base_rates"):
        SanityConfig(base_rates=(0.5, 0.2))
    with pytest.raises(ValueError, match="nothing to test"):
        similarity_sanity(planted_units=0)
    with pytest.raises(ValueError, match="annotations must be binary"):
        similarity_sanity(torch.rand(50, 3), planted_units=0)
