import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from _helpers import tiny_train_kwargs
from discover.training.config import TrainConfig
from discover.training.distributed import GlobalBatchSampler
from discover.training.loop import NonFiniteLossError
from discover.training.recipes import get_recipe
from discover.training.trainer import train

TINY = tiny_train_kwargs(n=160, epochs=2)


def _config(tmp_path: Path, name: str = "run", **changes) -> TrainConfig:
    return TrainConfig(**{**TINY, "out": str(tmp_path / name), **changes})


def _weights(run: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(run / f"{which}.safetensors"))


def _assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=atol, rtol=0), key


def _strip(history: list[dict]) -> list[dict]:
    """Epoch records without their wall-clock time."""
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


def test_run_directory_contents(tmp_path):
    result = train(_config(tmp_path, U=4), progress=False)
    run = result.out
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["U"] == 4 and config["recipe"]["name"] == "cvn_small"
    assert config["recipe"]["epochs"] == 2 and config["data"]["input_size"] == [3, 16, 16]
    assert config["model"]["name"] == "small_resnet" and len(config["class_names"]) == 10
    lines = (run / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert {"train_loss", "train_top1", "val_top1", "lr"} <= set(json.loads(lines[-1]))
    for name in ("last.safetensors", "best.safetensors", "state/trainer.pt"):
        assert (run / name).is_file(), name
    from safetensors import safe_open

    with safe_open(str(run / "best.safetensors"), "pt") as f:
        metadata = f.metadata()
    assert json.loads(metadata["data_config"]) == config["data"]
    assert json.loads(metadata["cvn_config"])["U"] == 4
    assert result.epochs_run == 2 and 0 <= result.best_top1 <= 1


def test_resume_matches_an_uninterrupted_run(tmp_path):
    # a step schedule, whose first epoch does not depend on the total: a 1-epoch run is the
    # first epoch of the 2-epoch run (the default's cosine and annealing are covered below,
    # by runs interrupted part way)
    config = dict(U=4, recipe="resnet_small")
    full = train(_config(tmp_path, "full", **config), progress=False)
    train(_config(tmp_path, "cut", epochs=1, **config), progress=False)
    resumed = train(_config(tmp_path, "cut", resume=True, **config), progress=False)
    _assert_same_weights(_weights(full.out), _weights(resumed.out))
    assert _strip(resumed.history) == _strip(full.history)


def test_ctrl_c_leaves_a_resumable_mid_epoch_checkpoint(tmp_path, monkeypatch):
    full = train(_config(tmp_path, "full", U=2), progress=False)

    from discover import data as data_module

    original = data_module.ShapesWorld.__getitem__
    calls = {"n": 0}

    def interrupting(self, index):
        calls["n"] += 1
        if calls["n"] == 100:  # in epoch 1, after 3 of 4 batches
            raise KeyboardInterrupt
        return original(self, index)

    monkeypatch.setattr(data_module.ShapesWorld, "__getitem__", interrupting)
    with pytest.raises(KeyboardInterrupt):
        train(_config(tmp_path, "cut", U=2), progress=False)
    monkeypatch.setattr(data_module.ShapesWorld, "__getitem__", original)
    state = torch.load(tmp_path / "cut" / "state" / "trainer.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (0, 3)
    resumed = train(_config(tmp_path, "cut", U=2, resume=True), progress=False)
    _assert_same_weights(_weights(full.out), _weights(resumed.out))
    assert _strip(resumed.history) == _strip(full.history)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    train(_config(tmp_path, "run", epochs=1), progress=False)
    good = _weights(tmp_path / "run")

    class ExplodingLoss(torch.nn.CrossEntropyLoss):
        def forward(self, logits, labels):
            return super().forward(logits, labels) * float("inf")

    monkeypatch.setattr("discover.training.trainer.nn.CrossEntropyLoss", ExplodingLoss)
    with pytest.raises(NonFiniteLossError, match="non-finite loss .* epoch 2"):
        train(_config(tmp_path, "run", epochs=2, resume=True), progress=False)
    _assert_same_weights(good, _weights(tmp_path / "run"))
    assert json.loads((tmp_path / "run" / "last.json").read_text())["epoch"] == 1


def test_resume_refuses_a_different_architecture_or_U(tmp_path):
    train(_config(tmp_path, "run", U=2, epochs=1), progress=False)
    with pytest.raises(ValueError, match=r"U: run has 2, now 4"):
        train(_config(tmp_path, "run", U=4, resume=True), progress=False)
    with pytest.raises(FileNotFoundError, match="no training state"):
        train(_config(tmp_path, "empty", resume=True), progress=False)


def test_yaml_config_with_flag_overrides(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({**TINY, "U": 2, "epochs": 5, "recipe": "deit_small"}))
    config = TrainConfig.from_yaml(path, epochs=1, out=str(tmp_path / "y"))
    assert (config.U, config.epochs, config.recipe) == (2, 1, "deit_small")
    recipe = config.resolved_recipe()
    assert recipe.optimizer == "adamw" and recipe.label_smoothing == 0.1 and recipe.epochs == 1
    path.write_text(yaml.safe_dump({"modle": "small_vit"}))
    with pytest.raises(ValueError, match=r"modle \(did you mean model\?\)"):
        TrainConfig.from_yaml(path)


def test_recipes_follow_method_md():
    resnet, deit = get_recipe("resnet"), get_recipe("deit")
    assert (resnet.optimizer, resnet.lr, resnet.momentum, resnet.weight_decay) == (
        "sgd",
        0.1,
        0.9,
        1e-4,
    )
    assert (resnet.epochs, resnet.batch_size, resnet.step_size, resnet.gamma) == (90, 256, 30, 0.1)
    assert (deit.optimizer, deit.lr, deit.weight_decay, deit.warmup_epochs) == (
        "adamw",
        2.5e-4,
        0.02,
        5,
    )
    assert (deit.min_lr, deit.warmup_lr, deit.label_smoothing, deit.epochs) == (
        1e-5,
        1e-6,
        0.1,
        300,
    )
    with pytest.raises(ValueError, match=r"unknown recipe 'resnt'. Did you mean 'resnet'"):
        get_recipe("resnt")


def test_cosine_schedule_warms_up_then_decays():
    from discover.training.recipes import build_optimizer, build_scheduler

    recipe = get_recipe("deit").replace(epochs=10, warmup_epochs=2)
    model = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(recipe, model)
    scheduler = build_scheduler(recipe, optimizer)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(1e-6) and lrs[2] == pytest.approx(2.5e-4)
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:], strict=False)) and lrs[-1] > 1e-5


