import pytest
import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

from discover import create_model, eval_policy
from discover.data import ShapesWorld
from discover.dissection.layers import list_layers, pool, pool_mask, resolve_layers
from discover.dissection.recording import Recording, dataset_fingerprint, model_fingerprint, record
from discover.errors import InputError


def _vit():
    return create_model(
        "small_vit",
        U=8,
        num_classes=4,
        img_size=16,
        patch_size=4,
        depth=2,
        embed_dim=32,
        num_heads=2,
    )


def _probe(n=12, size=16):
    return TensorDataset(torch.randn(n, 3, size, size), torch.zeros(n, dtype=torch.long))


def test_list_layers_shapes_and_suggestions():
    infos = {info.name: info for info in list_layers(_vit())}
    act = infos["blocks.1.mlp.act"]
    assert act.output_shape == (17, 128) and act.suggested_pooling == "cls" and act.U == 8
    assert infos["head"].output_shape == (4,) and infos["head"].suggested_pooling == "none"
    resnet = {i.name: i for i in list_layers(create_model("small_resnet", U=2, img_size=16))}
    assert (
        resnet["layer2.1"].output_shape == (64, 8, 8)
        and resnet["layer2.1"].suggested_pooling == "avg"
    )


def test_unknown_layer_lists_closest_names():
    with pytest.raises(ValueError, match=r"unknown layer 'blocks.1.mlp.ac'.*blocks.1.mlp.act"):
        resolve_layers(_vit(), ["blocks.1.mlp.ac"])


def test_layers_by_pattern_and_lwta_keyword():
    model = _vit()
    acts = ["blocks.0.mlp.act", "blocks.1.mlp.act"]
    assert list(resolve_layers(model, ["lwta"])) == acts
    assert list(resolve_layers(model, ["blocks.*.mlp.act"])) == acts
    assert list(resolve_layers(model, ["head", "blocks.1.mlp.act", "lwta"])) == [
        "head",
        *acts[::-1],
    ]
    with pytest.raises(ValueError, match="matches no layer"):
        resolve_layers(model, ["blocks.*.nothing"])
    with pytest.raises(ValueError, match="has none"):
        resolve_layers(nn.Sequential(nn.Linear(2, 2)), ["lwta"])
    named = nn.Sequential()
    named.add_module("lwta", nn.ReLU())  # a module called "lwta" is that module
    assert list(resolve_layers(named, ["lwta"])) == ["lwta"]


def test_pooling_choices_and_errors():
    x = torch.arange(24.0).reshape(1, 3, 8)
    assert torch.equal(pool(x, "cls"), x[:, 0])
    assert torch.equal(pool(x, "mean"), x.mean(1))
    assert torch.equal(pool(x, "max"), x[:, 2])
    with pytest.raises(
        ValueError, match=r"pooling 'avg' does not fit layer 'blocks.0' .*3-D: cls/mean/max"
    ):
        pool(x, "avg", "blocks.0")


def test_record_streams_pooled_activations_and_lwta_wins():
    model = _vit()
    probe = _probe()
    rec = record(model, ["blocks.0.mlp.act", "head"], probe, batch_size=5, progress=False)
    assert rec.activations["blocks.0.mlp.act"].shape == (12, 128)
    assert rec.activations["head"].shape == (12, 4) and "head" not in rec.wins
    wins = rec.wins["blocks.0.mlp.act"]
    assert torch.equal(wins.reshape(12, 16, 8).sum(-1), torch.ones(12, 16))  # CLS: 1 per block
    assert rec.pooling == {"blocks.0.mlp.act": "cls", "head": "none"}
    with torch.no_grad(), eval_policy(model, "argmax"):
        logits = model.eval()(probe.tensors[0])
    assert torch.allclose(rec.activations["head"], logits, atol=1e-5)  # argmax policy
    assert rec.meta["policy"] == "argmax" and rec.meta["images"] == 12


def test_hooks_come_off_even_on_errors():
    model = _vit()
    with pytest.raises(ValueError, match="does not fit"):
        record(model, ["blocks.0.mlp.act"], _probe(), pooling="avg", progress=False)
    assert all(not m._forward_hooks for m in model.modules())


