"""One error boundary in the command line (issue: no tracebacks for user mistakes).

Every user mistake is one line on stderr that names the thing and what was expected, exit
status 2, before any expensive work; an internal error says it is one and points to --debug.
"""

import json

import pytest

from _helpers import train_tiny
from discover.cli import main

TINY_MODEL = [
    "--model-arg",
    "img_size=16",
    "--model-arg",
    "widths=[8,16]",
    "--model-arg",
    "depths=[1,1]",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli-errors") / "run"
    return train_tiny(out, U=4).out


def _fails(capsys, argv: list[str], *expected: str) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    err = captured.err.rsplit("\r", 1)[-1].strip()  # what stays on screen after a progress bar
    assert code == 2, (code, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for text in expected:
        assert text in err, err
    return err


def _dissect(run, tmp_path, *extra: str) -> list[str]:
    return [
        "dissect",
        "--run",
        str(run),
        "--layers",
        "fc",
        "--probe",
        "shapes",
        "--probe-arg",
        "image_size=16",
        "--probe-arg",
        "n=40",
        "--concepts",
        "shapes",
        "--embedder",
        "annotations",
        "--no-cache",
        "--out",
        str(tmp_path / "d"),
        *extra,
    ]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--batch-size", "0"], "--batch-size: expected an integer >= 1, got 0"),
        (["--epochs", "0"], "--epochs: expected an integer >= 1, got 0"),
        (["--device", "banana"], "device must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
        (["--device", "cuda"], "CUDA is not available"),
        (["--model", "small_vit", "--model-arg", "img_size=abc"], "model 'small_vit' rejected"),
        (["--model-arg", "nonsense=1", *TINY_MODEL], "nonsense"),
    ],
)
def test_train_mistakes_are_one_line(capsys, tmp_path, argv, expected):
    _fails(capsys, ["train", "--out", str(tmp_path / "r"), *argv], expected)
    assert not (tmp_path / "r").exists()


def test_invalid_yaml_and_broken_json_name_the_file(capsys, tmp_path, run):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    _fails(capsys, ["train", "--config", str(bad), "--out", str(tmp_path / "r")], str(bad), "YAML")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"train": {')
    (broken / "best.safetensors").write_bytes(b"")
    _fails(capsys, ["evaluate", str(broken)], str(broken / "config.json"), "not valid JSON")


def test_truncated_checkpoint_is_named(capsys, tmp_path, run):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    data = (copy / "best.safetensors").read_bytes()
    (copy / "best.safetensors").write_bytes(data[: len(data) // 2])
    _fails(capsys, ["evaluate", str(copy)], str(copy / "best.safetensors"), "damaged")


@pytest.mark.parametrize(
    "extra, expected",
    [
        (
            # the API names similarity_params, the CLI its flag
            ["--similarity", "soft_wpmi", "--similarity-arg", "bogus=1"],
            "--similarity-arg: similarity 'soft_wpmi': unknown option 'bogus'",
        ),
        (
            ["--similarity", "soft_wpmi", "--similarity-arg", "top_k=abc"],
            "option top_k expects int",
        ),
        (["--abstain-p", "often"], "--abstain-p: expected a number or 'none'"),
        (["--abstain-p", "1.5"], "abstain_p must be in (0, 1]"),
        (["--probe-arg", "nonsense=1"], "nonsense"),
        (["--device", "banana"], "device must be"),
    ],
)
def test_dissect_mistakes_fail_before_recording(
    capsys, tmp_path, run, monkeypatch, extra, expected
):
    import discover.dissection.core as dissection

    def no_recording(*args, **kwargs):  # the check must come before the expensive part
        raise AssertionError("recording started before the arguments were checked")

    monkeypatch.setattr(dissection, "record", no_recording)
    _fails(capsys, _dissect(run, tmp_path, *extra), expected)


def test_concept_file_that_is_a_folder(capsys, tmp_path, run):
    err = _fails(
        capsys,
        [*_dissect(run, tmp_path)[:-2], "--concepts", str(tmp_path), "--out", str(tmp_path / "d")],
    )
    assert "folder" in err or "directory" in err


@pytest.mark.parametrize(
    "error", [ZeroDivisionError("boom"), KeyError("model"), ValueError("boom")], ids=repr
)
def test_internal_errors_point_to_debug(capsys, monkeypatch, error):
    """Issue 22: an internal KeyError or ValueError used to be printed as a user mistake
    ("error: 'model'", exit 2); only discover's own error types are."""
    import discover.cli as cli

    def broken(args):
        raise error

    monkeypatch.setattr(cli, "build_parser", _parser_with(cli.build_parser, broken))
    assert main(["sparsity", "small_vit"]) == 1
    err = capsys.readouterr().err
    assert f"internal error: {type(error).__name__}: " in err and "--debug" in err
    with pytest.raises(type(error)):
        main(["--debug", "sparsity", "small_vit"])


def test_discover_errors_are_one_line_user_errors(capsys, monkeypatch):
    import discover
    import discover.cli as cli

    def mistake(args):
        raise discover.InputError("widgets: expected 3, got 4")

    monkeypatch.setattr(cli, "build_parser", _parser_with(cli.build_parser, mistake))
    _fails(capsys, ["sparsity", "small_vit"], "error: widgets: expected 3, got 4")
    assert issubclass(discover.InputError, ValueError)
    assert issubclass(discover.InputError, discover.DiscoverError)


def _parser_with(build, handler):
    def build_broken():
        parser = build()
        parser.set_defaults(_run=None)
        for action in parser._subparsers._group_actions:
            for sub in action.choices.values():
                sub.set_defaults(_run=handler)
        return parser

    return build_broken


def test_explain_conditioning_needs_an_embedder_that_can_look(capsys, tmp_path, run):
    from PIL import Image

    assert main(_dissect(run, tmp_path)) == 0
    Image.new("RGB", (16, 16), "red").save(tmp_path / "red.png")
    capsys.readouterr()
    explained = ["explain", str(tmp_path / "red.png"), "--run", str(run)]
    explained += ["--dissection", str(tmp_path / "d")]
    _fails(capsys, [*explained, "--embedder", "dissection"], "ground-truth annotations")
    # a dissection folder is untrusted: the embedder it records may not open a file elsewhere
    data = json.loads((tmp_path / "d" / "dissection.json").read_text())
    data["meta"]["embedder"].update(kind="vlm", spec="open_clip:ViT-B-32:/etc/passwd")
    (tmp_path / "d" / "dissection.json").write_text(json.dumps(data))
    _fails(
        capsys,
        [*explained, "--embedder", "dissection"],
        "records the embedder 'open_clip:ViT-B-32:/etc/passwd'",
        "a dissection may not choose files to open",
    )
    data["meta"]["embedder"].update(spec="hf:../../models/clip")
    (tmp_path / "d" / "dissection.json").write_text(json.dumps(data))
    _fails(capsys, [*explained, "--embedder", "dissection"], "outside the dissection folder")
    inside = f"open_clip:ViT-B-32:{tmp_path / 'd' / 'missing.safetensors'}"
    data["meta"]["embedder"].update(spec=inside)
    (tmp_path / "d" / "dissection.json").write_text(json.dumps(data))
    err = _fails(capsys, [*explained, "--embedder", "dissection"], "missing.safetensors")
    assert "may not choose" not in err  # a file inside the folder is the dissection's own
    _fails(capsys, [*explained, "--min-percentile", "high"], "--min-percentile: expected a number")
    _fails(capsys, [*explained, "--min-percentile", "2"], "min_percentile must be in [0, 1]")
    _fails(
        capsys, [*explained, "--candidates", "0"], "--candidates: expected an integer >= 1, got 0"
    )


def test_a_run_with_nan_weights_is_a_one_line_error(run, tmp_path, capsys):
    """Issue 22: evaluate used to report loss nan and exit 0; explain printed "(nan %)"."""
    broken, key = _with_weight(run, tmp_path / "broken", float("nan"), lambda v: True)
    _fails(capsys, ["evaluate", str(broken)], "non-finite weights", key)


def _with_weight(run, out, value, pick):
    """A copy of ``run`` whose first floating tensor that ``pick`` accepts is set to ``value``:
    ``(folder, tensor name)``."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    shutil.copytree(run, out)
    weights = out / "best.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        metadata = f.metadata()
    state = load_file(str(weights))
    key = next(k for k, v in state.items() if v.is_floating_point() and pick(v))
    state[key][...] = value
    save_file(state, str(weights), metadata=metadata)
    return out, key


def test_activations_that_overflow_are_stopped_where_they_appear(run, tmp_path, capsys):
    """Issue 22: finite weights can still give NaN or infinite activations (here a weight of
    3e38 overflows). Dissect stops at the recording, evaluate and explain at the logits;
    --allow-nonfinite dissects with a warning and leaves those units unlabelled."""
    from PIL import Image

    broken, _ = _with_weight(run, tmp_path / "overflow", 3e38, lambda v: v.dim() == 4)
    _fails(capsys, ["evaluate", str(broken)], "evaluate: the model's outputs are NaN or infinite")
    argv = _dissect(broken, tmp_path)
    err = _fails(capsys, argv, "layer 'fc' produced NaN or infinite activations", "first at")
    assert "--allow-nonfinite" in err  # the API's allow_nonfinite=True shown as the flag
    assert not (tmp_path / "d").exists()
    with pytest.warns(UserWarning, match="NaN or infinite activations were recorded"):
        assert main([*argv, "--allow-nonfinite", "--null-repeats", "0"]) == 0
    rows = (tmp_path / "d" / "descriptions.csv").read_text().splitlines()
    assert len(rows) > 1 and all("not finite" in row for row in rows[1:]), rows[:3]
    Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp_path / "red.png")
    _fails(
        capsys,
        ["explain", str(tmp_path / "red.png"), "--run", str(broken)]
        + ["--dissection", str(tmp_path / "d")],
        "outputs are NaN or infinite for 1 image(s) (",
        "red.png)",
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"model_kwargs": {"pretrained": True}}, "'pretrained'"),
        ({"model_kwargs": {"checkpoint_path": "/etc/passwd"}}, "'checkpoint_path'"),
        ({"model_kwargs": {"pretrained_cfg_overlay": {"hf_hub_id": "evil/x"}}}, "'pretrained"),
        ({"model_kwargs": {"img_size": "../../etc"}}, "'img_size'"),
        ({"name": "hf-hub:evil/model"}, "hf-hub:evil/model"),
        ({"dataset_kwargs": {"download": True}}, "data set option 'download'"),
        ({"dataset_kwargs": {"root": "/etc"}}, "data set option 'root'"),
    ],
    ids=[
        "pretrained",
        "checkpoint_path",
        "cfg_overlay",
        "path_value",
        "hub_name",
        "download",
        "dataset_root",
    ],  # fmt: skip
)
def test_a_crafted_run_config_is_data_not_instructions(
    run, tmp_path, capsys, monkeypatch, change, expected
):
    """Issue 22: a run folder's config.json could make evaluate contact a hub or open a file
    of the author's choosing. Now it is refused, naming the file and the key, before any
    model is built, and no connection is attempted."""
    import shutil
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    crafted = tmp_path / "crafted"
    shutil.copytree(run, crafted)
    config = json.loads((crafted / "config.json").read_text())
    if "dataset_kwargs" in change:
        config["train"]["dataset_kwargs"].update(change["dataset_kwargs"])
    else:
        config["model"].update(
            {k: ({**config["model"]["model_kwargs"], **v} if k == "model_kwargs" else v)
             for k, v in change.items()}
        )  # fmt: skip
    (crafted / "config.json").write_text(json.dumps(config))
    _fails(capsys, ["evaluate", str(crafted)], "config.json", expected)


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda c: c.pop("model"), "model must be an object"),
        (lambda c: c["model"].pop("U"), "model.U must be an integer >= 1; it is missing"),
        (lambda c: c["model"].update(U="four"), "model.U must be an integer >= 1"),
        (lambda c: c["model"].update(num_classes=10**9), "class_names lists"),
        (lambda c: c["model"].update(tau=float("inf")), "model.tau must be a positive number"),
        (lambda c: c["model"]["model_kwargs"].update(U=2), "'U' belongs in the model section"),
        (
            lambda c: c["model"]["model_kwargs"].update(widths=[65536, 65536]),
            "describes a model with",
        ),
        (lambda c: c["model"]["model_kwargs"].update(depths=[10**7, 1]), "at most 65536"),
        (lambda c: c["recipe"].update(lr_typo=1), "unknown recipe option(s): lr_typo"),
        (lambda c: c.update(class_names="circle"), "class_names must be a list"),
        (lambda c: c.update(data=[1]), "data must be an object"),
    ],
    ids=[
        "no_model",
        "no_U",
        "U_text",
        "huge_num_classes",
        "tau_inf",
        "kwarg_collides",
        "huge_widths",
        "huge_depth",
        "recipe_unknown",
        "class_names_text",
        "data_list",
    ],
)
def test_a_damaged_run_config_is_a_one_line_error(run, tmp_path, capsys, damage, expected):
    """Issue 22: damaged configs ended in "internal error" or a KeyError shown as a user
    mistake, and one tried to allocate 30 GB. Now each is an error naming config.json and the
    key, raised before the model is built (a model larger than its weights is sized on the
    meta device first)."""
    import resource
    import shutil

    crafted = tmp_path / "damaged"
    shutil.copytree(run, crafted)
    config = json.loads((crafted / "config.json").read_text())
    damage(config)
    (crafted / "config.json").write_text(json.dumps(config))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    err = _fails(capsys, ["evaluate", str(crafted)], "config.json", expected)
    assert "internal error" not in err
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 500, f"refusing the config allocated {grown_mb:.0f} MB"


def test_a_damaged_training_log_is_a_one_line_error(run, tmp_path, capsys):
    import shutil

    crafted = tmp_path / "damaged-log"
    shutil.copytree(run, crafted)
    (crafted / "log.jsonl").write_text('{"epoch": 0}\n{"epoch": 1, "val_t')
    _fails(capsys, ["evaluate", str(crafted)], "log.jsonl", "not a JSON line per epoch")


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--batch-size", "0"], "--batch-size: expected an integer >= 1, got 0"),
        (["--seed", "-1"], "--seed: expected an integer >= 0, got -1"),
        (["--null-repeats", "-3"], "--null-repeats: expected an integer >= 0"),
        (["--out", "FILE/d"], "is a file, not a folder"),
        (["--out", "FILE"], "exists and is not a folder"),
        (["--out", "/sys/discover-test/d"], "cannot write in /sys"),
        (["--cache-dir", "FILE/cache"], "--cache-dir"),
    ],
    ids=["batch0", "seed-1", "null-3", "out_under_file", "out_is_file", "out_unwritable", "cache"],
)
def test_dissect_options_are_checked_before_any_work(
    run, tmp_path, capsys, monkeypatch, extra, expected
):
    """Issue 22: a read-only --out or one under a file was found after recording and scoring;
    --batch-size 0 was accepted by some commands. Now the command line checks every output
    and every numeric range before the command starts."""
    import discover.cli as cli

    def no_work(args):
        raise AssertionError("the dissection started")

    monkeypatch.setattr(cli, "build_parser", _parser_with(cli.build_parser, no_work))
    (tmp_path / "FILE").write_text("a file")
    extra = [e.replace("FILE", str(tmp_path / "FILE")) for e in extra]
    _fails(capsys, [*_dissect(run, tmp_path), *extra], expected)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["train", "--batch-size", "0"], "--batch-size: expected an integer >= 1"),
        (["train", "--lr", "nan"], "--lr: expected a number > 0, got nan"),
        (["train", "--label-smoothing", "1"], "--label-smoothing: expected a number in [0, 1)"),
        (["train", "--out", "FILE/run"], "is a file"),
        (["evaluate", "RUN", "--batch-size", "0"], "--batch-size"),
        (["evaluate", "RUN", "--json", "FILE/x.json"], "--json"),
        (["evaluate", "RUN", "--json", "/sys/discover-test.json"], "cannot write in /sys"),
        (["explain", "FILE", "--run", "RUN", "--top", "-1"], "--top: expected an integer >= 0"),
        (["demo", "--threads", "0"], "--threads: expected an integer >= 1"),
        (["demo", "--out", "FILE/demo"], "is a file"),
        (["planted", "--noise", "0.1", "-0.5"], "--noise: expected a number >= 0, got -0.5"),
        (["sparsity", "small_resnet", "-U", "0"], "-U: expected an integer >= 1, got 0"),
    ],
    ids=lambda v: "_".join(v) if isinstance(v, list) else None,
)
def test_every_command_checks_ranges_and_outputs_first(run, tmp_path, capsys, argv, expected):
    (tmp_path / "FILE").write_text("a file")
    argv = [a.replace("FILE", str(tmp_path / "FILE")).replace("RUN", str(run)) for a in argv]
    _fails(capsys, argv, expected)


def test_an_unwritable_default_output_is_refused_before_evaluating(
    run, tmp_path, capsys, monkeypatch
):
    import functools

    import discover.cli.evaluate as cli

    def unwritable(path, what, **kwargs):
        raise cli.InputError(f"{what} {path}: cannot write in {path} (Read-only file system)")

    def no_work(*args, **kwargs):
        raise AssertionError("the evaluation started")

    monkeypatch.setattr(cli, "check_writable", unwritable)
    monkeypatch.setattr(cli, "evaluate_run", functools.wraps(cli.evaluate_run)(no_work))
    _fails(capsys, ["evaluate", str(run)], "the run folder", "pass --json PATH")
