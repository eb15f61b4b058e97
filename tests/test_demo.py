import json
from pathlib import Path

import pytest
from PIL import Image

from _helpers import doc_python_block
from discover.cli import main
from discover.demo import DEMO_DATA, DemoConfig, run_demo


def test_presets_and_config_round_trip():
    full = DemoConfig.preset("shapes")
    fast = DemoConfig.preset("shapes", fast=True, out="x", seed=None)
    assert full.embedder == "annotations" and full.U == 4 and full.policy == "sample"
    assert fast.fast and fast.train_images < full.train_images and fast.out == "x"
    assert fast.seed == 0  # None overrides are ignored
    assert DemoConfig.preset("fashion-mnist").embedder == "conse"
    assert DemoConfig.from_dict(json.loads(json.dumps(fast.to_dict()))) == fast
    assert set(DEMO_DATA) >= {"shapes", "fashion-mnist"}
    with pytest.raises(ValueError, match="unknown demo option"):
        DemoConfig.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="unknown demo data 'mnist'"):
        DemoConfig.preset("mnist")


@pytest.mark.parametrize(
    "config,message",
    [
        (
            DemoConfig.preset("fashion-mnist", embedder="annotations"),
            "Fashion-MNIST has no ground-truth concept annotations; use embedder='conse'",
        ),
        (
            DemoConfig.preset("shapes", embedder="clip"),
            "embedder: 'clip' does not work with the shapes demo data",
        ),
        (DemoConfig.preset("shapes", U=1), "U must be >= 2"),
        (DemoConfig.preset("shapes", threads=0), "threads must be an integer >= 1, got 0"),
        (DemoConfig.preset("shapes", explain_images=-1), "explain_images must be .* >= 0"),
    ],
)
def test_bad_settings_fail_before_any_work(tmp_path, config, message):
    config.out = str(tmp_path / "out")
    with pytest.raises(ValueError, match=message):
        run_demo(config, progress=False, log=lambda _: None)
    assert not (tmp_path / "out" / "cvn").exists()


def test_missing_fashion_mnist_names_the_debian_package(tmp_path, monkeypatch, capsys):
    import discover.data.fashion_mnist

    monkeypatch.setattr(discover.data.fashion_mnist, "FASHION_MNIST_DIR", tmp_path / "nowhere")
    code = main(["demo", "--data", "fashion-mnist", "--out", str(tmp_path / "o"), "--fast"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: Fashion-MNIST not found")
    assert "apt-get install dataset-fashion-mnist" in err


@pytest.mark.slow
def test_demo_fast_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = Path("runs/demo")  # where the docs' examples expect it
    assert main(["demo", "--fast", "--out", str(out), "--quiet", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    summary = printed[printed.rindex("final-layer descriptions") :].splitlines()
    cvn = next(line for line in summary if line.startswith("CVN (U=4) "))
    dense = next(line for line in summary if line.startswith("dense twin (U=1) "))
    assert cvn.split()[6:9] == ["25.0", "%", "top-1"]  # exactly 1/U, measured from the masks
    assert "top-5" in dense and "CVN (U=4) final-layer labels (" in printed
    assert summary[-1] == f"report: {out / 'report' / 'index.html'}"
    assert (out / "report" / "index.html").is_file()
    # a CI-sized demo has not converged, and says so on screen and in the report
    note = next(line for line in summary if line.startswith("NOTE: Not a verdict on competition"))
    assert "had not converged" in note and "benchmarks/results/evidence.md" in note
    index = (out / "report" / "index.html").read_text()
    assert '<p class="note">Not a verdict on competition' in index
    saved = json.loads((out / "demo.json").read_text())
    assert saved["config"]["fast"] is True and saved["config"]["threads"] == 1
    result = saved["result"]
    assert set(result["accuracy"]) == {"CVN (U=4)", "dense twin (U=1)"}
    assert set(result["convergence"]) == set(result["accuracy"])
    assert not all(check["plateaued"] for check in result["convergence"].values())
    assert len(result["final_labels"]["CVN (U=4)"]) == 10
    explanations = json.loads((out / "explanations.json").read_text())
    assert len(explanations) == 2 * 3  # 3 held-out images, both models
    cvn = explanations[0]
    assert cvn["policy"] == "sample" and cvn["target"] is not None
    assert all(row["kind"] == "lwta" for row in cvn["layers"])
    assert all(row["kind"] == "dense" for row in explanations[3]["layers"])
    for run in ("cvn", "dense"):
        assert (out / run / "dissection" / "descriptions.csv").is_file()
        assert (out / run / "dissection-final" / "dissection.json").is_file()

    # where units fired: heatmaps in the galleries and on the explanation pages, in a browser
    from test_report_browser import check_heatmaps_in_browser

    report = out / "report"
    layer_pages = [p for p in report.glob("*/*.html") if 'class="pixel heatmap"' in p.read_text()]
    explained = sorted((report / "explanations").glob("*.html"))
    assert layer_pages and 'class="pixel explained heatmap"' in explained[0].read_text()
    assert check_heatmaps_in_browser([layer_pages[0], explained[0]]) > 5

    # the docs' explain example (explanations.md) runs on the demo's output
    from discover.data import ShapesWorld

    image, _ = ShapesWorld(n=1, image_size=32, split="test")[0]
    Image.fromarray(image.permute(1, 2, 0).numpy()).save("star.png")
    block = doc_python_block("explanations.md", 'load_run("runs/demo/cvn")')
    capsys.readouterr()
    exec(compile(block, "explanations.md[explain]", "exec"), {})
    assert "layer3.0.act2 [lwta]" in capsys.readouterr().out