def test_cache_hits_and_invalidation(tmp_path):
    model, probe = _vit(), _probe()
    first = record(model, ["head"], probe, cache_dir=tmp_path, progress=False)
    assert first.meta["cache"]["hit"] is False
    again = record(model, ["head"], probe, cache_dir=tmp_path, progress=False)
    assert again.meta["cache"]["hit"] is True
    assert torch.equal(again.activations["head"], first.activations["head"])
    with torch.no_grad():
        model.head.bias.add_(1.0)  # changed weights: a new entry
    changed = record(model, ["head"], probe, cache_dir=tmp_path, progress=False)
    assert changed.meta["cache"]["hit"] is False
    assert torch.allclose(changed.activations["head"], first.activations["head"] + 1, atol=1e-5)
    other_probe = _probe()  # changed content, same size
    assert (
        record(model, ["head"], other_probe, cache_dir=tmp_path, progress=False).meta["cache"][
            "hit"
        ]
        is False
    )
    assert (
        record(model, ["head"], probe, cache_dir=tmp_path, policy="sample", progress=False).meta[
            "cache"
        ]["hit"]
        is False
    )


def test_fingerprints():
    a = create_model("small_resnet", U=2, img_size=16)
    b = create_model("small_resnet", U=2, img_size=16)
    assert model_fingerprint(a) != model_fingerprint(b)
    b.load_state_dict(a.state_dict())
    assert model_fingerprint(a) == model_fingerprint(b)
    world = ShapesWorld(n=10, image_size=16)
    assert dataset_fingerprint(world) == dataset_fingerprint(ShapesWorld(n=10, image_size=16))
    assert dataset_fingerprint(world) != dataset_fingerprint(
        ShapesWorld(n=10, image_size=16, seed=1)
    )
    assert dataset_fingerprint(Subset(world, [1, 2])) != dataset_fingerprint(Subset(world, [1, 3]))

    class Opaque(torch.utils.data.Dataset):
        def __len__(self):
            return 1

    assert dataset_fingerprint(Opaque()) is None


def test_repeated_layer_calls_are_refused():
    act = nn.ReLU()
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), act, nn.Linear(8, 8), act)
    with pytest.raises(ValueError, match="more than once per forward"):
        record(model, ["2"], TensorDataset(torch.randn(4, 3, 2, 2)), progress=False)


def test_recording_roundtrip(tmp_path):
    rec = record(_vit(), ["head"], _probe(), progress=False)
    loaded = Recording.load(rec.save(tmp_path / "r.pt"))
    assert torch.equal(loaded.activations["head"], rec.activations["head"])
    assert loaded.meta == rec.meta


@pytest.mark.parametrize(
    "shape, pooling",
    [
        ((3, 8, 5, 4), "avg"),
        ((3, 8, 5, 4), "max"),
        ((3, 6, 8), "cls"),
        ((3, 6, 8), "mean"),
        ((3, 6, 8), "max"),
        ((3, 8), "none"),
    ],
)
def test_pool_mask_matches_pooling_the_float_mask(shape, pooling):
    mask = torch.rand(shape) > 0.7
    expected = pool(mask.float(), pooling)
    got = pool_mask(mask, pooling)
    assert got.dtype == torch.float32 and torch.allclose(got, expected)
    with pytest.raises(ValueError, match="does not fit"):
        pool_mask(mask, "cls" if mask.dim() == 4 else "avg")


class _InPlaceAfter(nn.Module):
    """Records ``inner``'s output, then changes it in place, as an in-place ReLU would."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(4, 4)

    def forward(self, x):
        y = self.inner(x)
        return y.mul_(0)


def test_recorded_activations_are_copies_not_views():
    model = _InPlaceAfter()
    probe = TensorDataset(torch.randn(6, 4), torch.zeros(6, dtype=torch.long))
    rec = record(model, ["inner"], probe, pooling="none", batch_size=3, progress=False)
    expected = model.inner(probe.tensors[0]).detach()
    assert torch.allclose(rec.activations["inner"], expected)  # not zeroed by the later mul_


# -- spatial maps of the top images (issue 23) -------------------------------------------------
def _full_maps(model, layer, probe, policy="argmax", batch_size=5):
    """Every probe image's output of ``layer`` (the slow way), for checking the top-k; in
    the recording's batches, so that near-tied LWTA winners fall the same way."""
    from discover.dissection.spatial import spatial_maps
    from discover.nn.lwta import LWTA, capture_winners

    module = dict(model.named_modules())[layer]
    outputs, wins = [], []
    handle = module.register_forward_hook(lambda m, i, o: outputs.append(o.detach().clone()))
    try:
        with torch.no_grad(), eval_policy(model.eval(), policy), capture_winners(model):
            for start in range(0, len(probe), batch_size):
                ids = range(start, min(start + batch_size, len(probe)))
                model(torch.stack([probe[i][0] for i in ids]))
                if isinstance(module, LWTA):
                    wins.append(module.last_mask.clone())
    finally:
        handle.remove()
    maps = spatial_maps(torch.cat(outputs), model)
    return maps, (spatial_maps(torch.cat(wins), model) if wins else None)


