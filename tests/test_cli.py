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
        (["sparsity", "small_vit", "-U", "0"], "U must be an integer >= 1"),
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