def test_global_batch_sampler_splits_each_global_batch_across_ranks():
    single = list(GlobalBatchSampler(20, 8, seed=3))
    ranks = [list(GlobalBatchSampler(20, 8, seed=3, rank=r, world=2)) for r in range(2)]
    assert len(single) == 2
    for step, batch in enumerate(single):
        assert ranks[0][step] + ranks[1][step] == batch
    resumed = GlobalBatchSampler(20, 8, seed=3)
    resumed.set_epoch(0, start=1)
    assert list(resumed) == single[1:]
    with pytest.raises(ValueError, match="divisible by the number of processes"):
        GlobalBatchSampler(20, 7, seed=0, world=2)


def test_missing_dataset_path_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        train(
            _config(
                tmp_path,
                dataset="imagefolder",
                data_root=str(tmp_path / "nowhere"),
                dataset_kwargs={},
            ),
            progress=False,
        )


def test_unreadable_images_are_skipped_and_recorded(tmp_path):
    from PIL import Image

    root = tmp_path / "images" / "train"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(20):
            Image.new("RGB", (20, 20), (200 * (label == "a"), 40 * i % 255, 90)).save(
                root / label / f"{i}.png"
            )
    (root / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        result = train(
            _config(
                tmp_path,
                dataset="imagefolder",
                data_root=str(tmp_path / "images"),
                dataset_kwargs={},
                batch_size=8,
                epochs=1,
            ),
            progress=False,
        )
    assert result.skipped_images == 1
    config = json.loads((result.out / "config.json").read_text())
    assert list(config["skipped_images"]) == [str(root / "a" / "broken.png")]


def _torchrun(args: list[str], nproc: int, cwd: Path) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "discover",
        "train",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


DDP_ARGS = [
    "--model",
    "small_vit",
    "--model-arg",
    "img_size=16",
    "--model-arg",
    "patch_size=4",
    "--model-arg",
    "embed_dim=32",
    "--model-arg",
    "depth=2",
    "--model-arg",
    "num_heads=2",
    "--data-arg",
    "n=192",
    "--data-arg",
    "image_size=16",
    "--batch-size",
    "32",
    "--epochs",
    "2",
    "--augment",
    "none",
    "--eval-samples",
    "1",
    "--quiet",
    # SGD: the all-reduce sums gradients in another order, and Adam's first steps (g/|g|)
    # would turn those 1e-9 differences into whole lr-sized ones in near-zero gradients
    "--recipe",
    "resnet_small",
]


@pytest.mark.slow
@pytest.mark.xdist_group("ddp")  # one torchrun at a time
def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path):
    one = _torchrun([*DDP_ARGS, "-U", "1", "--out", str(tmp_path / "one")], 1, tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _torchrun([*DDP_ARGS, "-U", "1", "--out", str(tmp_path / "two")], 2, tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "config.json").read_text())["world_size"] == 2
    _assert_same_weights(_weights(tmp_path / "one"), _weights(tmp_path / "two"), atol=1e-5)
    log_one = [json.loads(x) for x in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    log_two = [json.loads(x) for x in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    for a, b in zip(log_one, log_two, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        assert a["val_top1"] == pytest.approx(b["val_top1"])


@pytest.mark.slow
@pytest.mark.xdist_group("ddp")
def test_two_process_ddp_trains_a_cvn_and_resumes(tmp_path):
    args = [*DDP_ARGS, "-U", "4", "--out", str(tmp_path / "cvn")]
    first = _torchrun(
        [*args[: args.index("--epochs") + 1], "1", *args[args.index("--epochs") + 2 :]], 2, tmp_path
    )
    assert first.returncode == 0, first.stderr[-3000:]
    second = _torchrun([*args, "--resume"], 2, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert len((tmp_path / "cvn" / "log.jsonl").read_text().splitlines()) == 2
    assert (tmp_path / "cvn" / "state" / "rng-rank1.pt").is_file()


def test_resume_refuses_changed_hyperparameters(tmp_path):
    train(_config(tmp_path, "run", epochs=1), progress=False)
    with pytest.raises(ValueError, match=r"lr: run has None, now 0.5"):
        train(_config(tmp_path, "run", epochs=2, lr=0.5, resume=True), progress=False)


def test_fashion_mnist_from_the_debian_package(tmp_path):
    """`make` installs dataset-fashion-mnist; train on a slice of the real images."""
    result = train(
        TrainConfig(
            model="small_vit",
            U=16,
            dataset="fashion-mnist",
            train_subset=256,
            batch_size=64,
            epochs=1,
            eval_samples=1,
            out=str(tmp_path / "fm"),
            model_kwargs={"img_size": 28, "patch_size": 7, "in_chans": 1, "depth": 1},
        ),
        progress=False,
    )
    config = json.loads((result.out / "config.json").read_text())
    assert config["class_names"][0] == "T-shirt/top" and config["data"]["input_size"] == [1, 28, 28]
    assert result.history[0]["val_top1"] >= 0


def test_annealed_temperature_trains_saves_reloads_and_reaches_its_final_value(
    tmp_path, monkeypatch
):
    from discover.nn.lwta import lwta_layers
    from discover.training.runs import load_run

    anneal = dict(U=4, temperature=1.0, temperature_final=0.05, temperature_anneal=0.5, epochs=3)
    result = train(_config(tmp_path, "annealed", **anneal), progress=False)
    config = json.loads((result.out / "config.json").read_text())
    assert config["train"]["temperature_final"] == 0.05
    assert config["temperature_schedule"] == {
        "start": 1.0,
        "final": 0.05,
        "anneal": 0.5,
        "shape": "cosine",
    }
    temperatures = [record["temperature"] for record in result.history]
    assert temperatures[0] < 1.0 and temperatures[1:] == [pytest.approx(0.05)] * 2
    run = load_run(result.out, "last")
    model = run.model
    assert run.temperature == pytest.approx(0.05) and run.train.temperature_final == 0.05
    assert [r["temperature"] for r in run.history] == temperatures
    layers = lwta_layers(model).values()
    assert layers and all(layer.temperature == pytest.approx(0.05) for layer in layers)
    # deterministic deployment: one winner per block, active fraction exactly 1/U
    from discover.nn.lwta import capture_winners, set_eval_policy

    set_eval_policy(model.eval(), "argmax")
    with capture_winners(model) as captured:
        model(torch.randn(2, 3, 16, 16))
        for layer in captured.values():
            assert layer.last_mask.float().mean().item() == pytest.approx(0.25)
    # a run interrupted mid-schedule resumes with the same temperatures and weights
    from discover import data as data_module

    original = data_module.ShapesWorld.__getitem__
    calls = {"n": 0}

    def interrupting(self, index):
        calls["n"] += 1
        if calls["n"] == 200:  # in epoch 2, while T is still annealing
            raise KeyboardInterrupt
        return original(self, index)

    monkeypatch.setattr(data_module.ShapesWorld, "__getitem__", interrupting)
    with pytest.raises(KeyboardInterrupt):
        train(_config(tmp_path, "cut", **anneal), progress=False)
    monkeypatch.setattr(data_module.ShapesWorld, "__getitem__", original)
    resumed = train(_config(tmp_path, "cut", **anneal, resume=True), progress=False)
    _assert_same_weights(_weights(result.out), _weights(resumed.out))
    assert _strip(resumed.history) == _strip(result.history)


def test_bad_temperature_options_are_rejected_before_training(tmp_path):
    with pytest.raises(ValueError, match="anneal must be a fraction"):
        train(_config(tmp_path, temperature_final=0.1, temperature_anneal=0.0), progress=False)
    assert not (tmp_path / "run").exists()


def test_training_into_an_existing_run_needs_resume_or_overwrite(tmp_path):
    first = train(_config(tmp_path, U=2, epochs=1), progress=False)
    before = _weights(first.out)
    config_before = (first.out / "config.json").read_text()
    with pytest.raises(ValueError, match="already holds a training run"):
        train(_config(tmp_path, model="small_vit", model_kwargs={"img_size": 16}), progress=False)
    assert (first.out / "config.json").read_text() == config_before
    _assert_same_weights(before, _weights(first.out))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"epochs": 0}, "epochs must be an integer >= 1"),
        ({"lr": -1.0}, "lr must be a number >= 0"),
        ({"holdout": 1.5}, r"holdout must be a number in \[0.0, 1.0\)"),
        ({"device": "banana"}, "device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
        ({"eval_policy": "mean"}, "eval_policy must be one of"),
        ({"overwrite": True, "resume": True}, "resume and overwrite exclude each other"),
    ],
)
def test_bad_options_fail_before_an_existing_run_is_touched(tmp_path, change, message):
    first = train(_config(tmp_path, epochs=1), progress=False)
    files = {p: p.read_bytes() for p in first.out.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match=message):
        train(_config(tmp_path, **{"overwrite": True, **change}), progress=False)
    assert {p: p.read_bytes() for p in first.out.rglob("*") if p.is_file()} == files


def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(tmp_path, monkeypatch):
    old = train(_config(tmp_path, U=2, epochs=1), progress=False)
    before = _weights(old.out)

    from discover import data as data_module

    original = data_module.ShapesWorld.__getitem__

    def failing(self, index):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(data_module.ShapesWorld, "__getitem__", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        train(_config(tmp_path, U=4, epochs=1, overwrite=True), progress=False)
    monkeypatch.setattr(data_module.ShapesWorld, "__getitem__", original)
    _assert_same_weights(before, _weights(old.out))  # the old run is intact and loadable
    assert json.loads((old.out / "config.json").read_text())["train"]["U"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no staging left

    new = train(_config(tmp_path, U=4, epochs=1, overwrite=True), progress=False)
    assert new.out == old.out
    assert json.loads((new.out / "config.json").read_text())["train"]["U"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_ctrl_c_inside_a_forward_pass_resumes_exactly(tmp_path, monkeypatch):
    """The cut batch already moved BatchNorm statistics: the checkpoint must not keep that."""
    full = train(_config(tmp_path, "full", U=2, epochs=3), progress=False)

    from discover.nn.networks import SmallResNet

    original = SmallResNet.forward_head
    calls = {"n": 0}

    def interrupting(self, x, pre_logits=False):
        if self.training:
            calls["n"] += 1
            if calls["n"] == 6:  # epoch 2, second batch: after every BatchNorm layer ran
                raise KeyboardInterrupt
        return original(self, x, pre_logits)

    monkeypatch.setattr(SmallResNet, "forward_head", interrupting)
    with pytest.raises(KeyboardInterrupt):
        train(_config(tmp_path, "cut", U=2, epochs=3), progress=False)
    monkeypatch.setattr(SmallResNet, "forward_head", original)
    state = torch.load(tmp_path / "cut" / "state" / "trainer.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 1)
    resumed = train(_config(tmp_path, "cut", U=2, epochs=3, resume=True), progress=False)
    _assert_same_weights(_weights(full.out), _weights(resumed.out))  # BN buffers included
    _assert_same_weights(_weights(full.out, "best"), _weights(resumed.out, "best"))
    assert (
        json.loads((full.out / "best.json").read_text())["epoch"]
        == json.loads((resumed.out / "best.json").read_text())["epoch"]
    )
    assert _strip(resumed.history) == _strip(full.history)


def test_cvn_small_recipe_anneals_the_competition_temperature_by_default():
    schedule = TrainConfig(recipe="cvn_small", U=4).temperature_schedule()
    assert (schedule.start, schedule.final, schedule.anneal) == (1.0, 0.02, 0.75)
    assert (
        TrainConfig(recipe="cvn_small", temperature_final=0.1).temperature_schedule().final == 0.1
    )
    assert TrainConfig(recipe="deit_small").temperature_schedule().constant  # the reference


def test_cvn_small_recipe_is_what_the_converged_accuracy_study_trains(monkeypatch):
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy.py"
    monkeypatch.syspath_prepend(str(path.parent))  # as when run as a script
    spec = importlib.util.spec_from_file_location("accuracy_bench", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "accuracy_bench", bench)  # for its dataclasses
    spec.loader.exec_module(bench)
    setting = bench.SETTINGS["converged"]
    for family in ("resnet", "vit"):
        arm = bench.Arm("fashion-mnist", family, 4, "anneal")
        config = bench.train_config(arm, 0, setting, "cpu", Path("unused"))
        studied = config.resolved_recipe()
        recipe = get_recipe("cvn_small")
        ignore = {"name", "description", "temperature_final", "epochs"}
        assert {k: v for k, v in studied.to_dict().items() if k not in ignore} == {
            k: v for k, v in recipe.to_dict().items() if k not in ignore
        }
        assert config.epochs >= recipe.epochs == setting.epochs_of("resnet")
        assert (
            config.temperature_schedule()
            == TrainConfig(recipe="cvn_small", U=4).temperature_schedule()
        )
