import json

import pytest
import torch
from PIL import Image

import discover
from _helpers import train_tiny
from discover.dissection.labels import label_defaults
from discover.dissection.layers import pool
from discover.dissection.records import DissectConfig, UnitDescription
from discover.dissection.result import Dissection
from discover.explanation import (
    Explanation,
    classifier_input_layer,
    default_layers,
    explain,
    find_classifier,
    print_explanations,
    read_images,
)
from discover.nn.lwta import capture_winners, eval_policy, lwta_layers
from discover.nn.models import activation_sites

RESNET = dict(img_size=16, widths=[8, 16, 32], depths=[1, 1, 1])
VIT = dict(img_size=16, patch_size=8, embed_dim=16, depth=2, num_heads=2)


def _resnet(U, classes=5):
    return discover.create_model("small_resnet", U=U, num_classes=classes, **RESNET).eval()


def _vit(U, classes=5):
    return discover.create_model("small_vit", U=U, num_classes=classes, **VIT).eval()


def _fake_dissection(model, layers, pooling="auto", resolved=None):
    """Labels 'L<layer>-<unit>' with score = unit, pooling recorded as a dissection does."""
    sizes = {}
    for name in layers:
        info = next(i for i in discover.list_layers(model) if i.name == name)
        sizes[name] = info.output_shape[0] if len(info.output_shape) != 2 else info.output_shape[1]
    units = [
        UnitDescription(name, k, f"{name}-{k}", float(k), [(f"{name}-{k}", float(k))])
        for name in layers
        for k in range(sizes[name])
    ]
    meta = {"layers": {n: {"pooling": (resolved or {}).get(n)} for n in layers}}
    return Dissection(units, DissectConfig(list(layers), "test", "test", pooling=pooling), meta)


def _reference_masks(model, x, policy="argmax"):
    with eval_policy(model, policy), capture_winners(model) as layers, torch.no_grad():
        model(x)
        return {name: layer.last_mask.clone() for name, layer in layers.items()}


