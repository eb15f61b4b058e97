import csv
import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from discover import LWTA
from discover.cli import main
from discover.dissection.concepts import concept_set_from_lines
from discover.dissection.core import dissect
from discover.dissection.embedders import AnnotationEmbedder
from discover.dissection.records import DissectConfig, UnitDescription
from discover.dissection.result import Dissection
from discover.dissection.storage import SCORES_FILE
from discover.evaluation.descriptions import (
    evaluate_descriptions,
    resolve_class_names,
    text_encoder,
)
from discover.evaluation.simulation import simulation_score

CLASSES = ["cat", "dog", "car", "tree", "boat", "lamp"]
CONCEPTS = [*CLASSES, "sky", "road"]


def _dissection(S, *, classes=CONCEPTS, top_k=None, keep_scores=True, embedder="annotations"):
    """A Dissection of layer ``fc`` built straight from a score matrix ``S`` (K x M)."""
    S = torch.as_tensor(S, dtype=torch.float32)
    k = top_k or S.shape[1]
    units = []
    for unit, row in enumerate(S):
        values, idx = row.topk(k)
        top = [(classes[j], float(v)) for v, j in zip(values, idx, strict=True)]
        units.append(UnitDescription("fc", unit, top[0][0], top[0][1], top))
    config = DissectConfig(layers=["fc"], concepts="toy", embedder=embedder)
    return Dissection(
        units,
        config,
        {},
        {"fc": S} if keep_scores else {},
        list(classes) if keep_scores else None,
    )


def _scores(true_ranks, seed=0):
    """Scores where unit k's class (concept k) has rank ``true_ranks[k]``; best score falls
    with the rank, so the AUC of best score vs correctness is 1 when some units are right."""
    g = torch.Generator().manual_seed(seed)
    M = len(CONCEPTS)
    S = torch.empty(len(true_ranks), M)
    for k, r in enumerate(true_ranks):
        others = [j for j in range(M) if j != k]
        order = [others[i] for i in torch.randperm(M - 1, generator=g)]
        order.insert(r - 1, k)  # position r-1 in descending order
        top = 10.0 - r  # units with a worse true rank get lower best scores
        for pos, j in enumerate(order):
            S[k, j] = top - pos
    return S


def _words(texts):
    """A toy text encoder: one axis per word (identical strings -> cosine 1, others 0)."""
    vocab = {w: i for i, w in enumerate(sorted(set(CONCEPTS)))}
    out = torch.zeros(len(texts), len(vocab))
    for i, t in enumerate(texts):
        out[i, vocab[t]] = 1.0
    return out


def test_rank_figures_are_exact_and_baselines_are_chance():
    ranks = [1, 1, 1, 2, 3, 7]
    S = _scores(ranks)
    d = _dissection(S)
    s = evaluate_descriptions(d, CLASSES, sentence_model=None, null_repeats=2000)
    m = s.metrics
    assert m["top1"].value == pytest.approx(3 / 6)
    assert m["top5"].value == pytest.approx(5 / 6)
    assert m["mean_rank"].value == pytest.approx(sum(ranks) / 6)
    assert m["median_rank"].value == pytest.approx(1.5)
    assert m["auc"].value == pytest.approx(1.0)  # correct units have the higher best scores
    assert [u["rank"] for u in s.per_unit] == ranks
    assert [u["correct"] for u in s.per_unit] == [True, True, True, False, False, False]
    # random concept: uniform rank over M = 8 concepts
    assert m["top1"].random_concept.mean == pytest.approx(1 / 8, abs=0.02)
    assert m["top5"].random_concept.mean == pytest.approx(5 / 8, abs=0.03)
    assert m["mean_rank"].random_concept.mean == pytest.approx(4.5, abs=0.1)
    assert m["auc"].random_concept.mean == pytest.approx(0.5, abs=0.05)
    # shuffled neurons: unit k is "correct" for class j when its top concept is class j; each
    # unit meets each class with probability 1/6
    expected = (S.argmax(dim=1) < len(CLASSES)).sum().item() / 36
    assert m["top1"].shuffled_neurons.mean == pytest.approx(expected, abs=0.02)
    assert m["top1"].shuffled_neurons.std > 0
    assert not m["mean_rank"].higher_is_better
    assert s.scored_units == 6 and s.concepts == 8 and s.missing_classes == []
    assert s.settings["ranks"].startswith("exact")


