import functools

import pytest
import timm
import torch
import torchvision
from torch import nn

import discover
from discover import (
    LWTA,
    activation_sites,
    capture_winners,
    count_parameters,
    create_model,
    load_checkpoint,
    lwta_layers,
    save_checkpoint,
    set_eval_policy,
    to_cvn,
)
from discover.nn.checkpoints import CheckpointMismatchError
from discover.nn.models import SharedActivation


def _exactly_one_over(U, model, x):
    """Every LWTA layer's winner mask has exactly numel / U winners."""
    with capture_winners(model) as layers:
        model(x)
        counts = [
            (int(layer.last_mask.sum()), layer.last_mask.numel()) for layer in layers.values()
        ]
    return bool(counts) and all(active * U == total for active, total in counts)


@pytest.mark.parametrize("U", [2, 4])
def test_timm_resnet18_every_relu_including_after_residual_add(U):
    dense = timm.create_model("resnet18", pretrained=False)
    model = create_model("resnet18", U=U)
    names = sorted(lwta_layers(model))
    assert names == sorted(n for n, m in dense.named_modules() if isinstance(m, nn.ReLU))
    assert "layer1.0.act2" in names  # timm's ReLU after `x + shortcut`
    assert len(names) == 17
    assert count_parameters(model) == count_parameters(dense)
    x = torch.randn(2, 3, 64, 64)
    assert model.eval()(x).shape == dense.eval()(x).shape == (2, 1000)
    assert _exactly_one_over(U, model, x)


def test_timm_deit_tiny_mlp_activation_only():
    dense = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    model = create_model("deit_tiny_patch16_224", U=24, num_classes=1000)
    assert sorted(lwta_layers(model)) == sorted(f"blocks.{i}.mlp.act" for i in range(12))
    assert count_parameters(model) == count_parameters(dense)
    assert 5.6e6 < count_parameters(model) < 5.8e6
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert model.eval()(x).shape == dense.eval()(x).shape == (1, 1000)
        assert _exactly_one_over(24, model, x)


def test_torchvision_resnet18_shared_relu_is_split_per_site():
    dense = torchvision.models.resnet18()
    model = torchvision.models.resnet18()
    report = to_cvn(model, U=4)
    assert report.call_counting == "fx"
    assert len(report) == 17  # stem + 2 sites in each of 8 blocks
    assert isinstance(model.layer1[0].relu, SharedActivation)
    assert count_parameters(model) == count_parameters(dense)
    calls = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o, n=n: calls.__setitem__(n, calls.get(n, 0) + 1))
        for n, m in lwta_layers(model).items()
    ]
    x = torch.randn(2, 3, 64, 64)
    for _ in range(2):
        out = model(x)
    for h in hooks:
        h.remove()
    assert out.shape == dense(x).shape
    assert set(calls) == set(report.names) and set(calls.values()) == {2}  # once per forward
    # the post-residual site gets the block's output
    assert _exactly_one_over(4, model.eval(), x)


def test_dry_run_conversion_counts_sites_and_checks_widths_before_changing_anything():
    model = torchvision.models.resnet18()
    report = to_cvn(model, U=2, example_input=torch.randn(1, 3, 32, 32))
    assert report.call_counting == "dry-run"
    assert report.replaced[1].width == 64
    untouched = torchvision.models.resnet18()
    with pytest.raises(ValueError, match=r"layer 'relu' has C=64 .*U=3"):
        to_cvn(untouched, U=3, example_input=torch.randn(1, 3, 32, 32))
    assert not lwta_layers(untouched)  # nothing was replaced


def test_U1_is_the_standard_network():
    torch.manual_seed(0)
    model = create_model("resnet18", U=1, num_classes=7)
    torch.manual_seed(0)
    reference = timm.create_model("resnet18", pretrained=False, num_classes=7)
    assert not lwta_layers(model)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.eval()(x), reference.eval()(x))


def test_to_cvn_U1_keeps_outputs():
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 32, 32)
    before = model(x)
    to_cvn(model, U=1)
    assert torch.equal(model(x), before)