def test_conv_cvn_winners_come_from_the_mask():
    model = _resnet(U=4)
    x = torch.randn(3, 3, 16, 16)
    explanations = explain(model, x, top=None)
    masks = _reference_masks(model, x)
    assert len(explanations) == 3 and len(masks) == 7  # the small ResNet's LWTA layers
    for i, e in enumerate(explanations):
        assert e.policy == "argmax" and e.model == "small_resnet (U=4)"
        assert [row.layer for row in e.layers] == list(lwta_layers(model))
        for row in e.layers:
            mask = masks[row.layer][i]  # (C, H, W)
            assert row.kind == "lwta" and row.threshold is None
            assert row.active_fraction == pytest.approx(0.25, abs=0)  # exactly 1/U
            won = set(mask.flatten(1).any(dim=1).nonzero().flatten().tolist())
            assert {w.unit for w in row.winners} == won and row.active == len(won)
            assert all(w.block == w.unit // 4 for w in row.winners)
            values = [abs(w.activation) for w in row.winners]
            assert values == sorted(values, reverse=True)


def test_top_zero_lists_no_units_but_still_counts_them():
    model = _resnet(U=4)
    (e,) = explain(model, torch.randn(1, 3, 16, 16), top=0)
    assert all(row.winners == [] and row.active > 0 for row in e.layers)


def test_token_cvn_lists_exactly_one_winner_per_block_including_negative_ones():
    model = _vit(U=4)
    with torch.no_grad():  # every unit of block 0 below zero: its winner is negative
        model.blocks[1].mlp.fc1.bias[:4] -= 100.0
    x = torch.randn(4, 3, 16, 16)
    [e, *_] = explain(model, x, top=None)
    masks = _reference_masks(model, x)
    out = {}
    hook = model.blocks[1].mlp.act.register_forward_hook(lambda m, i, o: out.update(y=o))
    with eval_policy(model, "argmax"), torch.no_grad():
        model(x)
    hook.remove()
    row = e.layer("blocks.1.mlp.act")
    cls_mask = masks["blocks.1.mlp.act"][0, 0]  # image 0, CLS token: (64,)
    assert row.units == 64 and row.active == 16  # K / U winners at the pooled CLS token
    assert sorted(w.unit for w in row.winners) == cls_mask.nonzero().flatten().tolist()
    assert sorted(w.block for w in row.winners) == list(range(16))  # one per block
    for w in row.winners:
        assert w.activation == pytest.approx(float(out["y"][0, 0, w.unit]))
    # a negative winner is listed (an argmax over the signed outputs would pick a loser, 0)
    [first] = [w for w in row.winners if w.block == 0]
    assert first.activation < -50 and cls_mask[first.unit]


def test_sampled_winners_are_seeded_and_recorded():
    model = _vit(U=4)
    x = torch.randn(2, 3, 16, 16)
    a = explain(model, x, policy="sample", seed=3, top=None)
    b = explain(model, x, policy="sample", seed=3, top=None)
    assert a[0].policy == "sample" and a[0].to_dict() == b[0].to_dict()
    for row in a[0].layers:
        assert row.active_fraction == pytest.approx(0.25, abs=0)
    # the winners really are drawn: they follow the seed's draw, not the argmax
    torch.manual_seed(3)
    sampled = _reference_masks(model, x, policy="sample")
    argmax = _reference_masks(model, x, policy="argmax")
    winners = lambda e, m: [{w.unit for w in r.winners} for r in e.layers if r.layer in m]  # noqa: E731
    drawn = [set(sampled[r.layer][0, 0].nonzero().flatten().tolist()) for r in a[0].layers]
    assert winners(a[0], sampled) == drawn
    assert any(not torch.equal(sampled[n], argmax[n]) for n in sampled)


@pytest.mark.parametrize("make,U", [(_resnet, 4), (_resnet, 1), (_vit, 4), (_vit, 1)])
def test_contributions_add_up_to_the_logit(make, U):
    model = make(U)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad(), eval_policy(model, "argmax"):
        logits = model(x)
    for i, e in enumerate(explain(model, x, top=None, threshold=0.0)):
        c = e.contributions
        assert c is not None and c.class_index == int(logits[i].argmax())
        assert c.logit == pytest.approx(float(logits[i, c.class_index]), abs=1e-5)
        total = sum(u.contribution for u in c.units) + c.bias
        assert total == pytest.approx(c.logit, abs=1e-4)
        assert c.explained_share == pytest.approx(1.0, abs=1e-4)
        for u in c.units:
            assert u.contribution == pytest.approx(u.activation * u.weight)
        magnitudes = [abs(u.contribution) for u in c.units]
        assert magnitudes == sorted(magnitudes, reverse=True)


def test_contributions_come_from_the_layer_that_feeds_the_classifier():
    model = _resnet(U=4)
    dissection = _fake_dissection(model, ["layer3.0.act2", "fc"], resolved={"layer3.0.act2": "avg"})
    [e] = explain(model, torch.randn(1, 3, 16, 16), dissection, top=3)
    c = e.contributions
    # the average-pooled last LWTA layer *is* the classifier's input: its labels are used
    assert c.layer == "layer3.0.act2" and len(c.units) == 3
    assert all(u.label == f"layer3.0.act2-{u.unit}" for u in c.units)
    assert 0 < len(c.units) < e.layer("layer3.0.act2").active
    listed = sum(u.contribution for u in c.units)
    assert c.explained_share == pytest.approx(listed / (c.logit - c.bias))
    # a ViT's head reads the final LayerNorm of the CLS token: no dissected layer matches
    [v] = explain(_vit(U=4), torch.randn(1, 3, 16, 16))
    assert v.contributions.layer == "head input"
    assert all(u.label is None for u in v.contributions.units)


def test_labels_and_pooling_come_from_the_dissection():
    model = _resnet(U=4)
    x = torch.randn(2, 3, 16, 16)
    layers = ["layer2.0.act1", "layer3.0.act2"]
    dissection = _fake_dissection(
        model, layers, pooling="max", resolved=dict.fromkeys(layers, "max")
    )
    out = {}
    handle = model.layer2[0].act1.register_forward_hook(lambda m, i, o: out.update(y=o))
    explanations = explain(model, x, dissection, top=None)
    handle.remove()
    row = explanations[1].layer("layer2.0.act1")
    expected = pool(out["y"], "max")[1]
    for w in row.winners:
        assert w.label == f"layer2.0.act1-{w.unit}" and w.score == float(w.unit)
        assert w.activation == pytest.approx(float(expected[w.unit]))
    # LWTA layers the dissection does not cover are still explained, without labels
    assert all(w.label is None for w in explanations[0].layer("act1").winners)


def test_probe_percentiles_come_from_the_dissections_activations(tmp_path):
    from discover.data import ShapesWorld
    from discover.dissection.embedders import AnnotationEmbedder

    model = _resnet(U=4, classes=8)
    probe = ShapesWorld(n=40, image_size=16, split="val")
    model.data_config = discover.data.DataConfig.from_model(model)
    dissection = discover.dissect(
        model, ["layer3.0.act2"], probe, "shapes", AnnotationEmbedder(), progress=False
    )
    dissection.save(tmp_path / "d")
    images = [probe[i][0] for i in range(3)]
    [e] = explain(model, images[:1], tmp_path / "d", top=None)  # Q read back from the folder
    Q = dissection.probe_activations("layer3.0.act2")
    winners = e.layer("layer3.0.act2").winners
    assert winners and all(w.probe_percentile is not None for w in winners)
    for w in winners:
        assert w.probe_percentile == pytest.approx(
            float((Q[:, w.unit] < w.activation).float().mean())
        )
    # the image is one of the probe images: each winner's activation is one of Q's values
    for w in winners[:5]:
        assert float((Q[:, w.unit] - w.activation).abs().min()) < 1e-4
    assert " p" in e.to_text()
    # the annotations' default hides the label of a unit that fires weakly on this image
    weak = label_defaults("annotations").min_percentile
    assert all(w.label is None for w in winners if w.probe_percentile < weak)
    [plain] = explain(model, images[:1], tmp_path / "d", top=None, min_percentile=None)
    # without the dissection's activations (e.g. saved by discover 0.1) there is no percentile
    (tmp_path / "d" / "activations.safetensors").unlink()
    [old] = explain(model, images[:1], tmp_path / "d", top=None)
    assert all(w.probe_percentile is None for w in old.layer("layer3.0.act2").winners)
    assert [w.label for w in old.layer("layer3.0.act2").winners] == [
        w.label for w in plain.layer("layer3.0.act2").winners
    ]


def test_dense_model_lists_units_above_the_threshold_and_counts_them():
    model = _resnet(U=1)
    x = torch.randn(2, 3, 16, 16)
    explanations = explain(model, x, top=4)
    assert [row.layer for row in explanations[0].layers] == activation_sites(model)
    outputs = {}
    handles = [
        dict(model.named_modules())[n].register_forward_hook(
            lambda m, i, o, n=n: outputs.update({n: o})
        )
        for n in activation_sites(model)
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    for i, e in enumerate(explanations):
        assert e.policy is None
        for row in e.layers:
            y = outputs[row.layer][i]
            pooled = y.mean(dim=(1, 2))
            assert row.kind == "dense" and row.threshold == 1e-4 and len(row.winners) == 4
            assert row.active == int((pooled.abs() > 1e-4).sum())
            assert row.active_fraction == pytest.approx(float((y.abs() > 1e-4).float().mean()))
            assert all(abs(w.activation) > 1e-4 and w.block is None for w in row.winners)
    # the ReLU twin keeps roughly half its units active, where a U=4 CVN keeps exactly 1/4
    fractions = [row.active_fraction for row in explanations[0].layers]
    assert all(f > 0.3 for f in fractions)
    high = explain(model, x, threshold=1e6)[0]
    assert all(row.active == 0 and row.winners == [] for row in high.layers)


def test_dense_model_explains_the_layers_the_dissection_covers():
    model = _resnet(U=1)
    dissection = _fake_dissection(model, ["layer3.0.act2", "fc"])
    [e] = explain(model, torch.randn(1, 3, 16, 16), dissection)
    assert [row.layer for row in e.layers] == ["layer3.0.act2"]  # not the classifier
    assert all(w.label == f"layer3.0.act2-{w.unit}" for w in e.layer("layer3.0.act2").winners)
    assert e.contributions.layer == "layer3.0.act2"


def test_to_dict_follows_the_report_schema_and_round_trips():
    model = _resnet(U=4, classes=3)
    [e] = explain(
        model,
        torch.randn(1, 3, 16, 16),
        _fake_dissection(model, ["layer3.0.act2"]),
        class_names=["circle", "square", "star"],
        names=["shapes[7]"],
        targets=[2],
    )
    data = json.loads(json.dumps(e.to_dict()))
    assert set(data) == {
        "image", "model", "prediction", "target", "policy", "layers", "contributions",
        "class_evidence",
    }  # fmt: skip
    assert data["image"] == "shapes[7]" and data["target"] == {"index": 2, "label": "star"}
    assert set(data["prediction"]) == {"index", "label", "probability"}
    assert data["prediction"]["label"] in ("circle", "square", "star")
    layer = data["layers"][0]
    assert set(layer) == {
        "layer", "kind", "units", "active", "active_fraction", "threshold", "winners", "maps"
    }  # fmt: skip
    assert set(layer["winners"][0]) == {
        "unit", "block", "activation", "label", "score", "probe_percentile", "abstained",
        "candidates", "seen", "map",
    }  # fmt: skip
    assert set(data["contributions"]) == {
        "layer", "class_index", "class_label", "logit", "bias", "explained_share", "units"
    }  # fmt: skip
    assert set(data["contributions"]["units"][0]) == {
        "unit", "label", "activation", "weight", "contribution", "abstained", "candidates", "seen",
        "probe_percentile", "map",
    }  # fmt: skip
    assert Explanation.from_dict(data) == e


def test_text_and_rich_tables(capsys):
    model = _resnet(U=4)
    [e] = explain(model, torch.randn(1, 3, 16, 16), _fake_dissection(model, ["act1"]), top=2)
    text = str(e)
    assert "act1 [lwta]: " in text and "units won" in text and "act1-" in text
    assert "contributions of layer3.0.act2" in text
    print_explanations([e])
    out = capsys.readouterr().out
    assert "act1-" in out and "contribution" in out and "predicts" in out


def test_raw_images_go_through_the_eval_transform(tmp_path):
    model = _resnet(U=2)
    model.data_config = discover.data.DataConfig(input_size=(3, 16, 16))
    image = torch.randint(0, 256, (3, 24, 24), dtype=torch.uint8)
    path = tmp_path / "a.png"
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
    from_tensor = explain(model, [image])[0]
    from_file = explain(model, [str(path)])[0]
    assert from_file.image == str(path) and from_tensor.image == "image[0]"
    assert from_file.prediction == from_tensor.prediction
    rgba = tmp_path / "rgba.png"
    Image.fromarray(image.permute(1, 2, 0).numpy()).convert("RGBA").save(rgba)
    assert explain(model, [str(rgba)])[0].prediction == from_tensor.prediction
    assert explain(model, [Image.open(rgba)])[0].prediction == from_tensor.prediction
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        explain(model, [str(path), str(broken)])


def test_read_images_reports_failures_and_keeps_the_rest(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8), "red").save(good)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
    images, names, failures = read_images([good, tmp_path / "bad.jpg", tmp_path / "missing.png"])
    assert names == [str(good)] and images[0].size == (8, 8)
    assert set(failures) == {str(tmp_path / "bad.jpg"), str(tmp_path / "missing.png")}
    assert failures[str(tmp_path / "missing.png")] == "no such file"


def test_bad_inputs_raise_clear_errors():
    model = _resnet(U=4)
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match="3 class names for a model with 5 outputs"):
        explain(model, x, class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match="1 targets for 2 images"):
        explain(model, x, targets=[0])
    with pytest.raises(ValueError, match=r"targets must be class indices in \[0, 5\)"):
        explain(model, x, targets=[0, 5])
    with pytest.raises(ValueError, match="unknown layer 'layer9'"):
        explain(model, x, layers=["layer9"])
    with pytest.raises(ValueError, match="must be .* model inputs"):
        explain(model, torch.randn(16, 16))
    other = _fake_dissection(_resnet(U=4, classes=5), ["fc"])
    other.units = other.units[:3]
    with pytest.raises(ValueError, match="describes 3 units of 'fc', the model's output has 5"):
        explain(model, x, other, layers=["fc"])
    with pytest.raises(ValueError, match="takes 3-channel inputs .* images are \\(1, 16, 16\\)"):
        explain(model, torch.randn(2, 1, 16, 16))
    vit = _vit(U=4)
    with pytest.raises(ValueError, match="cannot run on inputs of shape \\(3, 20, 20\\)"):
        explain(vit, torch.randn(1, 3, 20, 20))
    with pytest.raises(TypeError, match="dissection must be a Dissection, the folder"):
        explain(model, x, {"fc": "labels"})
    with pytest.raises(FileNotFoundError, match="no-dissection-here"):
        explain(model, x, "no-dissection-here")