def test_ties_rank_pessimistically():
    S = torch.zeros(6, 8)  # dead units: every concept tied
    s = evaluate_descriptions(_dissection(S), CLASSES, sentence_model=None, null_repeats=5)
    assert s.metrics["top1"].value == 0.0
    assert s.metrics["mean_rank"].value == 8.0
    assert s.metrics["auc"].value is None and "undefined" in s.metrics["auc"].note


def test_unit_count_must_match_class_count():
    d = _dissection(_scores([1] * 6))
    with pytest.raises(ValueError, match=r"'fc' has 6 units but 5 class names"):
        evaluate_descriptions(d, CLASSES[:5], sentence_model=None)
    with pytest.raises(ValueError, match="no layer 'head'"):
        evaluate_descriptions(d, CLASSES, layer="head", sentence_model=None)


def test_missing_class_names_are_reported_not_dropped():
    classes = [*CLASSES[:5], "giraffe"]
    d = _dissection(_scores([1, 2, 1, 1, 1, 1]))
    with pytest.warns(UserWarning, match="1 of 6 class names are not in the concept set"):
        s = evaluate_descriptions(d, classes, sentence_model=_words_or_unknown, null_repeats=10)
    assert s.missing_classes == ["giraffe"]
    assert s.scored_units == 5 and s.units == 6
    assert s.metrics["top1"].value == pytest.approx(4 / 5)
    assert s.per_unit[5]["rank"] is None and s.per_unit[5]["correct"] is None
    # the cosine figures still cover every unit, the unknown class included
    assert s.per_unit[5]["sentence_cos"] == pytest.approx(0.0)
    assert "giraffe" in s.summary()


def _words_or_unknown(texts):
    vocab = {w: i for i, w in enumerate(sorted(set(CONCEPTS)))}
    out = torch.zeros(len(texts), len(vocab) + 1)
    for i, t in enumerate(texts):
        out[i, vocab.get(t, len(vocab))] = 1.0
    return out


def test_top_lists_give_exact_top_k_and_missing_mean_rank():
    ranks = [1, 1, 2, 3, 5, 7]
    d = _dissection(_scores(ranks), top_k=3, keep_scores=False)
    d.concepts = None
    d.config.concepts = "toy"
    d.meta = {}
    # the concept set cannot be recovered from the name "toy": a clear error
    with pytest.raises(ValueError, match="cannot recover the dissection's concept set"):
        evaluate_descriptions(d, CLASSES, sentence_model=None)
    d.concepts = list(CONCEPTS)  # e.g. kept by the caller
    s = evaluate_descriptions(d, CLASSES, sentence_model=None, null_repeats=20)
    assert s.metrics["top1"].value == pytest.approx(2 / 6)
    assert s.metrics["mean_rank"].value is None
    assert "keep_scores=True" in s.metrics["mean_rank"].note
    assert s.settings["ranks"].startswith("from the stored top-3")
    assert [u["rank"] for u in s.per_unit] == [1, 1, 2, 3, None, None]


def test_matched_pair_cosine_and_its_baselines():
    d = _dissection(_scores([1, 1, 1, 1, 2, 1]))  # unit 4 is described as something else
    s = evaluate_descriptions(d, CLASSES, sentence_model=_words, null_repeats=500)
    cos = s.metrics["sentence_cos"]
    assert cos.value == pytest.approx(5 / 6)
    assert cos.shuffled_neurons.mean < 0.35  # a description matches another unit's class rarely
    assert cos.random_concept.mean == pytest.approx(1 / 8, abs=0.03)
    # annotations have no text space: reported as n/a, with the reason
    assert s.metrics["embedder_cos"].value is None
    assert "annotations embedder has no text space" in s.metrics["embedder_cos"].note
    assert s.settings["sentence_model"] == "_words"


def test_save_writes_json_and_csv(tmp_path):
    d = _dissection(_scores([1, 1, 2, 1, 1, 1]))
    s = evaluate_descriptions(d, CLASSES, sentence_model=_words, null_repeats=10)
    path = s.save(tmp_path)
    data = json.loads(path.read_text())
    assert data["metrics"]["top1"]["value"] == pytest.approx(5 / 6)
    assert data["metrics"]["top1"]["shuffled_neurons"]["repeats"] == 10
    rows = list(csv.DictReader((tmp_path / "description_scores.csv").open()))
    assert [r["metric"] for r in rows][:2] == ["top1", "top5"]
    units = list(csv.DictReader((tmp_path / "description_scores_units.csv").open()))
    assert units[2]["rank"] == "2" and units[2]["class"] == "car"
    s.save(tmp_path)  # overwritten, never appended
    assert len(list(csv.DictReader((tmp_path / "description_scores.csv").open()))) == len(rows)


