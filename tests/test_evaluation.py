import json

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from _helpers import train_tiny
from discover import create_model
from discover.cli import main
from discover.evaluation.classification import evaluate, evaluate_run


@pytest.fixture(scope="module")
def cvn_run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("runs") / "u4", n=96, U=4).out


def _loader(n=20, classes=3):
    x = torch.randn(n, 3, 16, 16)
    y = torch.randint(0, classes, (n,))
    return DataLoader(TensorDataset(x, y), batch_size=8)


def test_accuracy_against_a_hand_count():
    model = create_model(
        "small_resnet", U=2, num_classes=3, img_size=16, widths=[8, 16], depths=[1, 1]
    )
    loader = _loader()
    result = evaluate(model, loader, policy="argmax")
    with torch.no_grad():
        logits = torch.cat([model.eval()(x) for x, _ in loader])
    labels = torch.cat([y for _, y in loader])
    assert result.top1 == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    assert result.top5 == 1.0  # 3 classes
    assert result.images == 20 and result.samples == 1
    assert all(row.active * 2 == row.units for row in result.sparsity)


def test_sample_policy_averages_passes_and_is_seeded():
    model = create_model(
        "small_resnet", U=4, num_classes=3, img_size=16, widths=[8, 16], depths=[1, 1]
    )
    loader = _loader()
    a = evaluate(model, loader, policy="sample", samples=6, seed=1)
    b = evaluate(model, loader, policy="sample", samples=6, seed=1)
    c = evaluate(model, loader, policy="sample", samples=6, seed=2)
    assert a.to_dict() == b.to_dict() and a.samples == 6
    assert a.loss != c.loss
    # sparsity counted once per batch, not once per pass
    assert a.sparsity[0].units == 20 * 8 * 16 * 16
    assert "logits averaged over 6 passes" in a.summary()


def test_dense_model_reports_active_fraction_at_activation_sites():
    model = create_model(
        "small_resnet", U=1, num_classes=3, img_size=16, widths=[8, 16], depths=[1, 1]
    )
    result = evaluate(model, _loader(), policy="argmax")
    assert {row.kind for row in result.sparsity} == {"dense"}
    assert all(0 < row.fraction < 1 for row in result.sparsity)  # ReLU: data dependent


def test_evaluate_run_and_cli(cvn_run, capsys):
    result = evaluate_run(cvn_run, split="test", policy="argmax", limit=40)
    assert result.images == 40 and 0 <= result.top1 <= result.top5 <= 1
    assert all(row.fraction == 0.25 for row in result.sparsity)
    assert (
        main(["evaluate", str(cvn_run), "--limit", "40", "--policy", "sample", "--samples", "2"])
        == 0
    )
    out = capsys.readouterr().out
    assert "top-1" in out and "layer2.0.act2" in out
    saved = json.loads((cvn_run / "eval-test-best-sample.json").read_text())
    assert saved["samples"] == 2 and saved["meta"]["split"] == "test"


def test_evaluate_run_errors(tmp_path, cvn_run):
    with pytest.raises(FileNotFoundError, match="is not a training run"):
        evaluate_run(tmp_path)
    assert main(["evaluate", str(tmp_path)]) == 2
    with pytest.raises(ValueError, match="unknown eval policy"):
        evaluate_run(cvn_run, policy="mode")


def test_cli_train_writes_a_run(tmp_path, capsys):
    out = tmp_path / "cli-run"
    code = main(
        [
            "train",
            "--model",
            "small_vit",
            "-U",
            "8",
            "--model-arg",
            "img_size=16",
            "--model-arg",
            "patch_size=4",
            "--model-arg",
            "depth=1",
            "--data-arg",
            "n=64",
            "--data-arg",
            "image_size=16",
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--recipe",
            "deit_small",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    assert "trained 1 epoch(s)" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"]["optimizer"] == "adamw" and config["model"]["U"] == 8
    assert main(["train", "--recipe", "resnt", "--out", str(tmp_path / "x")]) == 2
    assert "Did you mean 'resnet'" in capsys.readouterr().err


def test_cli_train_and_evaluate_on_fashion_mnist(tmp_path, capsys):
    out = tmp_path / "fm"
    train_args = (
        "train --dataset fashion-mnist --train-subset 128 --model small_resnet -U 2 "
        "--model-arg img_size=28 --model-arg in_chans=1 --model-arg widths=[8,16] "
        "--model-arg depths=[1,1] --epochs 1 --batch-size 32 --quiet --out"
    )
    assert main([*train_args.split(), str(out)]) == 0
    assert main(["evaluate", str(out), *"--limit 64 --policy sample --samples 3".split()]) == 0
    text = capsys.readouterr().out
    assert "images: 64" in text and "layer2.0.act2" in text and "0.5000" in text


def test_eval_result_saves_into_its_run_by_default(cvn_run, tmp_path):
    result = evaluate_run(cvn_run, split="val", weights="last", limit=8)
    path = result.save()
    assert path == cvn_run / "eval-val-last-argmax.json"
    assert json.loads(path.read_text())["images"] == 8
    assert result.save(tmp_path / "x.json") == tmp_path / "x.json"
    with pytest.raises(ValueError, match="^path: only a result of evaluate_run"):
        evaluate(create_model("small_resnet", U=2, num_classes=3), _loader(4)).save()
