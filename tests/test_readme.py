"""The README's Python examples run as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.slow
def test_readme_cvn_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(_python_blocks()[0], "README.md[python 0]", "exec"), {})
    out = capsys.readouterr().out
    assert "tensor(0.0417)" in out and "layer1.0.relu.0" in out


@pytest.mark.slow
def test_readme_dissection_example_runs(tmp_path, monkeypatch, capsys):
    """The dissection example, on a tiny training run made where the README expects it."""
    from discover.training import TrainConfig, train

    monkeypatch.chdir(tmp_path)
    train(
        TrainConfig(
            model="small_resnet",
            U=8,
            dataset="shapes",
            epochs=1,
            batch_size=32,
            dataset_kwargs={"n": 64, "image_size": 32},
            eval_samples=1,
            model_kwargs={"img_size": 32},
            out="runs/shapes-u8",
        ),
        progress=False,
    )
    code = _python_blocks()[1].replace("n=2000", "n=120")
    exec(compile(code, "README.md[python 1]", "exec"), {})
    out = capsys.readouterr().out
    assert (
        "layer3.1.act2" in out
        and (tmp_path / "runs/shapes-u8/dissection/descriptions.csv").is_file()
    )