def test_dissection_given_as_its_folder(tmp_path):
    model = _resnet(U=4)
    x = torch.randn(2, 3, 16, 16)
    dissection = _fake_dissection(model, ["layer3.0.act2"], pooling="max")
    dissection.save(tmp_path / "d")
    from_folder = explain(model, x, tmp_path / "d")
    assert [e.to_dict() for e in from_folder] == [
        e.to_dict() for e in explain(model, x, dissection)
    ]
    assert from_folder[0].layer("layer3.0.act2").winners[0].label.startswith("layer3.0.act2-")


def test_find_classifier():
    assert find_classifier(_resnet(U=2))[0] == "fc"
    assert find_classifier(_vit(U=2))[0] == "head"
    assert find_classifier(torch.nn.Conv2d(3, 3, 1)) is None


# -- discover explain ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from discover.data import ShapesWorld
    from discover.dissection.embedders import AnnotationEmbedder

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("explain")
    run = train_tiny(root / "run", U=4).out
    model = discover.load_run(run).model
    probe = ShapesWorld(n=120, image_size=16, split="val")
    layers = [*lwta_layers(model), "fc"]
    discover.dissect(model, layers, probe, "shapes", AnnotationEmbedder(), progress=False).save(
        root / "dissection"
    )
    images = []
    for i in range(2):
        image, _ = ShapesWorld(n=2, image_size=16, split="test")[i]
        path = root / f"shape{i}.png"
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
        images.append(str(path))
    broken = root / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return {"run": run, "dissection": root / "dissection", "images": images, "broken": broken}


