"""The README's and the docs pages' examples run as written, the figures they quote come from
results files, and every relative link in them points to a file that exists."""

import json
import re
import shlex
import unicodedata
from pathlib import Path

import pytest
from PIL import Image

from _helpers import DOCS, README, ROOT, doc_block, doc_python_block, train_tiny_shapes
from discover.demo import DemoResult

RESULTS = ROOT / "benchmarks" / "results"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]


def _run(page: str, code: str, namespace: dict | None = None) -> None:
    exec(compile(code, f"{page}[example]", "exec"), {} if namespace is None else namespace)


def _save_shapes_image(path: str) -> None:
    from discover.data import ShapesWorld

    image, _ = ShapesWorld(n=1, image_size=32, split="test")[0]
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)


def test_readme_is_at_most_200_lines():
    assert len(README.read_text().splitlines()) <= 200


@pytest.mark.slow
def test_readme_python_quickstart_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = doc_python_block("README.md", "discover.TrainConfig(")
    for big, small in (('"n": 4000', '"n": 64'), ("epochs=3", "epochs=1, batch_size=32"), ("n=2000", "n=120"),
                       ('policy="argmax")', 'policy="argmax", limit=64)')):  # fmt: skip
        assert big in code
        code = code.replace(big, small)
    code = code.replace("discover.train(config)", "discover.train(config, progress=False)")
    _run("README.md", code)
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[1] == "0.25"  # exactly 1/U of act1 fired
    assert len(eval(out[1])) == 10  # one label per class unit
    assert "layer3.1.act2 [lwta]" in "\n".join(out[2:])
    assert (tmp_path / "runs/quickstart/dissection/descriptions.csv").is_file()