# -- end to end: dissect with keep_scores, save, load, evaluate --------------------------------

NAMES = ["red", "star", "striped background", "small", "top left", "circle"]


class Oracle(nn.Module):
    def __init__(self, perm):
        super().__init__()
        self.fc = nn.Linear(len(perm), len(perm))
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(len(perm))[perm] * 3)
            self.fc.bias.fill_(-1.0)
        self.act = LWTA(2, name="act")

    def forward(self, x):
        return self.act(self.fc(x.flatten(1)))


def _world(n=300):
    g = torch.Generator().manual_seed(0)
    table = (torch.rand(n, len(NAMES), generator=g) < 0.3).float()
    return TensorDataset(table.reshape(n, 1, 1, len(NAMES)), torch.zeros(n)), table


def test_dissection_keeps_scores_through_save_and_load(tmp_path):
    probe, table = _world()
    perm = [5, 0, 3, 1, 4, 2]
    d = dissect(
        Oracle(perm),
        ["fc"],
        probe,
        concept_set_from_lines(NAMES, name="toy"),
        AnnotationEmbedder(table, NAMES),
        transform=lambda x: x,
        progress=False,
        keep_scores=True,
    )
    assert d.scores["fc"].shape == (6, 6) and d.concepts == NAMES
    d.save(tmp_path)
    loaded = Dissection.load(tmp_path)
    assert torch.equal(loaded.scores["fc"], d.scores["fc"]) and loaded.concepts == NAMES
    s = evaluate_descriptions(tmp_path, [NAMES[j] for j in perm], sentence_model=None)
    assert s.metrics["top1"].value == 1.0 and s.metrics["mean_rank"].value == 1.0
    assert s.metrics["top1"].shuffled_neurons.mean < 0.4
    # a later save without scores removes the stale matrix
    Dissection(d.units, d.config, d.meta).save(tmp_path)
    assert not (tmp_path / SCORES_FILE).exists()
    assert Dissection.load(tmp_path).scores == {}


# -- simulation score --------------------------------------------------------------------------


def test_simulation_score_finds_planted_labels_and_beats_nulls():
    g = torch.Generator().manual_seed(0)
    P = torch.rand(600, 10, generator=g)
    planted = [3, 7, 1, 1, 9]
    Q = P[:, planted] ** 2 + 0.05 * torch.randn(600, 5, generator=g)
    Q = torch.cat([Q, torch.zeros(600, 1)], dim=1)  # a dead unit
    names = [f"c{i}" for i in range(10)]
    s = simulation_score(P, Q, names, similarity="cos3", layer="block", null_repeats=300)
    assert [u["label"] for u in s.per_unit[:5]] == [names[j] for j in planted]
    assert s.scored_units == 5 and s.per_unit[5]["active"] is False
    corr = s.metrics["correlation"]
    assert corr.value > 0.9
    assert abs(corr.random_concept.mean) < 0.1
    assert corr.shuffled_neurons.mean < 0.5
    # the planted labels are also the best concepts on the held-out half: oracle = score
    assert s.metrics["oracle_correlation"].value == pytest.approx(corr.value, abs=1e-6)
    assert s.fit_images == 300 and s.heldout_images == 300


def test_simulation_score_random_labels_are_at_chance():
    g = torch.Generator().manual_seed(1)
    P, Q = torch.rand(400, 12, generator=g), torch.randn(400, 8, generator=g)
    s = simulation_score(P, Q, [str(i) for i in range(12)], similarity="cos", null_repeats=200)
    corr = s.metrics["correlation"]
    assert abs(corr.value) < 0.15
    assert abs(corr.value - corr.random_concept.mean) < 3 * corr.random_concept.std + 0.1


def test_simulation_score_bad_input():
    with pytest.raises(ValueError, match="same images"):
        simulation_score(torch.rand(10, 3), torch.rand(9, 2), ["a", "b", "c"])
    with pytest.raises(ValueError, match="3 columns for 2 concepts"):
        simulation_score(torch.rand(10, 3), torch.rand(10, 2), ["a", "b"])
    with pytest.raises(ValueError, match="fit_fraction"):
        simulation_score(torch.rand(10, 3), torch.rand(10, 2), ["a", "b", "c"], fit_fraction=1)


