"""discover installs like a library (issue 22): ranges, not pins; optional paths as extras; the
exact versions tested in constraints.txt; the wheel carries its data and works on its own."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_dependencies_are_ranges_and_optional_paths_are_extras():
    project = _pyproject()["project"]
    required = project["dependencies"]
    assert not [r for r in required if "==" in r], required
    torch = next(r for r in required if r.startswith("torch>"))
    assert torch == "torch>=2.14"  # the oldest torch this project is tested with
    names = {r.split(">")[0].split("=")[0].split("[")[0].lower() for r in required}
    for optional in ("open_clip_torch", "transformers", "sentence-transformers", "scikit-learn"):
        assert optional not in names, f"{optional} must be an extra"
    extras = project["optional-dependencies"]
    assert any(r.startswith("open_clip_torch") for r in extras["clip"])
    assert any(r.startswith("transformers") for r in extras["hf"])
    assert any(r.startswith("sentence-transformers") for r in extras["conse"])
    assert {"pytest>=8", "scikit-learn>=1.3"} <= set(extras["test"])


def test_constraints_pin_what_make_installs():
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pins = dict(line.split("==") for line in lines if line and not line.startswith("#"))
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    assert not any(name.lower() == "discover" for name in pins)
    makefile = (ROOT / "Makefile").read_text()
    installs = [line for line in makefile.splitlines() if "$(PIP) install" in line]
    assert len(installs) == 3 and all("-c constraints.txt" in line for line in installs)


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_venv_and_dissects(tmp_path):
    """Build the wheel, install it with its extras into a fresh virtual environment with the
    constraints file, then run `discover --version` and a tiny dissection from outside the
    repository. The fresh venv sees the already-installed dependency stack (torch and the
    rest, about 5.7 GB) through a .pth file, so pip resolves every requirement against the
    constraints without copying it; discover itself comes only from the wheel."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
        + ["-w", str(tmp_path / "dist"), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("discover-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        files = set(archive.namelist())
    for data in (
        "discover/py.typed",
        "discover/nn/csrc/lwta.c",
        "discover/dissection/csrc/similarity.c",
        "discover/dissection/concept_lists/20k.txt",
        "discover/report/templates/style.css",
    ):
        assert data in files, data

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(purelib) / "_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [*pip, "--python", str(python), "install", "--no-index", "-q"]
        + ["-c", str(ROOT / "constraints.txt"), f"{wheel}[all]"],
        check=True,
        capture_output=True,
    )
    check = subprocess.run([*pip, "--python", str(python), "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "DISCOVER_CACHE": str(tmp_path / "cache")}
    where = subprocess.run(
        [python, "-c", "import discover; print(discover.__file__)"],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert where.startswith(purelib), where  # the wheel's copy, not the repository's
    version = subprocess.run(
        [venv / "bin" / "discover", "--version"], env=env, capture_output=True, text=True
    )
    assert version.returncode == 0 and version.stdout.startswith("discover "), version
    out = tmp_path / "dissection"
    dissect = subprocess.run(
        [venv / "bin" / "discover", "dissect", "--model", "small_resnet", "-U", "2"]
        + ["--num-classes", "4", "--model-arg", "img_size=16", "--model-arg", "widths=[8,16]"]
        + ["--model-arg", "depths=[1,1]", "--layers", "fc", "--probe", "shapes"]
        + ["--probe-arg", "n=40", "--probe-arg", "image_size=16", "--concepts", "shapes"]
        + ["--embedder", "annotations", "--no-cache", "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert dissect.returncode == 0, dissect.stderr[-2000:]
    assert "fc (4 units" in dissect.stdout
    rows = (out / "descriptions.csv").read_text().splitlines()
    assert len(rows) == 5  # a header and one row per unit