@pytest.mark.slow
def test_readme_command_line_quickstart_runs(tmp_path, monkeypatch, capsys):
    """Every `discover` line of the README's command-line quickstart, on small data (the demo
    line is left to tests/test_demo.py)."""
    from discover.cli import main

    monkeypatch.chdir(tmp_path)
    _save_shapes_image("star.png")
    block = doc_block("README.md", "discover train --model small_resnet -U 4", "bash")
    for big, small in (
        ("n=4000", "n=64"),
        ("--epochs 3", "--epochs 1 --batch-size 32"),
        ("n=2000", "n=120"),
    ):
        assert big in block
        block = block.replace(big, small)
    commands = [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").split("\n")]
    commands = [c for c in commands if c and c[1] != "demo"]
    assert [c[1] for c in commands] == ["train", "evaluate", "dissect", "explain"]
    for command in commands:
        args = command[1:] + (["--limit", "64"] if command[1] == "evaluate" else [])
        assert main(args) == 0, command
    assert "layer3.1.act2" in capsys.readouterr().out
    assert (tmp_path / "runs/cvn-u4/dissection/descriptions.csv").is_file()


@pytest.mark.slow
def test_cvn_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _run("python-api.md", doc_python_block("python-api.md", 'create_model("deit_tiny_patch16_224"'))
    out = capsys.readouterr().out
    assert "tensor(0.0417)" in out and "layer1.0.relu.0" in out


@pytest.mark.slow
def test_training_example_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = doc_python_block("training.md", "discover.TrainConfig(")
    for big, small in (
        ('"n": 8000', '"n": 64'),
        ("epochs=12", "epochs=1, batch_size=32"),
        ("samples=6)", "samples=1, limit=32)"),
    ):
        assert big in code
        code = code.replace(big, small)
    _run(
        "training.md",
        code.replace("discover.train(config)", "discover.train(config, progress=False)"),
    )
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("['circle', 'square'") and "('act1', 0.125)" in out[1]


@pytest.mark.slow
def test_dissection_and_report_examples_run(tmp_path, monkeypatch, capsys):
    """The dissection example, then the localization and report examples that continue it, on
    a tiny run."""
    monkeypatch.chdir(tmp_path)
    train_tiny_shapes("runs/shapes-u8")
    namespace: dict = {}
    code = doc_python_block("dissection.md", 'result.save("runs/shapes-u8/dissection")')
    _run("dissection.md", code.replace("n=2000", "n=120"), namespace)
    out = capsys.readouterr().out
    assert (
        "layer3.1.act2" in out
        and (tmp_path / "runs/shapes-u8/dissection/descriptions.csv").is_file()
    )
    code = doc_python_block("evaluation.md", "evaluate_localization(model")
    _run("evaluation.md", code.replace("n=2000", "n=120"))
    assert "layer3.1.act2: 128 units" in capsys.readouterr().out
    assert (tmp_path / "runs/shapes-u8/dissection/localization.json").is_file()
    _run("explanations.md", doc_python_block("explanations.md", "write_report("), namespace)
    assert capsys.readouterr().out.strip().endswith("runs/shapes-u8/report/index.html")
    assert len(list((tmp_path / "runs/shapes-u8/report/explanations").glob("*.html"))) == 4


@pytest.mark.slow
def test_evaluation_example_runs(tmp_path, monkeypatch, capsys):
    """The "Evaluating descriptions" example, on a tiny training run."""
    monkeypatch.chdir(tmp_path)
    train_tiny_shapes("runs/shapes-u8")
    code = doc_python_block("evaluation.md", "evaluate_descriptions(fc")
    code = code.replace("n=2000", "n=150").replace("units=20", "units=4")
    _run("evaluation.md", code)
    out = capsys.readouterr().out
    assert "final-layer protocol" in out and "simulation score" in out
    assert "planted-concept recovery" in out
    assert (tmp_path / "runs/shapes-u8/fc/description_scores.json").is_file()


def test_deterministic_deployment_example_runs(capsys):
    code = doc_python_block("concepts.md", 'create_model("small_resnet", U=4, temperature=0.05)')
    _run("concepts.md", code)
    out = capsys.readouterr().out.splitlines()
    assert 0.25 <= float(out[0]) <= 1.0 and out[1] == "tensor(0.2500)"


def test_demo_summary_is_the_one_in_its_results_file():
    saved = json.loads((RESULTS / "demo.json").read_text())
    data = saved["result"]
    result = DemoResult(**{**data, "out": Path(data["out"]), "report": Path(data["report"])})
    block = doc_block("getting-started.md", "final-layer descriptions", "")
    assert block.rstrip("\n") == result.summary()


# --- links -------------------------------------------------------------------------------

_FENCE = re.compile(r"^```.*?^```", flags=re.S | re.M)
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _prose(path: Path) -> str:
    """The Markdown of ``path`` without its fenced code blocks and code spans."""
    return re.sub(r"`[^`\n]*`", "", _FENCE.sub("", path.read_text()))


def _slug(heading: str) -> str:
    """The anchor Python-Markdown's toc (the docs site) gives a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").replace("*", "")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(path: Path) -> set[str]:
    headings = re.findall(r"^#+ (.+)$", _FENCE.sub("", path.read_text()), flags=re.M)
    return {_slug(h) for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    """Every relative link (and image) of the README and of docs/ points to a file that exists,
    and a link to a heading of a Markdown page to a heading that exists there."""
    broken = []
    for target in _LINK.findall(_prose(page)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or ROOT.resolve() not in file.parents:
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"


def test_quoted_results_files_exist_and_nothing_carries_a_machine_path():
    quoted = set()
    for page in PAGES:
        text = page.read_text()
        quoted |= {(page, q) for q in re.findall(r"(?:\.\./)?benchmarks/results/[\w./-]+\w", text)}
    assert any(page == README for page, _ in quoted), "the README quotes no results file"
    missing = [
        q for page, q in quoted if not (page.parent / q).exists() and not (ROOT / q).exists()
    ]
    assert not missing, f"pages point to results that do not exist: {missing}"
    machine = re.compile(r"(/work/|/home/|/root/|/tmp/|/private/|[A-Z]:\\\\)")
    for path in [*PAGES, *RESULTS.rglob("*.md"), *RESULTS.rglob("*.json")]:
        hit = machine.search(path.read_text())
        assert hit is None, f"{path.name} holds a machine path: ...{hit.group(0)}..."
