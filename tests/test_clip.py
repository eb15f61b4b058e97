"""The Shapes world's small CLIP: captions, loss, training, caching, and the real loading path."""

import json
import random

import pytest
import torch

from discover.data import ShapesWorld
from discover.data.shapes import FACTORS
from discover.training.clip import (
    ShapesCLIP,
    ShapesCLIPConfig,
    clip_key,
    shapes_caption,
    train_shapes_clip,
)

TINY = {"images": 64, "batch_size": 32, "epochs": 2, "eval_images": 20}
NAMES = ["star", "red", "blue background", "striped background", "small", "top left"]


def test_captions_name_the_factors_they_claim():
    config = ShapesCLIPConfig(full_captions=0.3)
    rng = random.Random(0)
    for _ in range(200):
        text, factors = shapes_caption(NAMES, rng, config)
        assert factors == sorted(set(factors)) and 1 <= len(factors) <= len(FACTORS)
        for f in factors:  # every named factor's word is in the caption
            assert NAMES[f].removesuffix(" background").split()[0] in text
        if len(factors) < len(FACTORS):
            assert text.split(", ") and all(part in NAMES for part in text.split(", "))
    only_shape = ShapesCLIPConfig(full_captions=0.0, factor_weights=(1, 0, 0, 0, 0, 0))
    assert shapes_caption(NAMES, random.Random(1), only_shape) == ("star", [0])


def test_config_is_checked_and_keyed_by_content():
    with pytest.raises(ValueError, match="factor_weights"):
        ShapesCLIPConfig(factor_weights=(1.0, 2.0))
    with pytest.raises(ValueError, match="images"):
        ShapesCLIPConfig(images=8, batch_size=32)
    assert clip_key(ShapesCLIPConfig()) == clip_key(ShapesCLIPConfig())
    assert clip_key(ShapesCLIPConfig()) != clip_key(ShapesCLIPConfig(seed=1))


@pytest.mark.slow
def test_a_tiny_clip_trains_caches_and_dissects_through_open_clip(tmp_path):
    from discover.dissection.core import dissect
    from discover.dissection.embedders import OpenCLIPEmbedder, build_embedder
    from discover.nn.models import create_model

    config = ShapesCLIPConfig(**TINY)
    clip = train_shapes_clip(config, cache_dir=tmp_path, progress=False)
    assert clip.folder == tmp_path / "shapes_clip" / clip_key(config)
    assert clip.weights.is_file() and (clip.folder / "curve.png").is_file()
    assert [h["epoch"] for h in clip.history] == [1, 2]
    assert set(clip.zero_shot) == set(FACTORS) and clip.chance["shape"] == pytest.approx(0.1)
    saved = json.loads((clip.folder / "clip.json").read_text())
    assert saved["key"] == clip_key(config) and saved["config"]["epochs"] == 2
    # a second call finds it in the cache instead of training again
    mtime = clip.weights.stat().st_mtime_ns
    again = train_shapes_clip(config, cache_dir=tmp_path, progress=False)
    assert again.zero_shot == clip.zero_shot and clip.weights.stat().st_mtime_ns == mtime
    assert ShapesCLIP.load(clip.folder).spec == clip.spec

    # the existing open_clip embedder path loads it, and it is a real image-text model
    embedder = build_embedder(clip.spec)
    assert isinstance(embedder, OpenCLIPEmbedder) and embedder.kind == "vlm"
    probe = ShapesWorld(n=40, image_size=32, split="val")
    P = embedder.concept_matrix(probe, probe.concept_names, progress=False)
    assert P.shape == (40, 46) and torch.isfinite(P).all() and P.std() > 0
    model = create_model(
        "small_resnet", U=2, num_classes=10, img_size=32, widths=[8, 16], depths=[1, 1]
    )
    result = dissect(
        model, ["layer2.0.act2"], probe, "shapes", clip.spec, cache_dir=None, progress=False
    )
    assert result.config.embedder == embedder.id and result.about.embedder_spec == clip.spec
    assert result.config.similarity == "cos" or result.config.similarity  # the vlm default
    assert len(result.layer("layer2.0.act2")) == 16


@pytest.mark.slow
def test_an_interrupted_training_resumes_from_its_last_epoch(tmp_path, monkeypatch):
    import discover.training.clip as module

    config = ShapesCLIPConfig(**TINY)
    calls = {"n": 0}
    real = module._multi_positive_loss

    def failing(logits, positives):
        calls["n"] += 1
        if calls["n"] == 3:  # the first step of the second epoch
            raise KeyboardInterrupt
        return real(logits, positives)

    monkeypatch.setattr(module, "_multi_positive_loss", failing)
    with pytest.raises(KeyboardInterrupt):
        train_shapes_clip(config, out=tmp_path / "clip", progress=False)
    assert (tmp_path / "clip" / "state.pt").is_file()
    assert not (tmp_path / "clip" / "clip.json").exists()
    calls["n"] = -100  # count the steps of the resumed run
    resumed = train_shapes_clip(config, out=tmp_path / "clip", progress=False)
    assert calls["n"] == -100 + 2  # one epoch of 64 / 32 steps: the first was not redone
    monkeypatch.setattr(module, "_multi_positive_loss", real)
    fresh = train_shapes_clip(config, out=tmp_path / "fresh", progress=False)

    def drop_time(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert drop_time(resumed.history) == drop_time(fresh.history)  # the same result
    assert not (tmp_path / "clip" / "state.pt").exists()  # done: no resume point left
