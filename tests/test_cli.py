import ast
import subprocess
import sys

import pytest

from discover import __version__
from discover.cli import main


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"discover {__version__}"
    assert main([]) == 0
    assert "sparsity" in capsys.readouterr().out


def test_console_script_runs_as_module():
    out = subprocess.run(
        [sys.executable, "-m", "discover", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert __version__ in out


def test_sparsity_command_prints_one_over_U(capsys):
    assert main(["sparsity", "small_vit", "-U", "8", "--num-classes", "5"]) == 0
    out = capsys.readouterr().out
    assert "blocks.5.mlp.act" in out and "0.1250" in out
    assert "every active fraction == 1/U = 0.1250: yes" in out


def test_models_and_convert_commands(capsys, tmp_path):
    assert main(["models", "small_*", "--builtin"]) == 0
    assert capsys.readouterr().out.split() == ["small_resnet", "small_vit"]
    target = tmp_path / "m.safetensors"
    assert main(["convert", "small_resnet", "-U", "2", "--save", str(target)]) == 0
    assert "13 LWTA layer(s)" in capsys.readouterr().out and target.exists()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["sparsity", "resnet19"], "unknown model name 'resnet19'. Closest names: resnet18"),
        (["sparsity", "small_vit", "-U", "7"], "layer 'blocks.0.mlp.act' has K=384"),
        (["sparsity", "small_vit", "-U", "0"], "-U: expected an integer >= 1, got 0"),
        (["convert", "small_vit", "--model-arg", "depth"], "--model-arg expects KEY=VALUE"),
        (
            ["convert", "small_vit", "--checkpoint", "missing.safetensors"],
            "checkpoint file not found",
        ),
    ],
)
def test_user_mistakes_give_one_line_errors(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


# -- the CLI is thin: the API holds every default -----------------------------------------------

# Options with no API parameter behind them, which may keep an argparse default of their own:
# output formats of the command line itself.
CLI_ONLY_OPTIONS = {"--json", "--debug"}


def _add_argument_calls():
    from pathlib import Path

    import discover.cli

    for path in sorted(Path(discover.cli.__file__).parent.glob("*.py")):  # the cli package
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument":
                names = [a.value for a in node.args if isinstance(a, ast.Constant)]
                yield node, names, {k.arg: k.value for k in node.keywords}


def test_cli_options_take_their_defaults_from_the_api():
    """Parsed from the source: an option's argparse default is None (not given: the API's
    default applies), and a store_true/store_false flag says so explicitly, since its
    implicit default (False/True) would shadow the API's."""
    offences, seen = [], 0
    for node, names, keywords in _add_argument_calls():
        seen += 1
        if set(names) & CLI_ONLY_OPTIONS:
            continue
        default = keywords.get("default")
        action = keywords.get("action")
        flag = action is not None and getattr(action, "value", None) in (
            "store_true",
            "store_false",
        )
        if default is None:
            if flag:
                offences.append(f"line {node.lineno} {names}: a flag without default=None")
        elif not (isinstance(default, ast.Constant) and default.value is None):
            offences.append(f"line {node.lineno} {names}: default {ast.unparse(default)}")
    assert seen > 50
    assert not offences, "options with a default of their own:\n" + "\n".join(offences)


def test_help_shows_the_api_defaults():
    import inspect

    from discover.cli import build_parser
    from discover.dissection.core import dissect
    from discover.evaluation.classification import evaluate_run

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for command, api, flag, parameter in [
        ("evaluate", evaluate_run, "--batch-size", "batch_size"),
        ("evaluate", evaluate_run, "--policy", "policy"),
        ("dissect", dissect, "--batch-size", "batch_size"),
        ("dissect", dissect, "--concepts", "concepts"),
    ]:
        action = next(a for a in commands[command]._actions if flag in a.option_strings)
        default = inspect.signature(api).parameters[parameter].default
        assert action.default is None and f"default: {default}" in action.help


def test_options_not_given_are_not_passed(monkeypatch, capsys, tmp_path):
    import functools

    import discover.cli.evaluate as cli

    calls = []

    class Result:
        def save(self, path=None):
            calls.append(("save", path))
            return tmp_path / "eval.json"

        def summary(self):
            return "summary"

    @functools.wraps(cli.evaluate_run)  # the help reads its defaults from the signature
    def fake_evaluate_run(run, **options):
        calls.append((run, options))
        return Result()

    monkeypatch.setattr(cli, "evaluate_run", fake_evaluate_run)
    assert main(["evaluate", "RUN"]) == 0
    assert calls == [("RUN", {"progress": True}), ("save", None)]
    calls.clear()
    assert main(["evaluate", "RUN", "--batch-size", "8", "--policy", "sample"]) == 0
    assert calls[0] == ("RUN", {"batch_size": 8, "policy": "sample", "progress": True})


def test_errors_name_the_commands_flags():
    from discover.cli import _with_flags

    flags = {"--similarity-arg", "--allow-stale-dissection", "--resume", "--dissection", "-U"}
    assert (
        _with_flags("similarity_params: similarity 'cos': unknown option 'x'", flags)
        == "--similarity-arg: similarity 'cos': unknown option 'x'"
    )
    assert _with_flags("stale; allow_mismatch=True uses it anyway", flags) == (
        "stale; --allow-stale-dissection uses it anyway"
    )
    assert _with_flags("resume=True: no training state", flags) == "--resume: no training state"
    assert _with_flags("or pass dissection='DIR'", flags) == "or pass --dissection DIR"
    assert _with_flags("U: must be >= 2", flags) == "-U: must be >= 2"
    # a parameter the command has no flag for stays a parameter
    assert _with_flags("keep_scores=True is needed", flags) == "keep_scores=True is needed"
    assert _with_flags("out: give a folder", flags) == "out: give a folder"


# -- discover eval-descriptions --ground-truth ---------------------------------------------------


def test_eval_descriptions_ground_truth(shapes_dissection, tmp_path, capsys):
    import json
    import shutil

    from _helpers import SHAPES_PROBE
    from discover.evaluation import GroundTruthReport, evaluate_groundtruth

    folder = shutil.copytree(shapes_dissection[0], tmp_path / "dissection")
    probe_args = [a for k, v in SHAPES_PROBE.items() for a in ("--probe-arg", f"{k}={v}")]
    assert main(["eval-descriptions", str(folder), "--ground-truth", *probe_args]) == 0
    out = capsys.readouterr().out
    expected = evaluate_groundtruth(folder, shapes_dissection[1], save=False)
    assert expected.table() in out  # per layer: label AUPRC, label is best, monosemantic
    assert "label is best concept" in out and "monosemantic (best AUPRC > 0.75)" in out
    assert f"written: {folder / 'groundtruth.json'} and {folder / 'groundtruth_units.csv'}" in out
    assert GroundTruthReport.load(folder).summary() == expected.summary()

    # --out elsewhere, one layer, another bar; --json prints the report
    code = main(
        ["eval-descriptions", str(folder), "--ground-truth", *probe_args, "--layer", "fc",
         "--bar", "0.5", "--out", str(tmp_path / "gt"), "--json"]
    )  # fmt: skip
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and [layer["layer"] for layer in data["layers"]] == ["fc"]
    assert data["layers"][0]["bar"] == 0.5
    assert list(GroundTruthReport.load(tmp_path / "gt").layers) == ["fc"]
    assert list(GroundTruthReport.load(folder).layers) == ["layer2.0.act2", "fc"]  # untouched


@pytest.mark.parametrize(
    "extra,message",
    [
        ([], "error: give --classes (the final-layer protocol"),
        (
            ["--classes", "shapes_classes", "--probe-arg", "n=32"],
            "error: --probe-arg: only used with --ground-truth",
        ),
        (
            ["--ground-truth", "--probe-arg", "n=33", "--probe-arg", "image_size=16"],
            "error: --probe: not the probe set the dissection in",
        ),
        (
            ["--ground-truth", "--probe-arg", "n=32", "--probe-arg", "image_size=16", "--bar", "1"],
            "bar must be in [0, 1)",
        ),
    ],
)
def test_eval_descriptions_ground_truth_mistakes(shapes_dissection, extra, message, capsys):
    assert main(["eval-descriptions", str(shapes_dissection[0]), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (shapes_dissection[0] / "groundtruth.json").exists()


@pytest.mark.parametrize(("flag", "expected"), [("on", True), ("off", False), ("auto", "auto")])
def test_dissect_stream_flag_reaches_the_api(monkeypatch, tmp_path, flag, expected):
    import functools

    import discover.cli.dissect as cli

    seen = {}

    @functools.wraps(cli.dissect)  # the help reads its defaults from the signature
    def fake_dissect(model, layers, probe, **options):
        seen.update(options)
        raise SystemExit(0)  # stop before saving: only the options matter here

    monkeypatch.setattr(cli, "dissect", fake_dissect)
    argv = ["dissect", "--model", "small_resnet", "--layers", "fc", "--probe", "shapes",
            "--probe-arg", "n=8", "--out", str(tmp_path / "d"), "--stream", flag]  # fmt: skip
    with pytest.raises(SystemExit):
        main(argv)
    assert seen["stream"] == expected
