"""Faults: nothing lost, nothing stale, no tracebacks (issue 12).

Sections: disk full while writing results; damaged and unwritable caches; stale dissections;
concurrent cache writers. A full disk is simulated by making the write paths discover uses
(``torch.save``, ``Path.write_text``/``write_bytes``) write part of the file and then raise
``OSError(ENOSPC)``, as a real full disk does.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import TensorDataset

import discover
from _helpers import tiny_train_kwargs, train_tiny
from discover._utils import CacheWarning
from discover.dissection.concepts import concept_set_from_lines
from discover.dissection.core import dissect
from discover.dissection.embedders import AnnotationEmbedder
from discover.dissection.recording import Recording
from discover.dissection.result import Dissection, StaleDissectionError

NAMES = ["red", "star", "striped background", "small", "top left", "circle"]


def _world(n: int = 60, seed: int = 0) -> tuple[TensorDataset, torch.Tensor]:
    """Images are the multi-hot concept vectors themselves (exact ground truth)."""
    g = torch.Generator().manual_seed(seed)
    table = (torch.rand(n, len(NAMES), generator=g) < 0.3).float()
    return TensorDataset(table.reshape(n, 1, 1, len(NAMES)), torch.zeros(n)), table


class Oracle(nn.Module):
    """Unit k of ``fc`` responds to concept k; ``act`` is an LWTA layer over them."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(len(NAMES), len(NAMES))
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(len(NAMES)) * 3)
            self.fc.bias.fill_(-1.0)
        self.act = discover.LWTA(2, name="act")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x.flatten(1)))


def _dissect(layers=("fc",), cache: Path | None = None, **kwargs) -> Dissection:
    probe, table = _world()
    return dissect(
        Oracle(),
        list(layers),
        probe,
        concept_set_from_lines(NAMES, name="toy"),
        AnnotationEmbedder(table, NAMES),
        "soft_wpmi",
        transform=nn.Identity(),  # a stable repr: part of the cache key
        similarity_params={"top_k": 20},
        cache_dir=cache,
        progress=False,
        **kwargs,
    )


def _rows(d: Dissection) -> list[tuple]:
    return [(u.layer, u.unit, u.label, round(u.score, 5)) for u in d.units]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _leftovers(*folders: Path) -> list[Path]:
    """Temporary files or staging folders: hidden names anywhere below ``folders``."""
    return [p for f in folders if f.exists() for p in f.rglob(".*")]


