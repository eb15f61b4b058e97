"""Sharded dissection: shards recorded apart and merged equal one streamed dissection."""

from __future__ import annotations

import pytest
import torch

from _helpers import SHAPES_PROBE
from discover import create_model
from discover.data import ShapesWorld
from discover.dissection.core import dissect
from discover.dissection.result import Dissection
from discover.dissection.shards import (
    ShardMismatchError,
    dissect_shard,
    merge_shards,
    parse_shard,
)
from discover.errors import InputError

LAYERS = ["layer2.0.act2", "fc"]
OPTIONS = {"similarity": "soft_wpmi", "similarity_params": {"top_k": 6}, "null_repeats": 3}


def _model(seed=0):
    torch.manual_seed(seed)
    return create_model(
        "small_resnet", U=2, num_classes=10, img_size=16, widths=[8, 16], depths=[1, 1]
    )


@pytest.fixture(scope="module")
def probe():
    return ShapesWorld(**SHAPES_PROBE, split="val")


def test_parse_shard():
    assert parse_shard("3/4") == (3, 4) and parse_shard((0, 1)) == (0, 1)
    for bad in ("4/4", "-1/2", "a/b", "3"):
        with pytest.raises(InputError, match="shard"):
            parse_shard(bad)


SIMILARITIES = {
    "cos": {},
    "cos3": {},
    "corr": {},
    "wpmi": {"top_k": 5},
    "soft_wpmi": {"top_k": 6},
    "rank_reorder": {"top_fraction": 0.2},
    "jsd": {"support_k": 5},
}


@pytest.mark.parametrize("similarity", list(SIMILARITIES))
def test_merged_shards_equal_one_dissection(probe, tmp_path, similarity):
    model = _model()
    options = {**OPTIONS, "similarity": similarity, "similarity_params": SIMILARITIES[similarity]}
    common = {"cache_dir": None, "progress": False, **options}
    whole = dissect(model, LAYERS, probe, "shapes", "annotations", stream=True, **common)
    in_memory = dissect(model, LAYERS, probe, "shapes", "annotations", stream=False, **common)
    assert all(in_memory.labels(layer) == whole.labels(layer) for layer in LAYERS)
    shards = [
        dissect_shard(
            model,
            LAYERS,
            probe,
            tmp_path / f"s{i}",
            (i, 3),
            "shapes",
            "annotations",
            progress=False,
            **options,
        )  # fmt: skip
        for i in (2, 0, 1)  # any order
    ]
    merged = merge_shards(shards, out=tmp_path / "merged", progress=False)
    assert merged.meta["recording"]["shards"] == 3
    for layer in LAYERS:
        assert merged.labels(layer) == whole.labels(layer)
        torch.testing.assert_close(
            torch.tensor([u.score for u in merged.layer(layer)]),
            torch.tensor([u.score for u in whole.layer(layer)]),
            rtol=1e-5, atol=1e-6,
        )  # fmt: skip
        assert torch.equal(merged.probe_activations(layer), whole.probe_activations(layer))
        assert [u.z for u in merged.layer(layer)] == pytest.approx(
            [u.z for u in whole.layer(layer)], rel=1e-4, abs=1e-4
        )
    maps, expected = merged.maps["layer2.0.act2"], whole.maps["layer2.0.act2"]
    assert torch.equal(maps.indices, expected.indices)
    torch.testing.assert_close(maps.maps, expected.maps)
    torch.testing.assert_close(
        merged.winner_fractions["layer2.0.act2"], whole.winner_fractions["layer2.0.act2"]
    )
    loaded = Dissection.load(tmp_path / "merged")
    assert loaded.labels("fc") == whole.labels("fc")
    assert torch.equal(loaded.probe_activations("fc"), whole.probe_activations("fc"))


def test_shards_that_do_not_belong_together_are_refused(probe, tmp_path):
    a = dissect_shard(_model(0), LAYERS, probe, tmp_path / "a", "0/2", "shapes", "annotations",
                      progress=False, **OPTIONS)  # fmt: skip
    b = dissect_shard(_model(1), LAYERS, probe, tmp_path / "b", "1/2", "shapes", "annotations",
                      progress=False, **OPTIONS)  # fmt: skip
    with pytest.raises(ShardMismatchError, match="differ in model") as error:
        merge_shards([a, b], out=tmp_path / "never")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "never").exists()  # nothing written
    c = dissect_shard(_model(0), LAYERS, probe, tmp_path / "c", "1/2", "shapes", "annotations",
                      progress=False, **{**OPTIONS, "null_repeats": 4})  # fmt: skip
    with pytest.raises(ShardMismatchError, match="differ in config"):
        merge_shards([a, c])
    with pytest.raises(ShardMismatchError, match=r"missing \[1\]"):
        merge_shards([a])
    with pytest.raises(ShardMismatchError, match=r"given twice \[0\]"):
        merge_shards([a, a])
    with pytest.raises(InputError, match="not a shard"):
        merge_shards([tmp_path])


