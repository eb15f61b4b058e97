"""ONNX export: deterministic winners, checked with ONNX Runtime against PyTorch."""

from __future__ import annotations

import json

import pytest
import torch

from _helpers import train_tiny
from discover import create_model, set_eval_policy
from discover.cli import main
from discover.errors import InputError
from discover.nn.export import export_onnx, run_onnx
from discover.training.export import export_run

MODELS = {
    "resnet": ("small_resnet", {"img_size": 16, "widths": [8, 16], "depths": [1, 1]}),
    "vit": ("small_vit", {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2,
                          "num_heads": 2}),
}  # fmt: skip


@pytest.mark.parametrize("family", list(MODELS))
@pytest.mark.parametrize("U", [1, 4])
def test_exported_model_computes_the_argmax_logits_for_any_batch(tmp_path, family, U):
    name, kwargs = MODELS[family]
    torch.manual_seed(0)
    model = create_model(name, U=U, num_classes=10, **kwargs)
    path = export_onnx(model, tmp_path / "model.onnx")
    x = torch.rand(7, 3, 16, 16)  # another batch size than the export's example
    set_eval_policy(model.eval(), "argmax")
    with torch.no_grad():
        expected = model(x)
    got = run_onnx(path, x)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    assert model.training is False


def test_sampled_winners_are_refused_in_one_line(tmp_path):
    model = create_model("small_resnet", U=4, num_classes=10, **MODELS["resnet"][1])
    with pytest.raises(InputError, match="sampled winners cannot be exported") as error:
        export_onnx(model, tmp_path / "x.onnx", policy="sample")
    assert "\n" not in str(error.value) and not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
def test_export_run_matches_pytorch_on_every_test_image(tmp_path, capsys):
    train_tiny(tmp_path / "run", U=4)
    result = export_run(tmp_path / "run", tmp_path / "cvn.onnx")
    assert result.images == result.same_top1 > 0 and result.max_logit_difference <= 1e-4
    saved = json.loads((tmp_path / "cvn.onnx.json").read_text())
    assert saved["same_top1"] == result.images and saved["split"] == "test"
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "cli.onnx")]) == 0
    assert "agree on the top-1 of" in capsys.readouterr().out
    code = main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "s.onnx"),
                 "--policy", "sample"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: export: policy 'sample': sampled winners")