def test_include_exclude_patterns_and_report():
    model = torchvision.models.resnet18()
    assert activation_sites(model, include=["layer4.*"]) == ["layer4.0.relu", "layer4.1.relu"]
    report = to_cvn(model, U=2, include=["layer4.*"], exclude=["layer4.1.*"])
    assert report.names == ["layer4.0.relu.0", "layer4.0.relu.1"]
    assert "layer1.0.relu" in report.skipped
    assert "layer4.0.relu.0" in str(report)


def test_nothing_matched_raises_and_lists_activations():
    with pytest.raises(ValueError, match=r"no activation module matched.*layer1.0.relu"):
        to_cvn(torchvision.models.resnet18(), U=2, include=["head.*"])
    cvn = create_model("small_resnet", U=2)
    with pytest.raises(ValueError, match="already has 13 LWTA"):
        to_cvn(cvn, U=2)


def test_user_model_and_registered_activation():
    @discover.register_activation
    class Squash(nn.Module):
        def forward(self, x):
            return x / (1 + x.abs())

    model = nn.Sequential(nn.Linear(4, 16), Squash(), nn.Linear(16, 8), nn.SiLU(), nn.Linear(8, 2))
    report = to_cvn(model, U=4)
    assert report.names == ["1", "3"] and [s.original for s in report.replaced] == [
        "Squash",
        "SiLU",
    ]
    assert model(torch.randn(3, 4)).shape == (3, 2)


def test_timm_act_layer_factory():
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(
        img_size=32,
        patch_size=8,
        embed_dim=48,
        depth=2,
        num_heads=2,
        num_classes=5,
        act_layer=functools.partial(LWTA, U=8),
    )
    assert len(lwta_layers(vit)) == 2
    assert vit(torch.randn(2, 3, 32, 32)).shape == (2, 5)


@pytest.mark.parametrize(
    "name,kwargs,shape",
    [
        ("small_resnet", {}, (2, 3, 64, 64)),
        ("small_resnet", {"in_chans": 1, "img_size": 28}, (2, 1, 28, 28)),
        ("small_vit", {}, (2, 3, 64, 64)),
        ("small_vit", {"in_chans": 1, "img_size": 28, "patch_size": 4}, (2, 1, 28, 28)),
    ],
)
@pytest.mark.parametrize("U", [1, 2, 8])
def test_builtin_small_networks(name, kwargs, shape, U):
    model = create_model(name, U=U, num_classes=10, **kwargs)
    dense = create_model(name, U=1, num_classes=10, **kwargs)
    assert count_parameters(model) == count_parameters(dense)
    x = torch.randn(shape)
    assert model(x).shape == (2, 10)
    if U > 1:
        assert _exactly_one_over(U, model.eval(), x)
    assert model.cvn_config.input_size == shape[1:]


def test_small_resnet_stem_stride_halves_every_feature_map():
    x = torch.randn(2, 1, 28, 28)
    full = create_model("small_resnet", U=2, in_chans=1, widths=[8, 16], depths=[1, 1])
    strided = create_model(
        "small_resnet", U=2, in_chans=1, widths=[8, 16], depths=[1, 1], stem_stride=2
    )
    assert count_parameters(full) == count_parameters(strided)
    assert full.forward_features(x).shape == (2, 16, 14, 14)
    assert strided.forward_features(x).shape == (2, 16, 7, 7)
    with pytest.raises(ValueError, match="stem_stride must be 1 or 2, got 3"):
        create_model("small_resnet", stem_stride=3)


def test_small_vit_places_lwta_in_the_mlp_only():
    model = create_model("small_vit", U=16)
    assert sorted(lwta_layers(model)) == [f"blocks.{i}.mlp.act" for i in range(6)]


def test_unknown_model_name_suggests_close_names():
    with pytest.raises(ValueError, match=r"unknown model name 'resnet19'.*resnet18"):
        create_model("resnet19")
    with pytest.raises(ValueError, match=r"small_vit"):
        create_model("smal_vit")
    with pytest.raises(ValueError, match=r"torchvision:resnet18"):
        create_model("torchvision:resnet181")


def test_torchvision_prefix_builds_a_converted_model():
    model = create_model("torchvision:resnet18", U=2, num_classes=3)
    assert len(lwta_layers(model)) == 17
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


