import pytest
import torch
from torch import nn

from discover import LWTA, create_model
from discover.evaluation.sparsity import SparsityMeter, format_sparsity, measure_sparsity


@pytest.mark.parametrize("policy", ["sample", "argmax"])
def test_lwta_model_measures_exactly_one_over_U(policy):
    model = create_model("small_resnet", U=4, num_classes=3).eval()
    for layer in model.modules():
        if isinstance(layer, LWTA):
            layer.eval_policy = policy
    rows = measure_sparsity(model, torch.randn(2, 3, 16, 16), torch.randn(3, 3, 16, 16))
    assert len(rows) == 13
    for row in rows:
        assert row.kind == "lwta" and row.active * 4 == row.units
        assert row.fraction == row.expected == 0.25
    assert rows[0].units == (2 + 3) * 32 * 16 * 16
    assert "layer3.1.act2" in format_sparsity(rows)


def test_dense_model_measures_nonzero_fraction_at_activation_sites():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.GELU())
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(torch.tensor([1.0, -1.0, 1.0, -1.0, 0.0, 2.0]))
    rows = measure_sparsity(model, torch.randn(5, 4))
    assert [r.layer for r in rows] == ["1", "3"]
    assert rows[0].kind == "dense" and rows[0].fraction == pytest.approx(3 / 6)
    assert rows[0].expected is None


def test_meter_removes_hooks_even_on_error():
    model = create_model("small_vit", U=8, num_classes=2).eval()
    with pytest.raises(RuntimeError):
        with SparsityMeter(model):
            raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in model.modules())
    assert all(not m.capture for m in model.modules() if isinstance(m, LWTA))
