"""The README's Python examples run as written, and the figures it quotes come from results
files."""

import json
import re
from pathlib import Path

import pytest

from _helpers import README, readme_python_block, train_tiny_shapes
from discover.demo import DemoResult

RESULTS = README.parent / "benchmarks" / "results"


@pytest.mark.slow
def test_readme_cvn_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = readme_python_block('create_model("deit_tiny_patch16_224"')
    exec(compile(code, "README.md[cvn]", "exec"), {})
    out = capsys.readouterr().out
    assert "tensor(0.0417)" in out and "layer1.0.relu.0" in out


@pytest.mark.slow
def test_readme_dissection_and_report_examples_run(tmp_path, monkeypatch, capsys):
    """The dissection example, then the report example that continues it, on a tiny run."""
    monkeypatch.chdir(tmp_path)
    train_tiny_shapes("runs/shapes-u8")
    namespace: dict = {}
    code = readme_python_block('result.save("runs/shapes-u8/dissection")')
    exec(compile(code.replace("n=2000", "n=120"), "README.md[dissection]", "exec"), namespace)
    out = capsys.readouterr().out
    assert (
        "layer3.1.act2" in out
        and (tmp_path / "runs/shapes-u8/dissection/descriptions.csv").is_file()
    )
    code = readme_python_block("evaluate_localization(model")
    exec(compile(code.replace("n=2000", "n=120"), "README.md[localization]", "exec"), {})
    assert "layer3.1.act2: 128 units" in capsys.readouterr().out
    assert (tmp_path / "runs/shapes-u8/dissection/localization.json").is_file()
    code = readme_python_block("write_report(")
    exec(compile(code, "README.md[report]", "exec"), namespace)
    assert capsys.readouterr().out.strip().endswith("runs/shapes-u8/report/index.html")
    assert len(list((tmp_path / "runs/shapes-u8/report/explanations").glob("*.html"))) == 4


@pytest.mark.slow
def test_readme_evaluation_example_runs(tmp_path, monkeypatch, capsys):
    """The README's "Evaluating descriptions" example, on a tiny training run."""
    monkeypatch.chdir(tmp_path)
    train_tiny_shapes("runs/shapes-u8")
    code = readme_python_block("evaluate_descriptions(fc")
    code = code.replace("n=2000", "n=150").replace("units=20", "units=4")
    exec(compile(code, "README.md[evaluating descriptions]", "exec"), {})
    out = capsys.readouterr().out
    assert "final-layer protocol" in out and "simulation score" in out
    assert "planted-concept recovery" in out
    assert (tmp_path / "runs/shapes-u8/fc/description_scores.json").is_file()


def test_readme_deterministic_deployment_example_runs(capsys):
    code = readme_python_block('create_model("small_resnet", U=4, temperature=0.05)')
    exec(compile(code, "README.md[deterministic]", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert 0.25 <= float(out[0]) <= 1.0 and out[1] == "tensor(0.2500)"


def _readme_block(containing: str) -> str:
    """The one fenced block (any language) of the README that contains ``containing``."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", README.read_text(), flags=re.S)
    found = [b for b in blocks if containing in b]
    assert len(found) == 1, f"{len(found)} README blocks contain {containing!r}"
    return found[0]


def test_readme_demo_summary_is_the_one_in_its_results_file():
    saved = json.loads((RESULTS / "demo.json").read_text())
    data = saved["result"]
    result = DemoResult(**{**data, "out": Path(data["out"]), "report": Path(data["report"])})
    assert _readme_block("final-layer descriptions").rstrip("\n") == result.summary()


def test_readme_links_into_the_results_resolve_and_results_carry_no_machine_paths():
    text = README.read_text()
    quoted = set(re.findall(r"benchmarks/results/[\w./-]+\w", text))
    assert quoted, "the README quotes no results file"
    missing = [q for q in quoted if not (README.parent / q).exists()]
    assert not missing, f"the README points to results that do not exist: {missing}"
    machine = re.compile(r"(/work/|/home/|/root/|/tmp/|/private/|[A-Z]:\\\\)")
    for path in [README, *RESULTS.rglob("*.md"), *RESULTS.rglob("*.json")]:
        hit = machine.search(path.read_text())
        assert hit is None, f"{path.name} holds a machine path: ...{hit.group(0)}..."