def test_cli_explain_skips_an_unreadable_image_and_explains_the_others(tiny_run, capsys):
    from discover.cli import main

    good, broken = tiny_run["images"], str(tiny_run["broken"])
    argv = ["explain", good[0], broken, good[1], "--run", str(tiny_run["run"])]
    code = main([*argv, "--dissection", str(tiny_run["dissection"]), "--json"])
    captured = capsys.readouterr()
    assert code == 2
    assert f"error: cannot read image {broken}" in captured.err
    assert "1 of 3 image(s) could not be read; explained the other 2" in captured.err
    assert "Traceback" not in captured.err
    data = json.loads(captured.out)
    assert [d["image"] for d in data] == good
    layer = next(row for row in data[0]["layers"] if row["layer"] == "layer2.0.act2")
    assert layer["kind"] == "lwta" and layer["active_fraction"] == 0.25
    # labelled by the dissection, or shown unlabelled with the reason and candidates
    assert all(w["label"] or (w["abstained"] and w["candidates"]) for w in layer["winners"])
    assert data[0]["prediction"]["label"] in discover.load_concepts("shapes_classes").concepts


def test_cli_explain_prints_tables(tiny_run, capsys, monkeypatch, tmp_path):
    import shutil

    from discover.cli import main

    run = tmp_path / "run"
    shutil.copytree(tiny_run["run"], run)
    shutil.copytree(tiny_run["dissection"], run / "dissection")  # the default place
    assert main(["explain", tiny_run["images"][0], "--run", str(run), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "layer2.0.act2 [lwta]" in out and "units won" in out and "predicts" in out


def test_cli_explain_without_a_dissection_says_how_to_make_one(tiny_run, capsys):
    from discover.cli import main

    run = str(tiny_run["run"])
    assert main(["explain", tiny_run["images"][0], "--run", run]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: run ") and "has no dissection" in err
    assert f"discover dissect --run {run} --layers act1" in err and " fc --probe shapes" in err
    assert main(["explain", "x.png", "--run", run, "--dissection", run + "/nowhere"]) == 2
    assert "is not a dissection" in capsys.readouterr().err


def test_default_layers_to_explain_and_to_dissect():
    from discover.explanation import default_layers

    cvn = _resnet(U=4)
    assert default_layers(cvn) == list(lwta_layers(cvn))
    assert default_layers(cvn, classifier=True) == [*lwta_layers(cvn), "fc"]
    dense = _resnet(U=1)
    assert default_layers(dense) == activation_sites(dense)
    assert default_layers(dense, _fake_dissection(dense, ["layer3.0.act2", "fc"])) == [
        "layer3.0.act2"
    ]
    assert default_layers(dense, classifier=True)[-1] == "fc"
    with pytest.raises(ValueError, match="no LWTA layers and no activation modules"):
        default_layers(torch.nn.Linear(2, 2))


def test_explain_run_reads_the_run_and_its_dissection(tiny_run, tmp_path):
    import shutil

    from discover.explanation import explain_run

    good, broken = tiny_run["images"], str(tiny_run["broken"])
    result = explain_run(tiny_run["run"], [good[0], broken], tiny_run["dissection"], top=2)
    assert [e.image for e in result.explanations] == [good[0]] and list(result.failures) == [broken]
    assert result.dissection == tiny_run["dissection"]
    names = discover.load_run(tiny_run["run"]).class_names
    assert result.explanations[0].prediction["label"] in names
    assert all(len(row.winners) <= 2 for row in result.explanations[0].layers)
    run = tmp_path / "run"
    shutil.copytree(tiny_run["run"], run)
    with pytest.raises(FileNotFoundError, match=r"has no dissection .* or pass dissection='DIR'"):
        explain_run(run, good)
    shutil.copytree(tiny_run["dissection"], run / "dissection")  # the default place
    assert len(explain_run(run, good).explanations) == 2
    assert explain_run(run, [broken]).explanations == []


def test_image_conditioned_labels_on_a_hand_made_P():
    """Each listed unit's candidates are ordered by how much this image shows them, measured
    against the probe's average (``ConceptStats``), not by their raw score."""
    from discover.dissection.embedders import AnnotationEmbedder
    from discover.dissection.records import ConceptStats

    model = _resnet(U=4, classes=3)
    layer = "layer3.0.act2"
    dissection = _fake_dissection(model, [layer])
    concepts = ["red", "star", "small"]
    for u in dissection.units:  # every unit: label "red", then "star", then "small"
        u.label, u.top = "red", [(c, 1.0 - 0.1 * j) for j, c in enumerate(concepts)]
    # On the probe "small" is everywhere (mean 0.9), "star" rare (mean 0.1).
    dissection.concept_stats = ConceptStats(
        concepts, torch.tensor([0.5, 0.1, 0.9]), torch.tensor([0.5, 0.3, 0.3])
    )
    images = torch.randint(0, 255, (2, 3, 16, 16), dtype=torch.uint8)
    # image 0: a small star, no red; image 1: red and small
    truth = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 1.0]])
    e0, e1 = explain(
        model,
        images,
        dissection,
        transform=lambda x: x.float() / 255,
        embedder=AnnotationEmbedder(truth, concepts),
        candidates=3,
    )
    for e, first in ((e0, "star"), (e1, "red")):
        rows = e.layer(layer).winners + e.contributions.units
        assert e.contributions.layer == layer and all(w.seen is None for w in e.layers[0].winners)
        assert rows and all(r.label == "red" for r in rows)  # the global label stays
        for r in rows:
            assert r.conditioned_label == first
            assert [c for c, _ in r.seen][-1] == ("red" if first == "star" else "star")
    [w] = [w for w in e0.layer(layer).winners[:1]]
    assert dict(w.seen) == pytest.approx({"star": 3.0, "small": 1 / 3, "red": -1.0})
    assert "sees star (+3.0)" in str(e0)
    again = Explanation.from_dict(json.loads(json.dumps(e0.to_dict())))
    assert again == e0
    # without statistics the raw scores order them ("small" ties "star" at 1, then by name)
    dissection.concept_stats = None
    [raw] = explain(
        model,
        images[:1],
        dissection,
        transform=lambda x: x.float() / 255,
        embedder=AnnotationEmbedder(truth[:1], concepts),
    )
    assert raw.layer(layer).winners[0].seen == [("small", 1.0), ("star", 1.0), ("red", 0.0)]
    with pytest.raises(ValueError, match="raw images"):
        explain(model, torch.randn(1, 3, 16, 16), dissection, embedder="annotations")


