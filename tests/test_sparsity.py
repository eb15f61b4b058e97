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


def test_one_over_u_check_is_exact_and_names_the_layers_that_differ():
    from discover.evaluation.sparsity import LayerSparsity, check_one_over_u

    rows = [
        LayerSparsity("a", "lwta", 4, units=400, active=100),
        LayerSparsity("b", "lwta", 4, units=400, active=101),
        LayerSparsity("c", "dense", None, units=10, active=7),  # ignored
    ]
    check = check_one_over_u(rows)
    assert (check.layers, check.exact, check.mismatched, check.U) == (2, False, ("b",), 4)
    assert str(check) == "2 LWTA layers; every active fraction == 1/U = 0.2500: NO"
    assert check_one_over_u(rows[:1]).exact and check_one_over_u(rows[2:]).layers == 0
    assert check_one_over_u(rows[2:]).exact  # nothing to check is not a failure
    mixed = [rows[0], LayerSparsity("d", "lwta", 2, units=10, active=5)]
    assert check_one_over_u(mixed).U is None and "1/U: yes" in str(check_one_over_u(mixed))


def test_photo_sparsity_builds_a_seeded_model_or_measures_the_given_one():
    from discover.evaluation.sparsity import photo_sparsity

    first = photo_sparsity("small_resnet", U=4, num_classes=3, seed=1)
    again = photo_sparsity("small_resnet", U=4, num_classes=3, seed=1)
    assert first.check.exact and first.check.U == 4 and first.check.layers == 13
    assert len(first.photos) == 5 and first.policy == "sample"
    assert [r.to_dict() for r in first.rows] == [r.to_dict() for r in again.rows]
    assert first.summary().endswith("every active fraction == 1/U = 0.2500: yes")
    model = create_model("small_resnet", U=2, num_classes=3, eval_policy="sample").train()
    result = photo_sparsity(model, policy="argmax")
    assert result.check.exact and result.policy == "argmax" and result.model == "small_resnet"
    assert model.training  # the caller's mode and policy are restored
    assert all(m.eval_policy == "sample" for m in model.modules() if isinstance(m, LWTA))
    dense = photo_sparsity("small_resnet", num_classes=3)
    assert dense.check.layers == 0 and "LWTA layers" not in dense.summary()
    with pytest.raises(ValueError, match="need a model name"):
        photo_sparsity(model, U=4)
