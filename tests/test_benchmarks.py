"""The benchmark scripts: public imports only, no ``sys.path`` edits, and their shared module."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
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
    return _script("common")


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


def test_timing_harness_rotates_drops_warmup_and_pairs_rounds(common):
    calls = []
    variants = {name: (lambda name=name: calls.append(name) or name) for name in "abc"}
    rounds = common.timed_rounds(variants, 2, warmup=1, keep=True)
    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # start rotates each round
    assert {n: len(t) for n, t in rounds.seconds.items()} == {"a": 2, "b": 2, "c": 2}
    assert all(len(v) == 2 for v in [*rounds.cpu_seconds.values(), *rounds.minor_faults.values()])
    assert rounds.results == {"a": "a", "b": "b", "c": "c"}
    calls.clear()
    common.timed_rounds(variants, 2, orders=[["c", "a", "b"], ["b", "a", "c"]])
    assert calls == ["c", "a", "b", "b", "a", "c"]
    with pytest.raises(ValueError, match="1 orders for 0 \\+ 2 rounds"):
        common.timed_rounds(variants, 2, orders=[["a"]])
    assert common.quartiles([4.0]) == {"median": 4.0, "q1": 4.0, "q3": 4.0}
    assert common.quartiles([1.0, 2.0, 3.0, 4.0, 5.0]) == {"median": 3.0, "q1": 2.0, "q3": 4.0}
    assert common.round_ratios([2.0, 6.0], [1.0, 2.0]) == [2.0, 3.0]
    assert common.paired_ratio([2.0, 6.0, 4.0], [1.0, 2.0, 4.0])["median"] == 2.0
    assert common.median_seconds(lambda: None, 3) >= 0.0


def test_number_formats(common):
    assert common.pm(0.9123, 0.0045, scale=100) == "91.23 ± 0.45"
    assert common.pm(0.9123, scale=100, digits=1) == "91.2" and common.pm(None) == "n/a"
    assert common.mean_std([1.0, 3.0], digits=1) == "2.0 ± 1.4"
    assert common.mean_std([2.0]) == "2.00" and common.mean_std([]) == "-"
    assert common.interval(-0.4, -0.62, -0.18, 5) == "-0.40 [-0.62, -0.18] (n=5)"
    assert common.interval(-0.4, None, None, 1) == "-0.40 (n=1)"
    assert common.interval(0.1234, 0.0, 0.2, digits=3) == "+0.123 [+0.000, +0.200]"
    assert common.median_iqr(12.34, 11.9, 13.0, digits=1) == "12.3 (11.9-13.0)"
    assert common.percent(0.1234) == "12.3" and common.percent(None) == "n/a"
    assert common.percent(0.1234, 2) == "12.34"
    assert common.mean_of([1.0, None, 3.0]) == 2.0 and common.mean_of([None]) is None
    assert common.ci95_half_width([1.0]) is None
    assert common.ci95_half_width([1.0, 2.0, 3.0]) == pytest.approx(4.302653 / 3**0.5, rel=1e-6)
    assert (common.pass_fail(True), common.pass_fail(False)) == ("PASS", "FAIL")


def test_report_header(common):
    meta = {"command": "python x.py", "machine": "m", "git_head": "abc", "date": "d"}
    assert common.report_header("T", meta, took="; 2 min") == [
        "# T",
        "",
        "Command: `python x.py`  ",
        "Machine: m  ",
        "Commit: abc  ",
        "Date: d; 2 min  ",
    ]
    lines = common.report_header("T", {**meta, "git_dirty": True}, load_end="1.0, 1.0, 1.0")
    assert lines[4] == "Commit: abc (uncommitted changes under src/)  "
    assert lines[-1] == "Load average at end: 1.0, 1.0, 1.0  "


def test_process_pool_spawns_workers_with_the_threads_asked_for(monkeypatch):
    import os

    import torch

    before = "common" in sys.modules
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as a script has it: its workers import
    import common  # common by this name to run its initializer

    try:
        with common.process_pool(1, threads=1) as pool:
            assert pool.submit(torch.get_num_threads).result(timeout=120) == 1
            assert pool.submit(os.getpid).result(timeout=120) != os.getpid()
    finally:
        if not before:
            sys.modules.pop("common", None)


def _script(name: str):
    """``benchmarks/NAME.py`` as a module (scripts import ``accuracy`` and ``common`` by their
    script names, so the benchmarks folder is on ``sys.path`` while it loads)."""
    before = set(sys.modules)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(BENCHMARKS))
        spec = importlib.util.spec_from_file_location(
            f"benchmarks_{name}", BENCHMARKS / f"{name}.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while it loads
        try:
            spec.loader.exec_module(module)
        finally:
            sys.modules.pop(spec.name, None)
    for script in ("accuracy", "common"):  # script names, not packages: leave no trace
        if script not in before:
            sys.modules.pop(script, None)
    return module


@pytest.fixture(scope="module")
def claims():
    return _script("claims")


def _fake_run(root: Path, name: str, record: dict | None) -> None:
    (root / name).mkdir()
    (root / name / "config.json").write_text("{}")
    if record is not None:
        fields = {
            "family": "resnet", "variant": None, "train_seconds": 60.0, "top1_sample6": 0.9,
            "top1_sample": 0.9, "top1_argmax": 0.89, "active_fraction": 0.25, "epochs": 15,
            "best_val_top1": 0.91, "plateau": {"plateaued": True},
            "spec": {"train": {"epochs": 15}},
        }  # fmt: skip
        (root / name / "record.json").write_text(json.dumps({**fields, **record}))


def test_claims_find_runs_takes_finished_dense_and_anneal_resnets(claims, tmp_path):
    runs = {
        "shapes-resnet-u1-s0": {"dataset": "shapes", "U": 1, "seed": 0},
        "shapes-resnet-u1-s1": {"dataset": "shapes", "U": 1, "seed": 1},
        "shapes-resnet-u4-anneal-s0": {"dataset": "shapes", "U": 4, "variant": "anneal", "seed": 0},
        "shapes-resnet-u4-t1-s0": {"dataset": "shapes", "U": 4, "variant": "t1", "seed": 0},
        "shapes-resnet-u2-anneal-s1": None,  # still training: no record.json
        "shapes-vit-u4-anneal-s0": {"dataset": "shapes", "family": "vit", "U": 4, "seed": 0},
        "shapes-resnet-u16-anneal-s0": {"dataset": "shapes", "U": 8, "variant": "anneal", "seed": 0},
        "fashion-mnist-resnet-u8-anneal-s0": {
            "dataset": "fashion-mnist", "U": 8, "variant": "anneal", "seed": 0, "epochs": 24,
        },
        "fashion-mnist-resnet-u32-anneal-s0": {
            "dataset": "fashion-mnist", "U": 32, "variant": "anneal", "seed": 0,
        },
    }  # fmt: skip
    for name, record in runs.items():
        _fake_run(tmp_path, name, record)
    (tmp_path / "notes.txt").write_text("not a run")
    found, notes = claims.find_runs(tmp_path, ["shapes", "fashion-mnist"], [1, 2, 4, 8, 16])
    assert [r["name"] for r in found] == [
        "shapes-resnet-u1-s0",
        "shapes-resnet-u4-anneal-s0",
        "shapes-resnet-u1-s1",
        "fashion-mnist-resnet-u8-anneal-s0",
    ]
    rec = found[1]
    assert (rec["dataset"], rec["U"], rec["seed"], rec["variant"]) == ("shapes", 4, 0, "anneal")
    assert rec["run"] == str(tmp_path / "shapes-resnet-u4-anneal-s0")
    assert (rec["top1_sample"], rec["top1_argmax"], rec["train_seconds"]) == (0.9, 0.89, 60.0)
    assert (rec["active_fraction"], rec["epochs"], rec["plateaued"]) == (0.25, 15, True)
    assert any("u2-anneal-s1: not finished" in n for n in notes), notes
    assert any("u16-anneal-s0: its record.json describes" in n for n in notes), notes
    assert any("u8-anneal-s0: 24 epochs recorded, 15 planned" in n for n in notes), notes
    assert len(notes) == 3, notes
    found, notes = claims.find_runs(tmp_path, ["shapes"], [1, 2], seeds=[1])
    assert [r["name"] for r in found] == ["shapes-resnet-u1-s1"]
    assert notes == ["shapes-resnet-u2-anneal-s1: not finished (no record.json), skipped"]


def test_claims_accuracy_summary_reads_the_converged_study(claims, tmp_path):
    def rec(U, variant, seed, top1):
        return {
            "dataset": "shapes", "family": "resnet", "U": U, "variant": variant, "seed": seed,
            "top1_sample": top1, "top1_argmax": top1, "active_fraction": 1 / U if U > 1 else 0.5,
            "epochs": 15, "test_images": 24000,
        }  # fmt: skip

    records = [
        rec(1, None, 0, 0.99), rec(1, None, 1, 0.98), rec(4, "anneal", 0, 0.985),
        rec(4, "anneal", 1, 0.975), rec(4, "t1", 0, 0.90),
    ]  # fmt: skip
    path = tmp_path / "accuracy-converged.json"
    data = {"command": "c", "machine": "m", "setting": {"name": "converged"}, "records": records}
    path.write_text(json.dumps(data))
    acc = claims.accuracy_summary(path)
    assert [(r["U"], r["variant"], r["seeds"]) for r in acc["rows"]] == [
        (1, None, 2),
        (4, "anneal", 2),
    ]
    assert acc["rows"][1]["top1_sample"]["mean"] == pytest.approx(0.98)
    assert acc["rows"][1]["verdict_sample"] == "as good"
    assert acc["setting"] == "converged" and acc["left_out"] == ["t1 (1 run)"]


def test_monosemanticity_subjects_and_report(tmp_path):
    mono = _script("monosemanticity")
    runs = tmp_path / "runs"
    runs.mkdir()
    for name in ("shapes-resnet-u1-s0", "shapes-resnet-u4-anneal-s0", "shapes-resnet-u1-s1"):
        (runs / name).mkdir()
        (runs / name / "record.json").write_text("{}")
    (runs / "shapes-resnet-u4-anneal-s1").mkdir()  # not finished: no record.json
    subjects, missing = mono.find_subjects(
        runs, ["shapes"], ["resnet"], [4], [0, 1], [4], ["dense", "cvn"]
    )
    names = [s.name for s in subjects]
    assert names == [
        "shapes-resnet-s0-dense", "shapes-resnet-s0-lwta-u4", "shapes-resnet-s0-sae1x-u4",
        "shapes-resnet-s0-sae4x-u4", "shapes-resnet-s0-sae1x-u4-cvn",
        "shapes-resnet-s0-sae4x-u4-cvn", "shapes-resnet-s1-dense",
    ]  # fmt: skip
    assert missing == ["shapes-resnet-u4-anneal-s1 not trained"]
    assert subjects[2].run(runs).name == "shapes-resnet-u1-s0"  # fitted to the dense twin
    assert subjects[4].run(runs).name == "shapes-resnet-u4-anneal-s0"  # fitted to the CVN
    assert all(s.twin(runs).name.startswith("shapes-resnet-u1-") for s in subjects)

    figures = [key for key, *_ in mono.FIGURES]

    def row(kind, seed, good, expansion=None, source=None):
        return {
            "dataset": "shapes", "family": "resnet", "seed": seed, "kind": kind,
            "U": None if kind == "dense" else 4, "expansion": expansion, "source": source,
            "units": 64, "dead": 2, "active_fraction": 0.25,
            **{key: good for key in figures if key != "dead_share"},
        }  # fmt: skip

    seeds = (0, 1, 2)
    rows = [row("dense", s, 0.5 + s / 10) for s in seeds]
    rows += [row("lwta", s, 0.6 + s / 10 + s / 1000) for s in seeds]  # +0.1 on every seed
    rows += [row("sae", s, 0.9 + s / 10 - s / 1000, 1, "dense") for s in seeds]
    state = {"command": "c", "machine": "m", "date": "d", "minutes": 1.0, "runs": "r", "rows": rows}
    text = mono.write_report(state, tmp_path).read_text()
    assert "## Paired differences" in text and (tmp_path / "monosemanticity.png").is_file()
    lwta = next(e for e in state["summary"] if e["kind"] == "lwta")
    assert lwta["dead_share"] == [2 / 64] * 3 and lwta["seeds"] == [0, 1, 2]
    paired = {(r["comparison"], r["metric"]): r for r in state["paired"]}
    auprc = paired["cvn vs dense", "mean_label_auprc_corr"]
    assert auprc["seeds"] == [0, 1, 2] and auprc["mean"] == pytest.approx(0.101)
    assert auprc["verdict"] == "holds"  # paired: the seed effect cancels
    assert paired["lwta vs sae", "monosemantic"]["verdict"] == "does not hold"
    assert ("cvn vs dense", "accuracy_cost") not in paired


def test_evidence_verdicts_follow_the_paired_rule_on_made_up_records():
    evidence = _script("evidence")

    def rec(U, seed, sample6, argmax=None):
        return {
            "dataset": "shapes", "family": "resnet", "U": U, "seed": seed,
            "variant": None if U == 1 else "anneal", "top1_sample6": sample6,
            "top1_argmax": sample6 if argmax is None else argmax,
            "active_fraction": 0.48 if U == 1 else 1 / U, "train_seconds": 60.0,
        }  # fmt: skip

    dense = [0.92, 0.95, 0.90, 0.93, 0.91]  # a large seed effect, shared by the pairs
    records = [rec(1, s, d) for s, d in enumerate(dense)]
    records += [rec(2, s, d - 0.003) for s, d in enumerate(dense)]  # -0.3 points: holds
    records += [rec(4, s, d - 0.02 - 0.001 * s) for s, d in enumerate(dense)]  # -2: not
    noisy = (-0.025, 0.005, -0.015, 0.002, -0.012)
    records += [
        rec(8, s, d + e, d + e - 0.02) for s, (d, e) in enumerate(zip(dense, noisy, strict=True))
    ]
    rows = evidence.accuracy_rows({"records": records})
    verdict = {(r["claim"], r["U"]): r["verdict"] for r in rows}
    assert verdict["accuracy", 2] == "holds"
    assert verdict["accuracy", 4] == "does not hold"
    assert verdict["accuracy", 8] == "inconclusive"  # straddles -1
    assert verdict["deterministic", 8] == "does not hold"  # argmax 2 points under sample6
    assert verdict["deterministic", 2] == "holds" and verdict["sparsity", 4] == "holds"
    acc2 = next(r for r in rows if (r["claim"], r["U"]) == ("accuracy", 2))
    assert acc2["paired_diff_mean"] == pytest.approx(-0.3)
    assert acc2["split"] == "test" and acc2["seeds"] == [0, 1, 2, 3, 4]
    assert {"claim", "dataset", "model", "U", "metric", "seeds", "paired_diff_mean", "ci_low",
            "ci_high", "verdict", "split"} <= set(acc2)  # fmt: skip


def test_readme_verdicts_are_generated_from_evidence_json():
    """The verdict block of the README and of docs/results.md, each with links relative to
    itself, is what `evidence.py --readme` writes from evidence.json."""
    evidence = _script("evidence")
    data = json.loads((BENCHMARKS / "results" / "evidence.json").read_text())
    assert evidence.BLOCK_FILES[0] == BENCHMARKS.parent / "README.md"
    for path in evidence.BLOCK_FILES:
        text = path.read_text()
        block = text[text.index(evidence.START) : text.index(evidence.END) + len(evidence.END)]
        assert block == evidence.block_for(path, data), path.name
    assert "](benchmarks/results/evidence.json)" in evidence.block_for(evidence.README, data)
    for row in data["rows"]:
        assert row["verdict"] in ("holds", "does not hold", "inconclusive")


def test_gpu_line_says_whether_a_gpu_column_exists(common):
    assert "no GPU column" in common.gpu_line(None)
    line = common.gpu_line("NVIDIA H200", timed="the CPU (a CPU kernel)")
    assert "`NVIDIA H200` is present" in line and "timed the CPU (a CPU kernel) only" in line


def test_train_speed_times_every_variant_against_the_baseline(tmp_path):
    import subprocess

    # as a script: its "2 processes" workers are spawned and import it by its own name
    argv = ["--rounds", "1", "--steps", "1", "--families", "resnet", "-U", "4", "--no-compile"]
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "train_speed.py"), *argv, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "train_speed.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == [
        "baseline", "batch 256", "channels_last", "2 threads", "2 processes",
    ]  # fmt: skip
    assert rows[0]["ratio"] == 1.0 and all(r["img_per_s"] > 0 for r in rows)
    assert "| resnet | 4 | channels_last |" in (tmp_path / "train_speed.md").read_text()


@pytest.mark.parametrize("name", ["cos", "cos3", "wpmi", "soft_wpmi", "rank_reorder"])
def test_reference_transcriptions_agree_with_discover(name):
    """The speed baseline computes what discover computes: same best concept, float tolerance."""
    import torch

    from discover.dissection.similarity import get_similarity

    reference = _script("reference_similarity").REFERENCES[name]
    gen = torch.Generator().manual_seed(0)
    N, M, K = 600, 300, 24
    P = torch.rand(N, M, generator=gen)  # positive, as image-concept similarities are
    # each unit follows a few concepts, so every unit has a clear best concept
    W = torch.zeros(M, K)
    W[torch.randint(0, M, (3 * K,), generator=gen), torch.arange(K).repeat(3)] = 1.0
    Q = (P @ W + 0.3 * torch.randn(N, K, generator=gen)).relu()
    kwargs = {}
    if name == "rank_reorder":  # the reference draws per unit; share discover's five draws
        n = int(N * 0.05)
        g = torch.Generator().manual_seed(0)
        kwargs["permutations"] = torch.stack([torch.randperm(n, generator=g) for _ in range(5)])
    ours = get_similarity(name)(P, Q)
    ref = reference(P, Q, **kwargs)
    assert ours.shape == ref.shape == (K, M)
    assert torch.equal(ours.argmax(dim=1), ref.argmax(dim=1))
    scale = ref.abs().max()
    assert (ours - ref).abs().max() <= 1e-4 * scale


def test_dissect_speed_pairs_discover_with_the_matmul_every_round():
    orders = _script("dissect_speed")._round_orders(
        ["discover", "reference", "matmul", "centring"], 6
    )
    for r, order in enumerate(orders):
        assert sorted(order) == ["centring", "discover", "matmul", "reference"]
        i, j = order.index("discover"), order.index("matmul")
        assert abs(i - j) == 1 and (i < j) == (r % 2 == 0)  # back to back, taking turns
    assert {order[0] for order in orders} == {"discover", "matmul", "reference", "centring"}
    plain = _script("dissect_speed")._round_orders(["discover", "reference", "softmax"], 3)
    assert [order[0] for order in plain] == ["discover", "reference", "softmax"]


@pytest.mark.slow
def test_label_quality_runs_end_to_end_on_tiny_runs(tmp_path, monkeypatch):
    """The label-quality benchmark on two tiny Shapes runs and a tiny Shapes CLIP: every row
    has the keys issue 21 asks for, and the report names the chosen defaults."""
    from _helpers import train_tiny
    from discover.training.clip import ShapesCLIPConfig, train_shapes_clip

    lq = _script("label_quality")
    runs = tmp_path / "runs"
    for name, U in (("shapes-resnet-u1-s0", 1), ("shapes-resnet-u2-anneal-s0", 2)):
        train_tiny(runs / name, U=U, image_size=32, n=96)
        (runs / name / "record.json").write_text("{}")
    config = ShapesCLIPConfig(images=64, batch_size=32, epochs=1, eval_images=20)
    clip = train_shapes_clip(config, out=tmp_path / "clip", progress=False)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "results"
    code = lq.main(
        ["--runs", str(runs), "--families", "resnet", "--U", "1", "2", "--seeds", "0",
         "--similarities", "corr", "soft_wpmi", "--clip", clip.spec, "--quick",
         "--jobs", "1", "--threads", "1", "--out", str(out), "--cache", str(tmp_path / "cache")]
    )  # fmt: skip
    assert code == 0
    data = json.loads((out / "label_quality.json").read_text())
    keys = {
        "dataset", "embedder", "similarity", "model", "U", "seed", "layer", "split",
        "explanation_precision", "winner_precision", "conditioned_precision",
        "unit_label_precision", "label_is_best", "abstained", "chance", "setting",
    }  # fmt: skip
    assert data["rows"] and all(keys <= set(row) for row in data["rows"])
    assert {r["embedder"] for r in data["rows"]} == {"annotations", "clip"}
    assert {r["U"] for r in data["rows"]} == {1, 2} and {r["split"] for r in data["rows"]} == {
        "validation",
        "test",
    }
    assert {r["setting"] for r in data["rows"] if r["similarity"] == "soft_wpmi"} >= {"paper"}
    text = (out / "label_quality.md").read_text()
    assert "## Chosen defaults (validation split)" in text and "soft_wpmi (paper)" in text
    assert data["command"].startswith("python benchmarks/label_quality.py --runs")
    assert (out / "label_quality.png").is_file()
    # a second run reads the measured rows back instead of measuring again
    assert len(list((tmp_path / "cache" / "rows").glob("*.json"))) == 4 + 4  # + the IoU labels
    iou = [r for r in data["rows"] if r["similarity"] == lq.IOU_LABELS]
    assert iou and {r["embedder"] for r in iou} == {"annotations"}
    assert "iou (Network Dissection)" in text  # scored beside the text labels (issue 23)
    monkeypatch.setattr(lq, "measure_subject", lambda *a, **k: pytest.fail("measured again"))
    monkeypatch.setattr(lq, "measure_iou_subject", lambda *a, **k: pytest.fail("measured again"))
    assert (
        lq.main(
            [
                "--runs",
                str(runs),
                "--families",
                "resnet",
                "--U",
                "1",
                "2",
                "--seeds",
                "0",
                "--similarities",
                "corr",
                "soft_wpmi",
                "--clip",
                clip.spec,
                "--quick",
                "--jobs",
                "1",
                "--out",
                str(out),
                "--cache",
                str(tmp_path / "cache"),
            ]
        )
        == 0
    )


def test_label_quality_dissects_a_vits_classifier_input():
    """A ViT's explained layers do not feed its classifier (the final norm's class token
    does): the benchmark adds that layer, so ViT contribution tables are labelled and judged;
    a ResNet's last LWTA layer already feeds it and nothing is added."""
    import discover
    from discover.explanation import default_layers

    lq = _script("label_quality")
    vit = discover.create_model(
        "small_vit", U=2, img_size=32, in_chans=3, patch_size=8, embed_dim=24, depth=2,
        num_heads=2,
    ).eval()  # fmt: skip
    layers, head, added = lq.head_layers(vit, default_layers(vit))
    assert (head, added) == ("norm", "norm") and layers[-1] == "norm"
    resnet = discover.create_model(
        "small_resnet", U=2, img_size=32, widths=[8, 16], depths=[1, 1]
    ).eval()
    layers, head, added = lq.head_layers(resnet, default_layers(resnet))
    assert added is None and head == layers[-1] and head in default_layers(resnet)


@pytest.mark.slow
def test_scale_measures_each_row_in_its_own_process_and_resumes(tmp_path, capsys):
    scale = _script("scale")
    args = ["--sizes", "600", "1200", "--functions", "cos", "--threads", "1"]
    args += ["--out", str(tmp_path / "out"), "--workdir", str(tmp_path / "data")]
    assert scale.main(args) == 0
    saved = json.loads((tmp_path / "out" / "scale.json").read_text())
    rows = saved["rows"]
    assert [(r["N"], r["mode"]) for r in rows] == [
        (600, "in memory"),
        (600, "streamed"),
        (1200, "in memory"),
        (1200, "streamed"),
    ]
    assert all(r["peak_gb"] > 0 and r["shape"] == [scale.K, scale.M] for r in rows)
    (flat,) = saved["flatness"]
    assert flat["function"] == "cos" and flat["from"] == 600 and flat["to"] == 1200
    assert (tmp_path / "out" / "scale.png").stat().st_size > 0
    capsys.readouterr()
    assert scale.main(args) == 0  # everything kept: nothing measured again
    assert "{'N'" not in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "scale.json").read_text())["rows"] == rows