def _disk_full(monkeypatch: pytest.MonkeyPatch, when: Callable[[Path], bool]) -> list[Path]:
    """Writes to paths for which ``when`` holds write half and fail with ENOSPC."""
    failed: list[Path] = []
    real_save, real_text, real_bytes = torch.save, Path.write_text, Path.write_bytes

    def full(path: Path) -> None:
        failed.append(path)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    def save(obj, f, *args, **kwargs):
        path = Path(getattr(f, "name", f))
        if when(path):
            if isinstance(f, (str, os.PathLike)):
                real_bytes(Path(f), b"PK\x03\x04 cut short")
            else:
                f.write(b"PK\x03\x04 cut short")
            full(path)
        return real_save(obj, f, *args, **kwargs)

    def write_text(self, data, *args, **kwargs):
        if when(self):
            real_text(self, data[: len(data) // 2], *args, **kwargs)
            full(self)
        return real_text(self, data, *args, **kwargs)

    def write_bytes(self, data):
        if when(self):
            real_bytes(self, data[: len(data) // 2])
            full(self)
        return real_bytes(self, data)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(Path, "write_text", write_text)
    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    return failed


# -- disk full while writing results -----------------------------------------------------------
@pytest.mark.parametrize("foreign", [False, True], ids=["own-folder", "shared-folder"])
@pytest.mark.parametrize(
    "failing",
    ["dissection.json", "descriptions.csv", "scores.safetensors", "activations.safetensors"],
)
def test_disk_full_while_saving_keeps_the_previous_dissection(
    tmp_path, monkeypatch, failing, foreign
):
    out = tmp_path / "out"
    out.mkdir()
    if foreign:  # e.g. a run folder: the dissection's files are replaced one by one
        (out / "notes.txt").write_text("mine")
    _dissect(["fc"]).save(out)
    before = _snapshot(out)
    new = _dissect(["fc", "act"], keep_scores=True)  # other layers: a mix would show
    failed = _disk_full(monkeypatch, lambda p: p.name.startswith((failing, f".{failing}")))
    with pytest.raises(OSError, match="previous result there is unchanged") as caught:
        new.save(out)
    assert failed and caught.value.errno == errno.ENOSPC
    assert _snapshot(out) == before
    assert _leftovers(tmp_path) == []
    monkeypatch.undo()
    new.save(out)
    loaded = Dissection.load(out)
    assert loaded.config.layers == ["fc", "act"] and set(loaded.scores) == {"fc", "act"}
    assert (out / "notes.txt").exists() == foreign


def test_full_cache_disk_dissection_completes_without_caching(tmp_path, monkeypatch):
    cache, out = tmp_path / "cache", tmp_path / "out"
    _dissect(["fc"]).save(out)
    before = _snapshot(out)
    fresh = _dissect(["fc", "act"])
    _disk_full(monkeypatch, lambda p: True)  # the whole disk is full
    with pytest.warns(CacheWarning, match="carrying on without caching") as record:
        result = _dissect(["fc", "act"], cache=cache)
    assert {str(cache / "activations"), str(cache / "concepts")} <= {
        str(Path(str(w.message).split("entry ")[1].split(" (")[0]).parent)
        for w in record
        if w.category is CacheWarning
    }
    assert _rows(result) == _rows(fresh)
    assert result.meta["recording"]["cache"] == {"file": None, "hit": False}
    with pytest.raises(OSError, match="could not write the dissection"):
        result.save(out)
    assert _snapshot(out) == before
    assert [p for p in cache.rglob("*") if p.is_file()] == []
    assert _leftovers(tmp_path) == []


def test_disk_full_while_writing_a_report_leaves_no_staging(tmp_path, monkeypatch):
    from discover.report.inputs import ReportSection
    from discover.report.writer import write_report

    probe, _ = _world()
    d = _dissect(["fc"])
    section = ReportSection("oracle", Oracle(), d, probe)
    out = tmp_path / "report"
    write_report(out, [section], progress=False)
    before = _snapshot(out)
    _disk_full(monkeypatch, lambda p: p.suffix == ".html")
    with pytest.raises(OSError):
        write_report(out, [section], progress=False)
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


# -- damaged caches -----------------------------------------------------------------------------
def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncated" else b"")


@pytest.mark.parametrize("how", ["truncated", "empty"])
def test_damaged_activation_cache_entry_is_recomputed(tmp_path, how):
    first = _dissect(["fc", "act"], cache=tmp_path)
    (entry,) = (tmp_path / "activations").glob("*.pt")
    _damage(entry, how)
    with pytest.warns(CacheWarning, match=f"entry {entry} cannot be used"):
        again = _dissect(["fc", "act"], cache=tmp_path)
    assert _rows(again) == _rows(first) == _rows(_dissect(["fc", "act"]))
    assert again.meta["recording"]["cache"] == {"file": str(entry), "hit": False}
    assert set(Recording.load(entry).activations) == {"fc", "act"}  # replaced
    assert _dissect(["fc", "act"], cache=tmp_path).meta["recording"]["cache"]["hit"] is True
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("how", ["truncated", "empty", "wrong-shape"])
def test_damaged_concept_matrix_entry_is_recomputed(tmp_path, how):
    first = _dissect(["fc"], cache=tmp_path)
    (entry,) = (tmp_path / "concepts").glob("*.safetensors")
    if how == "wrong-shape":  # the right key, but P of another probe size
        with safe_open(entry, framework="pt") as f:
            head, P = f.metadata(), f.get_tensor("P")
        save_file({"P": P[:3, :2].contiguous()}, entry, metadata=head)
    else:
        _damage(entry, how)
    with pytest.warns(CacheWarning, match=f"entry {entry} cannot be used"):
        again = _dissect(["fc"], cache=tmp_path)
    assert _rows(again) == _rows(first) == _rows(_dissect(["fc"]))
    assert again.meta["concept_matrix_cache"] == {"file": str(entry), "hit": False}
    with safe_open(entry, framework="pt") as f:
        assert f.get_tensor("P").shape == (60, len(NAMES))  # replaced
    assert _dissect(["fc"], cache=tmp_path).meta["concept_matrix_cache"]["hit"] is True


def test_scores_pt_of_discover_0_1_is_still_read(tmp_path):
    kept = _dissect(["fc"], keep_scores=True)
    kept.save(tmp_path)
    stamp = json.loads((tmp_path / "dissection.json").read_text())["id"]
    (tmp_path / "scores.safetensors").unlink()
    old = {"id": stamp, "concepts": kept.concepts, "scores": kept.scores}
    torch.save(old, tmp_path / "scores.pt")  # the 0.1 format (tensors and strings only)
    loaded = Dissection.load(tmp_path)
    assert loaded.concepts == kept.concepts and torch.equal(loaded.scores["fc"], kept.scores["fc"])
    torch.save({**old, "id": "another"}, tmp_path / "scores.pt")
    with pytest.warns(UserWarning, match="ignoring .*scores.pt: another dissection's"):
        assert Dissection.load(tmp_path).scores == {}


@pytest.mark.parametrize("name", ["scores.safetensors", "activations.safetensors"])
def test_damaged_tensor_file_of_a_dissection_is_ignored_with_a_warning(tmp_path, name):
    _dissect(["fc"], keep_scores=True).save(tmp_path)
    _damage(tmp_path / name, "truncated")
    with pytest.warns(UserWarning, match=f"ignoring .*{name}: unreadable"):
        loaded = Dissection.load(tmp_path)
    assert loaded.labels("fc")
    assert (loaded.scores == {}) == (name == "scores.safetensors")
    assert (loaded.activations == {}) == (name == "activations.safetensors")
    (tmp_path / "dissection.json").write_text('{"units": [')
    with pytest.raises(ValueError, match="dissection.json cannot be read"):
        Dissection.load(tmp_path)


# -- stale dissections --------------------------------------------------------------------------
def _train(out: Path, seed: int, overwrite: bool = False) -> Path:
    return Path(train_tiny(out, U=4, seed=seed, overwrite=overwrite).out)


def test_explain_refuses_a_dissection_of_a_retrained_run(tmp_path, capsys):
    from discover.cli import main
    from discover.data import ShapesWorld

    run = _train(tmp_path / "run", seed=0)
    model = discover.load_run(run).model
    probe = ShapesWorld(n=40, image_size=16, split="val")
    layers = [*discover.lwta_layers(model), "fc"]
    folder = tmp_path / "dissection"
    discover.dissect(model, layers, probe, "shapes", AnnotationEmbedder(), progress=False).save(
        folder
    )
    image, _ = ShapesWorld(n=1, image_size=16, split="test")[0]
    png = tmp_path / "shape.png"
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(png)
    argv = ["explain", str(png), "--run", str(run), "--dissection", str(folder), "--json"]
    assert main(argv) == 0  # the dissection describes this run
    capsys.readouterr()

    _train(run, seed=1, overwrite=True)  # retrained in place
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "does not describe this model" in err and "weights differ" in err
    assert f"discover dissect --run {run} --layers {' '.join(layers)} --out {folder}" in err
    assert "Traceback" not in err
    with pytest.warns(UserWarning, match="does not describe this model"):
        assert main([*argv, "--allow-stale-dissection"]) == 0

    retrained = discover.load_run(run).model
    with pytest.raises(StaleDissectionError, match="allow_mismatch=True"):
        discover.explain(retrained, [str(png)], Dissection.load(folder))
    with pytest.warns(UserWarning, match="weights differ"):
        (e,) = discover.explain(retrained, [str(png)], folder, allow_mismatch=True)
    assert e.layers


def test_a_dissection_of_other_layers_or_U_is_refused():
    d = _dissect(["fc", "act"])
    assert d.check_model(Oracle()) == []
    other = Oracle()
    other.act = discover.LWTA(3, name="act")
    with pytest.raises(StaleDissectionError, match="layer 'act' has U=3, the dissection U=2"):
        d.check_model(other)
    with pytest.raises(StaleDissectionError, match="no layer 'act'"):
        d.check_model(nn.Sequential(nn.Linear(6, 6)))


# -- concurrent cache writers -------------------------------------------------------------------
_WRITER = textwrap.dedent(
    """
    import os, sys, time, warnings, torch
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    torch.set_num_threads(1)
    from discover._utils import CacheWarning
    from test_faults import _dissect
    warnings.simplefilter("error", CacheWarning)  # a half-written entry read would show
    cache = Path(sys.argv[1])
    (cache / f"ready-{os.getpid()}").touch()
    while len(list(cache.glob("ready-*"))) < 2:  # both start together, after the imports
        time.sleep(0.01)
    d = _dissect(["fc", "act"], cache=cache)
    print(d.meta["recording"]["cache"]["hit"], d.labels("fc"))
    """
)


def test_two_processes_writing_one_cache_entry_leave_one_valid_entry(tmp_path):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(tmp_path), str(Path(__file__).parent)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outputs]
    (entry,) = (tmp_path / "activations").glob("*.pt")
    (matrix,) = (tmp_path / "concepts").glob("*.safetensors")
    assert set(Recording.load(entry).activations) == {"fc", "act"}
    with safe_open(matrix, framework="pt") as f:
        assert f.get_tensor("P").shape == (60, len(NAMES))
    assert _leftovers(tmp_path) == []
    assert _dissect(["fc", "act"], cache=tmp_path).meta["recording"]["cache"]["hit"] is True


_FOLDER_WRITER = textwrap.dedent(
    """
    import os, sys, time, torch
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    torch.set_num_threads(1)
    from test_faults import _dissect
    out, layer = Path(sys.argv[1]), sys.argv[3]
    (out.parent / f"ready-{layer}").touch()
    while len(list(out.parent.glob("ready-*"))) < 2:  # both start together, after the imports
        time.sleep(0.01)
    for _ in range(5):  # several overlapping saves of different results into one folder
        _dissect([layer]).save(out)
    """
)


def test_two_processes_saving_into_one_output_folder_leave_one_complete_result(tmp_path):
    out = tmp_path / "dissection"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _FOLDER_WRITER, str(out), str(Path(__file__).parent), layer],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for layer in ("fc", "act")
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outputs]
    result = Dissection.load(out)  # one writer's complete result, never a mix of both
    (layer,) = result.config.layers
    assert {u.layer for u in result.units} == {layer}
    assert _rows(result) == _rows(_dissect([layer]))
    assert _leftovers(tmp_path) == []


# -- training interrupted by real signals (Ctrl-C, kill -9), in subprocesses ---------------------
# The child pauses at a chosen point and says so through a file; the test waits for that file
# (never for a time), signals the child, then resumes the run and compares it with an
# uninterrupted one: weights, BatchNorm buffers, the best checkpoint and the log.
_TRAIN_CHILD = textwrap.dedent(
    """
    import signal, sys, time
    from pathlib import Path
    # A child of a background job inherits SIGINT as ignored: take Ctrl-C as Python does.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from discover.nn.networks import SmallResNet
    from discover.training.trainer import TrainConfig, train

    out, pause_at, ready = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    original, calls = SmallResNet.forward_head, {"n": 0}

    def pausing(self, x, pre_logits=False):
        if self.training:
            calls["n"] += 1
            if calls["n"] == pause_at:  # every BatchNorm of this batch has already run
                ready.touch()
                while True:
                    time.sleep(0.01)
        return original(self, x, pre_logits)

    SmallResNet.forward_head = pausing
    train(TrainConfig(**{CONFIG}, out=out, resume=Path(out, "state").is_dir()), progress=False)
    """
)
_TRAIN_CONFIG = tiny_train_kwargs(n=160, U=2, epochs=3)


def _child(out: Path, pause_at: int, ready: Path) -> subprocess.Popen:
    code = _TRAIN_CHILD.replace("{CONFIG}", repr(_TRAIN_CONFIG))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", code, str(out), str(pause_at), str(ready)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, child: subprocess.Popen) -> None:
    while not path.exists():
        if child.poll() is not None:
            raise AssertionError(f"the child ended before pausing:\n{child.stderr.read()[-3000:]}")
        time.sleep(0.01)  # polling interval only: the test waits for the file, not a time


@pytest.mark.slow
@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGKILL"])
def test_training_resumes_exactly_after_ctrl_c_or_kill_9(tmp_path, signal_name):
    import signal

    from safetensors.torch import load_file

    from discover.training.config import TrainConfig
    from discover.training.trainer import train

    full = train(TrainConfig(**_TRAIN_CONFIG, out=str(tmp_path / "full")), progress=False).out
    cut, ready = tmp_path / "cut", tmp_path / "ready"
    child = _child(cut, pause_at=6, ready=ready)  # epoch 2, second batch (4 batches an epoch)
    _wait_for(ready, child)
    child.send_signal(getattr(signal, signal_name))
    assert child.wait(timeout=600) != 0  # a safety net only: the signal ends it at once
    if signal_name == "SIGINT":  # the interrupt checkpoint is taken at the batch boundary
        assert "interrupted: resumable checkpoint written" in child.stdout.read()
    # no pause this time: the resumed child trains to the end
    resumed = _child(cut, pause_at=10**9, ready=tmp_path / "unused")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-3000:]
    for which in ("last", "best"):
        a, b = (
            load_file(str(full / f"{which}.safetensors")),
            load_file(str(cut / f"{which}.safetensors")),
        )
        assert a.keys() == b.keys()
        for key in a:  # BatchNorm running statistics and num_batches_tracked included
            assert torch.equal(a[key], b[key]), (which, key)
    strip = lambda line: {k: v for k, v in __import__("json").loads(line).items() if k != "seconds"}  # noqa: E731
    full_log = [strip(x) for x in (full / "log.jsonl").read_text().splitlines()]
    cut_log = [strip(x) for x in (cut / "log.jsonl").read_text().splitlines()]
    assert cut_log == full_log


