"""Sparse autoencoders on recorded activations: the TopK SAE, training (save, reload,
resume), replacement accuracy, dissecting and explaining its latents, the CLI."""

import json

import pytest
import torch
from torch.utils.data import DataLoader

from _helpers import train_tiny
from discover import explain, load_run
from discover.data import ShapesWorld
from discover.data.transforms import eval_transform
from discover.dissection.core import dissect
from discover.dissection.embedders import AnnotationEmbedder
from discover.dissection.recording import model_fingerprint
from discover.dissection.result import Dissection
from discover.dissection.sae import (
    SAE,
    SAEConfig,
    record_latents,
    sae_replacement_accuracy,
    train_sae,
)

LAYER = "layer2.0.act2"  # 16 channels on an 8 x 8 map
WIDTH = 16
SMALL = {"epochs": 6, "batch_size": 64, "lr": 3e-3, "progress": False}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("sae") / "run", U=2).out


@pytest.fixture(scope="module")
def model(run):
    return load_run(run).model.eval()


@pytest.fixture(scope="module")
def probe():
    return ShapesWorld(n=48, image_size=16, split="train")


@pytest.fixture(scope="module")
def trained(model, probe, tmp_path_factory):
    out = tmp_path_factory.mktemp("sae") / "l2"
    return train_sae(model, LAYER, probe, k=4, expansion=4, out=out, **SMALL), out


def test_topk_sae_keeps_k_latents_and_unit_norm_decoder():
    sae = SAE(SAEConfig(layer="x", width=WIDTH, k=3, expansion=4, pooling="avg"), seed=1)
    x = torch.randn(32, WIDTH)
    z = sae.encode(x)
    assert z.shape == (32, 64) and (z >= 0).all()
    assert ((z > 0).sum(1) == 3).all()
    assert torch.allclose(sae.W_dec.norm(dim=0), torch.ones(64))
    assert sae.decode(z).shape == x.shape
    conv = torch.randn(2, WIDTH, 3, 5)
    latent_map = sae.latent_map(conv)
    assert latent_map.shape == (2, 64, 3, 5)
    assert torch.allclose(latent_map[1, :, 2, 4], sae.encode(conv[1, :, 2, 4]))
    assert sae.reconstruct(conv).shape == conv.shape
    assert torch.allclose(sae.image_latents(conv), latent_map.mean(dim=(2, 3)))
    assert sae.latent_map(torch.randn(2, 7, WIDTH)).shape == (2, 7, 64)
    with pytest.raises(ValueError, match="width 16"):
        sae.encode(torch.randn(4, 15))
    with pytest.raises(ValueError, match="k=100 is larger"):
        SAEConfig(layer="x", width=4, k=100, expansion=2, pooling="none")


def test_train_save_reload_metrics(trained, model):
    sae, out = trained
    assert not model.training  # recording through the tap left the model's mode alone
    assert sorted(p.name for p in out.iterdir()) == [
        "sae.json",
        "sae.safetensors",
        "train_state.pt",
    ]
    saved = json.loads((out / "sae.json").read_text())
    assert saved["layer"] == LAYER and saved["k"] == 4 and saved["expansion"] == 4
    assert saved["width"] == WIDTH and saved["pooling"] == "avg" and saved["sites"] == "positions"
    assert saved["model_sha256"] == model_fingerprint(model)
    assert saved["training"]["rows_train"] + saved["training"]["rows_heldout"] == 48 * 16
    history = saved["metrics"]["history"]
    assert len(history) == 6 and history[-1]["fve"] > history[0]["fve"]  # training helps
    assert saved["metrics"]["fve"] > 0.5 and saved["metrics"]["l0"] == pytest.approx(4)
    again = SAE.load(out)
    x = torch.randn(64, WIDTH).relu()
    assert torch.equal(again.encode(x), sae.encode(x)) and torch.equal(again(x), sae(x))
    assert ((again.encode(x) > 0).sum(1) == 4).all()
    assert torch.allclose(again.W_dec.norm(dim=0), torch.ones(64), atol=1e-5)
    with pytest.raises(FileNotFoundError, match="no SAE in"):
        SAE.load(out / "missing")


def test_resume_continues_exactly(model, probe, tmp_path):
    straight = train_sae(model, LAYER, probe, k=4, expansion=2, **{**SMALL, "epochs": 3})
    out = tmp_path / "s"
    train_sae(model, LAYER, probe, k=4, expansion=2, out=out, **{**SMALL, "epochs": 1})
    with pytest.raises(ValueError, match="already holds an SAE"):
        train_sae(model, LAYER, probe, k=4, expansion=2, out=out, **SMALL)
    with pytest.raises(ValueError, match="k: saved 4, now 3"):
        train_sae(model, LAYER, probe, k=3, expansion=2, out=out, resume=True, **SMALL)
    resumed = train_sae(
        model, LAYER, probe, k=4, expansion=2, out=out, resume=True, **{**SMALL, "epochs": 3}
    )
    assert [h["epoch"] for h in resumed.config.metrics["history"]] == [1, 2, 3]
    for name, tensor in straight.state_dict().items():
        assert torch.allclose(resumed.state_dict()[name], tensor, atol=1e-6), name
    with pytest.raises(FileNotFoundError, match="no training state"):
        train_sae(model, LAYER, probe, k=4, expansion=2, out=tmp_path / "x", resume=True)