@pytest.mark.parametrize("U", [0, -1])
def test_create_model_rejects_bad_U(U):
    with pytest.raises(ValueError, match="U must be an integer >= 1"):
        create_model("small_resnet", U=U)


def test_create_model_rejects_indivisible_U_naming_the_layer():
    with pytest.raises(ValueError, match=r"layer 'blocks.0.mlp.act' has K=384.*U=5"):
        create_model("small_vit", U=5)


def test_checkpoint_roundtrip(tmp_path):
    model = create_model("small_resnet", U=4, num_classes=5)
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    loaded = create_model("small_resnet", U=4, num_classes=5, checkpoint=path)
    set_eval_policy(model, "argmax")
    set_eval_policy(loaded, "argmax")
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.eval()(x), loaded.eval()(x))


def test_checkpoint_path_with_home_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    model = create_model("small_resnet", U=4, num_classes=5)
    save_checkpoint(model, tmp_path / "m.safetensors")
    loaded = create_model("small_resnet", U=4, num_classes=5, checkpoint="~/m.safetensors")
    assert torch.equal(loaded.fc.weight, model.fc.weight)


def test_checkpoint_mismatches_are_explained(tmp_path):
    path = save_checkpoint(
        create_model("small_resnet", U=4, num_classes=5), tmp_path / "m.safetensors"
    )
    with pytest.raises(CheckpointMismatchError, match=r"U: checkpoint has 4, model has 2"):
        create_model("small_resnet", U=2, num_classes=5, checkpoint=path)
    with pytest.raises(
        CheckpointMismatchError, match=r"fc.weight: checkpoint \(5, 128\) vs model \(3, 128\)"
    ):
        create_model("small_resnet", U=4, num_classes=3, checkpoint=path)
    with pytest.raises(
        CheckpointMismatchError, match=r"(?s)name: checkpoint has 'small_resnet'.*missing"
    ):
        create_model("small_vit", U=4, num_classes=5, checkpoint=path)
    with pytest.raises(FileNotFoundError, match="checkpoint file not found"):
        create_model("small_resnet", checkpoint=tmp_path / "nope.pt")


def test_plain_torch_checkpoints_with_wrappers(tmp_path):
    source = torchvision.models.resnet18(num_classes=4)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ddp.pth")
    model = create_model(
        "torchvision:resnet18", U=2, num_classes=4, checkpoint=tmp_path / "ddp.pth"
    )
    assert torch.equal(model.fc.weight, source.fc.weight)
    torch.save({"state_dict": {"fc.weight": torch.zeros(4, 512)}}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointMismatchError, match="key\\(s\\) missing from the checkpoint"):
        load_checkpoint(
            create_model("torchvision:resnet18", num_classes=4), tmp_path / "partial.pth"
        )
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="could not read checkpoint"):
        load_checkpoint(create_model("torchvision:resnet18"), tmp_path / "junk.pt")


def test_list_models():
    assert discover.list_models("small_*", include_timm=False) == ["small_resnet", "small_vit"]
    assert "deit_tiny_patch16_224" in discover.list_models("deit_tiny*")


def test_register_model_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        discover.register_model("small_resnet")(lambda **kw: nn.Identity())


def test_non_finite_weights_are_refused_where_they_are_loaded(tmp_path):
    """Issue 22: a NaN weight used to dissect into identical confident labels and explain
    into "(nan %)". Loading names the tensors; allow_nonfinite=True loads with a warning."""
    from discover.nn.checkpoints import NonFiniteWeightsError

    model = create_model("small_resnet", U=4, num_classes=5)
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")
        model.fc.bias[1] = float("inf")
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    with pytest.raises(
        NonFiniteWeightsError, match=r"2 tensor\(s\): fc\.bias \(1 of 5\), fc\.weight \(1 of \d+\)"
    ):
        create_model("small_resnet", U=4, num_classes=5, checkpoint=path)
    fresh = create_model("small_resnet", U=4, num_classes=5)
    with pytest.warns(UserWarning, match="non-finite weights"):
        load_checkpoint(fresh, path, allow_nonfinite=True)
    assert torch.isnan(fresh.fc.weight[0, 0])
