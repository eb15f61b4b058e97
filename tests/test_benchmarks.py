"""The benchmark scripts: public imports only, no ``sys.path`` edits, and their shared module."""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))
SCRIPT_MODULES = {path.stem for path in SCRIPTS}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _offences(path: Path) -> list[str]:
    """Imports of private names from ``discover`` or another benchmark, and ``sys.path`` use."""
    tree = ast.parse(path.read_text(), filename=str(path))
    guarded = set()  # names bound to discover modules or benchmark modules
    offences = []
    for node in ast.walk(tree):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                root = alias.name.split(".")[0]
                if root == "discover" or root in SCRIPT_MODULES:
                    if any(_private(part) for part in alias.name.split(".")):
                        offences.append(f"{where} imports private module {alias.name}")
                    guarded.add(alias.asname or root)
                if alias.name == "site":
                    offences.append(f"{where} imports site (sys.path edits)")
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            module = node.module
            root = module.split(".")[0]
            if root == "discover" or root in SCRIPT_MODULES:
                if any(_private(part) for part in module.split(".")):
                    offences.append(f"{where} imports from private module {module}")
                for alias in node.names:
                    if _private(alias.name):
                        offences.append(f"{where} imports private {alias.name} from {module}")
                    guarded.add(alias.asname or alias.name)
            if module == "sys" and any(alias.name == "path" for alias in node.names):
                offences.append(f"{where} imports sys.path")
        elif isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "sys" and node.attr == "path":
                offences.append(f"{where} uses sys.path")
    for node in ast.walk(tree):  # private attributes of what was imported from them
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in guarded
            and _private(node.attr)
        ):
            offences.append(f"{path.name}:{node.lineno} uses private {node.value.id}.{node.attr}")
    return offences


def test_there_are_benchmark_scripts():
    assert {"common", "accuracy", "claims", "dissect_speed", "lwta_speed"} <= SCRIPT_MODULES


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_imports_only_public_names_and_leaves_sys_path_alone(path):
    offences = _offences(path)
    assert not offences, "\n".join(offences)


def test_the_checker_catches_what_it_forbids(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import sys\n"
        "import discover.nn.lwta as lw\n"
        "from accuracy import _machine\n"
        "from discover._utils import CacheWarning\n"
        "from discover.nn import _private_thing\n"
        "sys.path.insert(0, 'x')\n"
        "lw._gumbel()\n"
        "ok = lw.__name__\n"
    )
    found = _offences(bad)
    assert len(found) == 5, found
    for text in ("_machine", "discover._utils", "_private_thing", "sys.path", "lw._gumbel"):
        assert any(text in line for line in found), (text, found)


@pytest.fixture(scope="module")
def common():
    spec = importlib.util.spec_from_file_location("benchmarks_common", BENCHMARKS / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_markdown_table(common):
    lines = common.markdown_table(["name", "U", "top-1"], [["dense", 1, "90.0"], ["cvn", 4, ""]])
    assert lines == [
        "| name | U | top-1 |",
        "|---|---|---|",
        "| dense | 1 | 90.0 |",
        "| cvn | 4 |  |",
    ]
    assert common.markdown_table(["a"], []) == ["| a |", "|---|"]
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        common.markdown_table(["a", "b", "c"], [["x", "y"]])


def test_write_json_and_command_line(common, tmp_path):
    path = common.write_json(tmp_path / "r.json", {"a": 1, "p": tmp_path})
    assert json.loads(path.read_text()) == {"a": 1, "p": str(tmp_path)}
    assert path.read_text().endswith("}\n") and not (tmp_path / "r.json.tmp").exists()
    command = common.command_line(["--out", "a b"])
    assert command.startswith("python ") and command.endswith(" --out 'a b'")