def test_replacement_accuracy_of_an_exact_sae(model):
    # z = relu([x; -x]) with all latents kept, decoder [I, -I]: reconstructs x exactly
    sae = SAE(SAEConfig(layer=LAYER, width=WIDTH, k=2 * WIDTH, expansion=2, pooling="avg"))
    with torch.no_grad():
        eye = torch.eye(WIDTH)
        sae.W_enc.copy_(torch.cat([eye, -eye]))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=1))
    val = ShapesWorld(n=24, image_size=16, split="val", transform=eval_transform(model))
    result = sae_replacement_accuracy(model, LAYER, sae, DataLoader(val, batch_size=12))
    assert result.images == 24 and result.agreement == 1.0
    assert result.accuracy == result.original_accuracy
    assert result.fve == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="not layer 'layer1.0.act2'"):
        sae_replacement_accuracy(model, "layer1.0.act2", sae, DataLoader(val))


def test_trained_sae_replacement_is_close(trained, model):
    sae, _ = trained
    val = ShapesWorld(n=24, image_size=16, split="val", transform=eval_transform(model))
    result = sae_replacement_accuracy(model, LAYER, sae, DataLoader(val, batch_size=24))
    assert 0.5 < result.fve < 1 and 0 <= result.accuracy <= 1


def test_dissect_and_explain_sae_latents(trained, model, tmp_path):
    sae, out = trained
    probe = ShapesWorld(n=40, image_size=16, split="val")
    quiet = {"cache_dir": None, "progress": False}
    with pytest.raises(ValueError, match="dissect that layer alone"):
        dissect(model, [LAYER, "fc"], probe, "shapes", AnnotationEmbedder(), sae=out, **quiet)
    result = dissect(model, [LAYER], probe, "shapes", AnnotationEmbedder(), sae=out, **quiet)
    rows = result.layer(LAYER)
    assert len(rows) == 4 * WIDTH and rows[5].block is None and rows[5].label
    assert result.probe_activations(LAYER).shape == (40, 4 * WIDTH)
    assert result.meta["sae"]["folder"] == str(out.resolve())
    assert result.meta["layers"][LAYER]["U"] == 2  # the layer's own U: check_model still holds
    result.save(tmp_path / "d")
    loaded = Dissection.load(tmp_path / "d")
    assert loaded.check_model(model) == []
    # the latents are the SAE's on every position, pooled like the layer (avg)
    view = ShapesWorld(n=40, image_size=16, split="val", transform=eval_transform(model))
    recorded = record_latents(model, [LAYER], view, sae=sae, progress=False)
    assert torch.allclose(recorded.activations[LAYER], result.activations[LAYER])

    images = torch.stack([view[i][0] for i in range(2)])
    [e, _] = explain(model, images, loaded)  # finds the SAE through the dissection
    row = e.layer(LAYER)
    assert row.kind == "sae" and row.units == 4 * WIDTH and row.threshold is None
    assert row.active_fraction == pytest.approx(4 / (4 * WIDTH))
    assert row.winners and all(w.block is None for w in row.winners)
    assert all(w.label or (w.abstained and w.candidates) for w in row.winners)
    assert "SAE latents active" in e.to_text()

    # the report describes the latents as an SAE's, not as the layer's LWTA units
    from discover.report import ReportSection, write_report

    write_report(tmp_path / "r", [ReportSection("sae", None, loaded, probe)], progress=False)
    (page,) = (tmp_path / "r").glob("*/*.html")
    text = page.read_text()
    assert f"{4 * WIDTH} latents of a TopK sparse autoencoder" in text
    assert "k = 4 active per position" in text and "LWTA with U" not in text