def test_conv_layer_keeps_the_maps_of_each_units_top_images():
    from discover.dissection.spatial import top_images

    torch.manual_seed(0)
    model = create_model(
        "small_resnet", U=4, num_classes=4, img_size=16, widths=[8, 16], depths=[1, 1]
    )
    probe = _probe(n=23)
    pooling = {"layer2.0.act2": "avg", "fc": "none"}
    rec = record(model, ["layer2.0.act2", "fc"], probe, pooling, batch_size=5, progress=False)
    assert "fc" not in rec.maps  # no spatial extent
    maps = rec.maps["layer2.0.act2"]
    full, wins = _full_maps(model, "layer2.0.act2", probe)
    expected = top_images(rec.activations["layer2.0.act2"], 5)
    assert torch.equal(maps.indices, expected)
    K = full.shape[1]
    assert maps.maps.shape == (K, 5, *full.shape[-2:]) and maps.note.startswith("conv map")
    for k in range(K):
        assert torch.allclose(maps.maps[k], full[expected[k], k], atol=1e-5), (
            k,
            (maps.maps[k] - full[expected[k], k]).abs().max(),
        )
        assert torch.equal(maps.wins[k], wins[expected[k], k])
    # the unit's pooled activation is its map's mean: the maps are the images it was ranked by
    assert torch.allclose(
        maps.maps.mean(dim=(2, 3)), rec.activations["layer2.0.act2"].T.gather(1, expected)
    )


def test_token_layer_maps_are_the_patch_grid_without_the_class_token():
    from discover.dissection.spatial import top_images

    torch.manual_seed(0)
    model = _vit()
    probe = _probe(n=9)
    rec = record(model, ["blocks.1.mlp.act"], probe, "max", batch_size=4, progress=False)
    maps = rec.maps["blocks.1.mlp.act"]
    assert maps.maps.shape == (128, 5, 4, 4) and maps.wins.shape == (128, 5, 4, 4)
    assert "1 class/register token(s) left out" in maps.note
    full, _ = _full_maps(model, "blocks.1.mlp.act", probe, batch_size=4)
    expected = top_images(rec.activations["blocks.1.mlp.act"], 5)
    assert torch.equal(maps.indices, expected)
    assert torch.allclose(maps.maps[7], full[expected[7], 7])
    assert bool((maps.wins.sum(0) >= 0).all())


def test_map_memory_does_not_grow_with_the_probe():
    torch.manual_seed(0)
    model = create_model(
        "small_resnet", U=2, num_classes=4, img_size=16, widths=[8, 16], depths=[1, 1]
    )
    small = record(model, ["layer1.0.act1"], _probe(n=10), "avg", batch_size=10, progress=False)
    large = record(model, ["layer1.0.act1"], _probe(n=300), "avg", batch_size=10, progress=False)
    a, b = small.maps["layer1.0.act1"], large.maps["layer1.0.act1"]
    assert a.maps.shape == b.maps.shape and a.wins.shape == b.wins.shape
    assert int(b.indices.max()) > 10  # the later batches did reach the top
    none = record(model, ["layer1.0.act1"], _probe(n=10), "avg", maps=0, progress=False)
    assert none.maps == {}


def test_record_rows_writes_what_record_returns(tmp_path):
    from discover.dissection.recording import record_rows

    torch.manual_seed(0)
    model = create_model(
        "small_resnet", U=4, num_classes=4, img_size=16, widths=[8, 16], depths=[1, 1]
    )
    probe = _probe(n=23)
    layers, pooling = ["layer2.0.act2", "fc"], {"layer2.0.act2": "avg", "fc": "none"}
    rec = record(model, layers, probe, pooling, batch_size=5, progress=False)
    rows = record_rows(model, layers, probe, tmp_path / "rows", pooling, batch_size=5,
                       progress=False)  # fmt: skip
    assert rows.pooling == rec.pooling
    for layer in layers:
        written = rows.activations[layer]
        assert written.shape == tuple(rec.activations[layer].shape)
        assert len(written.files) == 5  # one file per batch: nothing held back
        assert torch.equal(torch.cat([b for _, b in written.blocks(7)]), rec.activations[layer])
    assert set(rows.wins) == {"layer2.0.act2"}
    assert torch.equal(
        rows.wins["layer2.0.act2"].gather(torch.arange(23)), rec.wins["layer2.0.act2"]
    )
    assert torch.equal(rows.maps["layer2.0.act2"].indices, rec.maps["layer2.0.act2"].indices)
    with pytest.raises(InputError, match="empty"):
        record_rows(model, layers, Subset(probe, []), tmp_path / "x")