def test_units_firing_weakly_on_the_image_are_shown_unlabelled():
    """``min_percentile``: a listed unit below that share of the probe is "weak here"."""
    from discover.data import ShapesWorld
    from discover.dissection.core import dissect
    from discover.explanation import WEAK

    torch.manual_seed(0)
    model = discover.create_model(
        "small_resnet", U=2, num_classes=10, img_size=16, widths=[8, 16], depths=[1, 1]
    ).eval()
    probe = ShapesWorld(n=64, image_size=16, split="val")
    layer = "layer2.0.act2"
    dissection = dissect(
        model, [layer], probe, "shapes", "annotations", abstain_p=None, cache_dir=None,
        progress=False,
    )  # fmt: skip
    images = [ShapesWorld(n=4, image_size=16, split="test")[i][0] for i in range(4)]
    kept = explain(model, images, dissection, min_percentile=None, top=None)
    strict = explain(model, images, dissection, min_percentile=0.75, top=None)
    weak = 0
    for a, b in zip(kept, strict, strict=True):
        rows = list(zip(a.layer(layer).winners + a.contributions.units,
                        b.layer(layer).winners + b.contributions.units, strict=True))  # fmt: skip
        for before, after in rows:
            assert before.probe_percentile == after.probe_percentile is not None
            if before.abstained:  # the dissection's own verdict stays
                assert after.abstained == before.abstained
            elif after.probe_percentile < 0.75:
                weak += 1
                assert after.label is None and after.abstained == WEAK and after.candidates
            else:
                assert after.label == before.label is not None
    assert weak > 0
    assert any("(unlabelled: weak here" in str(e) for e in strict)
    with pytest.raises(ValueError, match="min_percentile"):
        explain(model, images, dissection, min_percentile=1.5)