def test_cli_sae_train_resume_and_dissect(run, tmp_path, capsys):
    from discover.cli import main

    probe = ["--probe-arg", "n=32", "--probe-arg", "image_size=16"]
    out = tmp_path / "sae"
    train = ["sae", "train", "--run", str(run), "--layer", LAYER, "--k", "2", "--expansion", "2"]
    assert main([*train, *probe, "--epochs", "1", "--out", str(out)]) == 0, capsys.readouterr()
    assert "SAE of layer2.0.act2: 32 latents" in capsys.readouterr().out
    assert main([*train, *probe, "--epochs", "2", "--out", str(out), "--resume"]) == 0
    assert len(SAE.load(out).config.metrics["history"]) == 2
    code = main(
        ["sae", "dissect", "--run", str(run), "--sae", str(out), *probe, "--concepts", "shapes"]
        + ["--embedder", "annotations", "--no-cache", "--out", str(tmp_path / "d")]
    )
    assert code == 0, capsys.readouterr().err
    assert len(Dissection.load(tmp_path / "d").labels(LAYER)) == 32
    # the same latents through `discover dissect --sae`, judged by their own function
    code = main(
        ["dissect", "--run", str(run), "--layers", LAYER, "--sae", str(out), *probe]
        + ["--concepts", "shapes", "--embedder", "annotations", "--no-cache"]
        + ["--null-repeats", "2", "--significance-similarity", "same"]
        + ["--out", str(tmp_path / "d2")]
    )
    assert code == 0, capsys.readouterr().err
    first, second = Dissection.load(tmp_path / "d"), Dissection.load(tmp_path / "d2")
    assert second.config.significance_similarity == second.config.similarity
    assert second.labels(LAYER) == first.labels(LAYER)
    assert all(u.z is not None for u in second.layer(LAYER))
    from PIL import Image

    Image.new("RGB", (16, 16), "red").save(tmp_path / "red.png")
    capsys.readouterr()
    explained = ["explain", str(tmp_path / "red.png"), "--run", str(run), "--json"]
    assert main([*explained, "--dissection", str(tmp_path / "d")]) == 0
    [e] = json.loads(capsys.readouterr().out)
    [row] = [r for r in e["layers"] if r["layer"] == LAYER]
    assert row["kind"] == "sae" and row["units"] == 32
    assert row["winners"][0]["label"] or row["winners"][0]["candidates"]
    bad = ["sae", "train", "--run", str(run), "--layer", "nope", "--k", "2", "--expansion", "2"]
    assert main([*bad, *probe, "--out", str(tmp_path / "bad")]) == 2
    assert "unknown layer 'nope'" in capsys.readouterr().err


def test_pooled_sae_encodes_the_dissections_q(model, probe, tmp_path):
    from discover.dissection.recording import record

    sae = train_sae(model, LAYER, probe, k=3, expansion=2, sites="pooled", **SMALL)
    assert sae.config.sites == "pooled" and sae.config.training["rows_train"] < 48
    view = ShapesWorld(n=20, image_size=16, split="val", transform=eval_transform(model))
    Q = record(model, [LAYER], view, "avg", progress=False).activations[LAYER]
    latents = record_latents(model, [LAYER], view, sae=sae, progress=False)
    assert torch.allclose(latents.activations[LAYER], sae.encode(Q), atol=1e-6)
    with pytest.raises(ValueError, match="trained for pooling 'avg', got pooling 'max'"):
        record_latents(model, [LAYER], view, "max", sae=sae, progress=False)
    sae.save(tmp_path / "p")
    raw = ShapesWorld(n=20, image_size=16, split="val")
    cached = {"cache_dir": tmp_path / "cache", "progress": False}
    result = dissect(model, [LAYER], raw, "shapes", AnnotationEmbedder(), sae=sae, **cached)
    again = dissect(model, [LAYER], raw, "shapes", AnnotationEmbedder(), sae=sae, **cached)
    assert again.meta["recording"]["cache"]["hit"] and not result.meta["recording"]["cache"]["hit"]
    assert torch.equal(again.activations[LAYER], result.activations[LAYER])
    other = SAE.load(tmp_path / "p")  # the same weights, another pooling: never the cached Q
    other.config.pooling = "max"
    third = dissect(model, [LAYER], raw, "shapes", AnnotationEmbedder(), sae=other, **cached)
    assert not third.meta["recording"]["cache"]["hit"]
    assert not torch.equal(third.activations[LAYER], result.activations[LAYER])
    (tmp_path / "p" / "sae.json").unlink()  # explain finds the SAE through the dissection
    with pytest.raises(FileNotFoundError, match="pass sae="):
        explain(model, view[0][0], result)
    [e] = explain(model, view[0][0], result, sae=sae)
    assert e.layer(LAYER).kind == "sae" and e.layer(LAYER).active <= 3


def test_bad_arguments_name_the_parameter(model, probe):
    for kwargs, message in (
        ({"k": 0}, "k must be an integer >= 1"),
        ({"expansion": 1.5}, "expansion must be an integer"),
        ({"sites": "pixels"}, "sites must be one of"),
        ({"val_fraction": 1.0}, "val_fraction must be in"),
        ({"layer": "layer9"}, "unknown layer 'layer9'"),
        ({"pooling": "cls"}, "pooling 'cls' does not fit layer 'layer2.0.act2'"),
    ):
        args = {"layer": LAYER, "k": 2, "expansion": 2, **kwargs}
        with pytest.raises(ValueError, match=message):
            train_sae(model, args.pop("layer"), probe, **args, **SMALL)


def test_docs_sae_example_runs(tmp_path, monkeypatch, capsys):
    from _helpers import doc_python_block, train_tiny_shapes

    monkeypatch.chdir(tmp_path)
    train_tiny_shapes("runs/shapes-u8", U=2, widths=[8, 16, 32], depths=[1, 1, 2])
    code = doc_python_block("sae.md", "discover.train_sae(")
    code = code.replace("n=2000", "n=40").replace("sae=sae)", "sae=sae, progress=False)")
    exec(compile(code, "sae.md[sae]", "exec"), {})
    assert capsys.readouterr().out.split("\n")[-2] == str(8 * 32)
    assert (tmp_path / "runs/shapes-u8/sae/layer3/sae.json").is_file()