@pytest.mark.parametrize("how", ["truncated", "empty"])
def test_damaged_training_state_is_a_clear_error(tmp_path, how):
    name = "trainer.pt"  # the whole resume point of a single process
    from discover.training.config import TrainConfig
    from discover.training.trainer import train

    config = TrainConfig(**{**_TRAIN_CONFIG, "epochs": 1}, out=str(tmp_path / "run"))
    train(config, progress=False)
    state = tmp_path / "run" / "state" / name
    data = state.read_bytes()
    state.write_bytes(data[: len(data) // 2] if how == "truncated" else b"")
    weights = (tmp_path / "run" / "last.safetensors").read_bytes()
    with pytest.raises(ValueError, match=rf"cannot read the training state .*{name}"):
        train(TrainConfig(**{**_TRAIN_CONFIG, "epochs": 2}, out=str(tmp_path / "run"), resume=True))
    assert (tmp_path / "run" / "last.safetensors").read_bytes() == weights  # nothing lost


def test_disk_full_while_training_keeps_the_last_checkpoint_and_no_temp_files(
    tmp_path, monkeypatch, capsys
):
    """A full disk at the second epoch's save: one-line CLI error, epoch 1 still resumable."""
    from discover.cli import main
    from discover.training.config import TrainConfig
    from discover.training.trainer import train

    config = dict(_TRAIN_CONFIG, epochs=2)
    run = tmp_path / "run"
    original = torch.save
    saves = {"n": 0}

    def full_disk(obj, f, *args, **kwargs):
        saves["n"] += 1
        if saves["n"] == 2:  # the trainer state of epoch 2
            with open(f, "wb") as handle:
                handle.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return original(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    argv = ["train", "--model", "small_resnet", "-U", "2", "--epochs", "2", "--batch-size", "32"]
    argv += ["--model-arg", "img_size=16", "--model-arg", "widths=[8,16]"]
    argv += ["--model-arg", "depths=[1,1]", "--data-arg", "n=160", "--data-arg", "image_size=16"]
    argv += ["--eval-samples", "1", "--quiet", "--out", str(run)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no space left on the device") and len(err.splitlines()) == 1
    assert _leftovers(run) == [] and not list(run.rglob("*.tmp"))
    monkeypatch.setattr(torch, "save", original)
    state = torch.load(run / "state" / "trainer.pt", weights_only=True)
    assert state["epoch"] == 1  # the last complete checkpoint survived
    resumed = train(TrainConfig(**config, out=str(run), resume=True), progress=False)
    assert resumed.epochs_run == 2


def test_disk_full_when_an_overwrite_starts_leaves_the_old_run_and_no_staging(
    tmp_path, monkeypatch
):
    import discover.training.trainer as training
    from discover.training.config import TrainConfig
    from discover.training.trainer import train

    old = train(TrainConfig(**{**_TRAIN_CONFIG, "epochs": 1}, out=str(tmp_path / "run")))
    before = _snapshot(old.out)

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(training, "write_atomic", full)  # config.json of the new run
    with pytest.raises(OSError, match="No space left"):
        train(
            TrainConfig(**{**_TRAIN_CONFIG, "epochs": 1, "U": 4}, out=str(old.out), overwrite=True)
        )
    assert _snapshot(old.out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