def test_a_vits_contribution_table_is_labelled_from_its_final_norm():
    """No LWTA layer of a ViT feeds its classifier (the final norm's class token does):
    default_layers(classifier=True) adds the norm, and explain uses a dissection of it for
    the contribution table without listing it as an explained layer."""
    vit = _vit(U=4)
    lwta = list(lwta_layers(vit))
    before = torch.random.get_rng_state()
    assert classifier_input_layer(vit, lwta) == "norm"
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's RNG is untouched
    assert default_layers(vit, classifier=True) == [*lwta, "norm", "head"]
    resnet = _resnet(U=4)
    assert classifier_input_layer(resnet, list(lwta_layers(resnet))) == "layer3.0.act2"
    assert "norm" not in default_layers(resnet, classifier=True)
    x = torch.randn(2, 3, 16, 16)
    [without] = explain(vit, x[:1], _fake_dissection(vit, lwta))
    assert without.contributions.layer == "head input"
    assert all(u.label is None for u in without.contributions.units)
    dissection = _fake_dissection(vit, [*lwta, "norm"], resolved={"norm": "cls"})
    for e in explain(vit, x, dissection, top=None, min_percentile=None):
        assert [row.layer for row in e.layers] == lwta  # the norm is not an explained layer
        assert e.contributions.layer == "norm" and e.contributions.units
        assert all(u.label == f"norm-{u.unit}" for u in e.contributions.units)