DISSECT = ["dissect", "--run-folder", "run", "--layers", "layer1.0.act2", "fc", "--probe", "shapes",
           "--probe-arg", "n=24", "--probe-arg", "image_size=16", "--concepts", "shapes",
           "--embedder", "annotations", "--similarity", "corr", "--null-repeats", "3"]  # fmt: skip


def _run(args: list[str], cwd, nproc: int = 0):
    import os
    import subprocess
    import sys

    launcher = [sys.executable, "-m", "discover"]
    if nproc:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={nproc}", "-m", "discover"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DISCOVER_CACHE": str(cwd / "cache")}
    return subprocess.run([*launcher, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip


@pytest.mark.slow
@pytest.mark.xdist_group("ddp")  # one torchrun at a time
def test_cli_shards_merge_and_two_process_gloo_match_one_process(tmp_path):
    from _helpers import train_tiny

    train_tiny(tmp_path / "run", U=2)  # the same weights in every process
    one = _run([*DISSECT, "--stream", "on", "--out", "one"], tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    for i in range(2):
        shard = _run([*DISSECT, "--shard", f"{i}/2", "--out", f"shard{i}"], tmp_path)
        assert shard.returncode == 0, shard.stderr[-3000:]
        assert f"shard {i}/2 written" in shard.stdout
    merged = _run(["merge", "shard1", "shard0", "--out", "merged"], tmp_path)
    assert merged.returncode == 0, merged.stderr[-3000:]
    two = _run([*DISSECT, "--out", "two"], tmp_path, nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert not (tmp_path / "two.shards").exists()  # process 0 removed the shards
    expected = Dissection.load(tmp_path / "one")
    for folder in ("merged", "two"):
        got = Dissection.load(tmp_path / folder)
        for layer in ("layer1.0.act2", "fc"):
            assert got.labels(layer) == expected.labels(layer), folder
            assert [u.score for u in got.layer(layer)] == pytest.approx(
                [u.score for u in expected.layer(layer)], rel=1e-5, abs=1e-6
            )
            assert torch.equal(got.probe_activations(layer), expected.probe_activations(layer))
    bad = _run(["merge", "shard0", "--out", "partial"], tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: shards of 2: missing [1]")
    assert not (tmp_path / "partial").exists()


def test_a_finished_shard_is_not_recorded_again(probe, tmp_path, monkeypatch):
    import discover.dissection.shards as shards

    model = _model()
    folder = dissect_shard(model, LAYERS, probe, tmp_path / "s0", "0/2", "shapes", "annotations",
                           progress=False, **OPTIONS)  # fmt: skip
    monkeypatch.setattr(shards, "record_rows", lambda *a, **k: pytest.fail("recorded again"))
    again = dissect_shard(model, LAYERS, probe, folder, "0/2", "shapes", "annotations",
                          progress=False, **OPTIONS)  # fmt: skip
    assert again == folder
    with pytest.raises(pytest.fail.Exception, match="recorded again"):  # other options: records
        dissect_shard(model, LAYERS, probe, folder, "0/2", "shapes", "annotations",
                      progress=False, **{**OPTIONS, "null_repeats": 5})  # fmt: skip


GLOO_SCRIPT = """
import json, sys
import torch
from discover import load_run
from discover.data import ShapesWorld
from discover.dissection.shards import dissect_distributed

similarities = json.loads(sys.argv[1])
model = load_run("run").model
probe = ShapesWorld(n=24, image_size=16, split="val")
for name, params in similarities.items():
    dissect_distributed(model, ["layer1.0.act2", "fc"], probe, f"gloo-{name}", "shapes",
                        "annotations", name, similarity_params=params, null_repeats=3,
                        progress=False)
"""


@pytest.mark.slow
@pytest.mark.xdist_group("ddp")  # one torchrun at a time
def test_two_process_gloo_dissection_equals_one_process_for_every_function(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from _helpers import train_tiny
    from discover import load_run

    train_tiny(tmp_path / "run", U=2)
    (tmp_path / "gloo.py").write_text(GLOO_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", "gloo.py", json.dumps(SIMILARITIES)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    model = load_run(tmp_path / "run").model
    probe = ShapesWorld(n=24, image_size=16, split="val")
    for name, params in SIMILARITIES.items():
        expected = dissect(model, ["layer1.0.act2", "fc"], probe, "shapes", "annotations", name,
                           similarity_params=params, null_repeats=3, cache_dir=None,
                           progress=False, stream=False)  # fmt: skip
        got = Dissection.load(tmp_path / f"gloo-{name}")
        for layer in ("layer1.0.act2", "fc"):
            assert got.labels(layer) == expected.labels(layer), (name, layer)
            scores = [u.score for u in got.layer(layer)]
            assert scores == pytest.approx([u.score for u in expected.layer(layer)],
                                           rel=1e-5, abs=1e-6), name  # fmt: skip