def test_simulation_scores_save(tmp_path):
    P = torch.rand(300, 4)
    s = simulation_score(P, P[:, [0, 2]], list("abcd"), layer="layer1.0", null_repeats=5)
    path = s.save(tmp_path)
    assert path.name == "simulation_scores-layer1.0.json"
    assert json.loads(path.read_text())["metrics"]["correlation"]["value"] > 0.9
    assert (tmp_path / "simulation_scores-layer1.0_units.csv").is_file()


# -- inputs -------------------------------------------------------------------------------------


def test_resolve_class_names(tmp_path):
    assert resolve_class_names("shapes-classes") == resolve_class_names("shapes_classes")
    assert len(resolve_class_names("shapes_classes")) == 10
    # a data set's name means its classes, not the concept vocabulary of the same name
    assert resolve_class_names("shapes") == resolve_class_names("shapes_classes")
    good = tmp_path / "classes.txt"
    good.write_text("cat\ndog\n")
    assert resolve_class_names(good) == ["cat", "dog"]
    bad = tmp_path / "dups.txt"
    bad.write_text("cat\ndog\ncat\n")
    with pytest.raises(ValueError, match="repeats 1 line"):
        resolve_class_names(bad)
    with pytest.raises(ValueError, match="unknown class list 'nope'"):
        resolve_class_names("nope")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        resolve_class_names(tmp_path / "missing.txt")


def test_text_encoder_specs():
    assert text_encoder(None) is None and text_encoder("none") is None
    name, encode = text_encoder(_words)
    assert name == "_words" and encode(["cat"]).norm().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="sentence_model"):
        text_encoder(3)


def test_minilm_sentence_space_is_used_for_real():
    name, encode = text_encoder("minilm")
    v = encode(["a cat", "a kitten", "a truck"])
    assert name == "all-MiniLM-L6-v2" and v.shape == (3, 384)
    assert v[0] @ v[1] > v[0] @ v[2]


# -- CLI ---------------------------------------------------------------------------------------


def test_cli_eval_descriptions(tmp_path, capsys):
    d = _dissection(_scores([1, 1, 1, 2, 1, 1]))
    d.save(tmp_path / "dis")
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(CLASSES))
    code = main(
        ["eval-descriptions", str(tmp_path / "dis"), "--classes", str(classes),
         "--sentence-model", "none", "--null-repeats", "20"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "top-1 accuracy" in out and "0.8333" in out
    data = json.loads((tmp_path / "dis" / "description_scores.json").read_text())
    assert math.isclose(data["metrics"]["top1"]["value"], 5 / 6)
    code = main(
        ["eval-descriptions", str(tmp_path / "dis"), "--classes", "shapes_classes",
         "--sentence-model", "none", "--json"]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 2 and "6 units but 10 class names" in captured.err
    assert main(["eval-descriptions", str(tmp_path / "nowhere"), "--classes", str(classes)]) == 2
    assert "is not a dissection" in capsys.readouterr().err


def test_cli_dissect_keep_scores_then_eval_descriptions(tmp_path, capsys):
    out = tmp_path / "fc"
    code = main(
        ["dissect", "--model", "small_resnet", "--num-classes", "10", "--model-arg",
         "img_size=32", "--layers", "fc", "--probe-arg", "n=60", "--probe-arg",
         "image_size=32", "--concepts", "shapes_classes", "--embedder", "annotations",
         "--no-cache", "--keep-scores", "--out", str(out)]
    )  # fmt: skip
    assert code == 0 and (out / SCORES_FILE).is_file()
    capsys.readouterr()
    code = main(
        ["eval-descriptions", str(out), "--classes", "shapes-classes", "--sentence-model",
         "none", "--null-repeats", "10", "--json"]
    )  # fmt: skip
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["settings"]["ranks"].startswith("exact")
    assert 1 <= data["metrics"]["mean_rank"]["value"] <= 10
    assert data["metrics"]["embedder_cos"]["value"] is None


def test_scores_are_saved_beside_their_dissection_by_default(tmp_path):
    d = _dissection(_scores([1, 1, 1, 2, 1, 1]))
    options = {"sentence_model": None, "null_repeats": 5}
    with pytest.raises(ValueError, match="^out: these figures come from a dissection that was"):
        evaluate_descriptions(d, CLASSES, **options).save()
    d.save(tmp_path / "dis")
    scores = evaluate_descriptions(str(tmp_path / "dis"), CLASSES, **options)
    assert scores.save() == tmp_path / "dis" / "description_scores.json"
    assert "dissection_folder" not in scores.to_dict()
    assert scores.save(tmp_path / "elsewhere").parent == tmp_path / "elsewhere"