def test_control_characters_in_labels_never_reach_the_terminal(capsys):
    """Issue 22: a concept name with an ANSI escape (or a bell) is shown escaped in the text
    and rich renderings of an explanation and in the command line's messages."""
    import io

    from discover.cli import say

    model = _resnet(U=4)
    layers = list(lwta_layers(model))
    dissection = _fake_dissection(model, layers)
    for unit in dissection.units:
        unit.label = "red\x1b[2J\x07"
        unit.top = [(unit.label, unit.score)]
    [e] = explain(model, torch.randn(1, 3, 16, 16), dissection, min_percentile=None)
    assert "red" in e.to_text() and "\x1b" not in e.to_text() and "\x07" not in e.to_text()
    out = io.StringIO()
    print_explanations([e], file=out)
    assert "red" in out.getvalue() and "\x1b" not in out.getvalue()
    say("label:", "red\x1b[2J\x07")
    assert capsys.readouterr().out == "label: red\\x1b[2J\\x07\n"


# -- where units fired (issue 23) ---------------------------------------------------------------
def test_winners_carry_their_maps_and_dense_layers_say_they_have_none():
    model = _resnet(U=4)
    x = torch.randn(2, 3, 16, 16)
    [e, _] = explain(model, x, _fake_dissection(model, ["layer2.0.act2"]), top=None)
    layer = e.layer("layer2.0.act2")
    assert layer.maps == "conv map 8x8"
    for w in layer.winners:
        grid = torch.tensor(w.map)
        assert grid.shape == (8, 8)
        assert abs(float(grid.mean()) - w.activation) < 1e-3  # avg pooling of this very map
    assert all(u.map is not None for u in e.contributions.units)  # the features before pooling
    assert e.class_evidence["method"] == "Grad-CAM"
    assert torch.tensor(e.class_evidence["map"]).shape == (4, 4)  # the last conv map (16 px / 4)


def test_class_evidence_is_grad_cam_of_the_predicted_class():
    """captum's LayerGradCam, checked against Grad-CAM computed by hand: relu of the
    activations weighted by the class logit's mean gradient per channel."""
    torch.manual_seed(0)
    model = _resnet(U=1).eval()
    x = torch.randn(1, 3, 16, 16)
    [e] = explain(model, x)
    out, grad = _evidence_gradient(model, x, e)
    weights = grad.mean(dim=(2, 3), keepdim=True)
    expected = (weights * out).sum(dim=1)[0].clamp_min(0)
    assert torch.allclose(torch.tensor(e.class_evidence["map"]), expected, atol=1e-4)


def _evidence_gradient(model, x, e):
    """The output of the explanation's class-evidence layer and the predicted class logit's
    gradient with respect to it (the hand computation Grad-CAM is checked against)."""
    layer = dict(model.named_modules())[e.class_evidence["layer"]]
    kept = {}
    handle = layer.register_forward_hook(lambda m, i, o: kept.update(out=o))
    try:
        logits = model(x)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(logits[0, e.prediction["index"]], kept["out"])
    return kept["out"].detach(), grad


def test_token_models_have_patch_grid_maps_and_grad_cam_at_the_last_block():
    """Grad-CAM for a ViT at the input of its last block, on the patch grid, checked against
    a hand computation (mean gradient per channel over the patches, ReLU)."""
    torch.manual_seed(0)
    model = _vit(U=1)
    x = torch.randn(1, 3, 16, 16)
    [e] = explain(model, x, top=3)
    row = e.layers[0]
    assert row.maps.startswith("patch grid")
    assert torch.tensor(row.winners[0].map).dim() == 2
    evidence = e.class_evidence
    assert evidence["method"] == "Grad-CAM (patch tokens)" and evidence["layer"].endswith("norm1")
    out, grad = _evidence_gradient(model, x, e)
    patches_g, patches_a = grad[0, 1:], out[0, 1:]  # the class token left out
    weights = patches_g.mean(dim=0)
    side = int(len(patches_a) ** 0.5)
    expected = (patches_a @ weights).clamp_min(0).reshape(side, side)
    assert torch.allclose(torch.tensor(evidence["map"]), expected, atol=1e-4)
    assert "evidence for" in str(e)


def test_a_planted_red_unit_fires_where_the_red_object_is():
    """A hand-built unit that responds only to red pixels: its map, and the class evidence
    of the class it drives, peak in the part of the image holding the red object."""
    from discover.data import ShapesWorld
    from discover.data.transforms import DataConfig

    class RedNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2, 1)
            with torch.no_grad():
                self.conv.weight.copy_(
                    torch.tensor([[1.0, -2.0, -2.0], [0.0, 0.0, 0.0]])[..., None, None]
                )
                self.conv.bias.copy_(torch.tensor([-0.2, -1.0]))
            self.act = torch.nn.ReLU()
            self.pool = torch.nn.AdaptiveAvgPool2d(1)
            self.fc = torch.nn.Linear(2, 2)
            with torch.no_grad():
                self.fc.weight.copy_(torch.eye(2))
                self.fc.bias.zero_()
            self.data_config = DataConfig(input_size=(3, 48, 48), mean=(0.0,), std=(1.0,))

        def forward(self, x):
            return self.fc(self.pool(self.act(self.conv(x))).flatten(1))

    probe = ShapesWorld(n=200, image_size=48, split="val", colours=("red",),
                        background_colours=("white", "blue", "green"), textures=("plain",))  # fmt: skip
    found = 0
    for i in range(len(probe)):
        factors = probe.factors(i)
        if factors.position in ("center",):
            continue
        [e] = explain(RedNet(), [probe[i][0]], layers=["act"], top=2)
        assert e.prediction["label"] == "class 0"
        red = next(w for w in e.layer("act").winners if w.unit == 0)
        assert red.where == factors.position, (i, factors)
        assert _where_of(e.class_evidence["map"]) == factors.position
        found += 1
        if found == 4:
            break
    assert found == 4


def _where_of(grid):
    from discover.explanation.maps import where as _where

    return _where(grid)
