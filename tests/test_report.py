import copy
import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _report_data import SCRIPT, build_sections
from discover.dissection import Dissection
from discover.nn import count_parameters
from discover.report import writer as report_module
from discover.report.figures import histogram_png, to_pil
from discover.report.inputs import ReportConfig, ReportSection
from discover.report.writer import write_report


@pytest.fixture(scope="module")
def built():
    return build_sections(with_activations=True)


@pytest.fixture(scope="module")
def report_dir(built, tmp_path_factory):
    sections, explanations, _ = built
    out = tmp_path_factory.mktemp("r") / "report"
    index = write_report(
        out, sections, explanations=explanations, meta={"command": "pytest"}, progress=False
    )
    assert index == out / "index.html"
    return out


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        self.scripts += tag == "script"
        for key, value in attrs:
            if key in ("href", "src") and value:
                self.links.append(value)


def _pages(root: Path) -> list[Path]:
    return sorted(root.rglob("*.html"))


def test_pages_exist_and_every_link_resolves(report_dir):
    pages = _pages(report_dir)
    names = {p.relative_to(report_dir).as_posix() for p in pages}
    # overview + a gallery per (section, layer) + a page per explained image
    assert "index.html" in names
    assert sum(n.endswith(("/act1.html", "/act2.html")) for n in names) == 4
    assert {f"explanations/{i}.html" for i in range(4)} <= names
    checked = 0
    for page in pages:
        parser = _Links()
        parser.feed(page.read_text())
        assert parser.scripts == 0, page
        for link in parser.links:
            if link.startswith(("data:", "#")):
                continue
            target = (page.parent / link.split("#")[0]).resolve()
            assert target.is_file(), f"{page.name}: broken link {link}"
            assert report_dir.resolve() in target.parents
            checked += 1
    assert checked > 50
    for png in report_dir.rglob("*.png"):
        with Image.open(png) as im:
            im.verify()
    meta = json.loads((report_dir / "report.json").read_text())
    assert meta["generator"] == "discover.report.writer"
    assert meta["meta"] == {"command": "pytest"}
    assert [s["name"] for s in meta["sections"]][1] == "dense twin"
    assert meta["config"]["top_images"] == 5


def test_untrusted_text_is_escaped(report_dir):
    escaped_script = html.escape(SCRIPT)
    seen = {"script": 0, "quotes": 0}
    for page in _pages(report_dir):
        text = page.read_text()
        assert SCRIPT not in text and "<b>bold</b>" not in text, page
        seen["script"] += escaped_script in text
        seen["quotes"] += "&#34;&amp;&#39; &lt;b&gt;bold&lt;/b&gt;" in text
    assert seen["script"] >= 3  # section title, a label somewhere, the explanation's file name
    assert seen["quotes"] >= 1
    index = (report_dir / "index.html").read_text()
    assert "Content-Security-Policy" in index and "script-src 'none'" in index


def test_overview_shows_settings_accuracy_sparsity_and_dissection(report_dir):
    index = (report_dir / "index.html").read_text()
    for text in (
        "10.0 %",
        "50.0 %",
        "train.epochs",
        "final layer.accuracy",
        "soft_wpmi",
        '<td class="num">dense</td>',  # the dense twin's U column
        "sparsity.png",
        "act2.html",
        "explanations/0.html",
    ):
        assert text in index, text
    with Image.open(next(report_dir.glob("*/sparsity.png"))) as im:
        assert im.size[0] >= 600 and im.size[1] >= 150


def _cards(page: Path) -> list[tuple[int, list[int]]]:
    """(unit, probe images shown) for every card of a gallery page, in page order."""
    text = page.read_text()
    cards = re.split(r'<article class="card[^"]*" id="unit-', text)[1:]
    return [
        (int(c.split('"', 1)[0]), [int(i) for i in re.findall(r'title="probe image (\d+)"', c)])
        for c in cards
    ]


def test_gallery_lists_units_by_score_with_their_top_images(built, report_dir):
    sections, _, _ = built
    section = sections[0]
    page = next(p for p in report_dir.glob("*/act2.html") if "CVN" in p.parent.name)
    cards = _cards(page)
    rows = {u.unit: u for u in section.dissection.layer("act2")}
    Q = section.activations["act2"]
    live = [u for u, _ in cards if Q[:, u].abs().sum() > 0]
    assert sorted(u for u, _ in cards) == sorted(rows)
    scores = [rows[u].score for u in live]
    assert scores == sorted(scores, reverse=True)
    from discover.dissection.spatial import top_images

    expected = top_images(Q, 5)  # best first, ties to the lower index: the maps' order
    for unit, shown in cards:
        if unit in live:
            assert shown == expected[unit].tolist()
    text = page.read_text()
    assert "wins its block" in text and "U = 2" in text
    assert "All 8 units" in text


def test_unit_cap_says_how_many_are_shown(built, tmp_path):
    sections, _, _ = built
    write_report(tmp_path / "r", sections[:1], config=ReportConfig(max_units=3), progress=False)
    page = next((tmp_path / "r").glob("*/act1.html"))
    assert len(_cards(page)) == 3
    assert "Showing 3 of 8 units" in page.read_text()


def test_report_from_a_saved_dissection_needs_no_model(built, tmp_path):
    sections, _, _ = built
    given = sections[0]
    given.dissection.save(tmp_path / "dissection")
    saved = Dissection.load(tmp_path / "dissection")
    strong = saved.layer("act2")[0]
    strong.z, strong.p_null = 9.0, 1e-9  # one label beats chance: the mark must tell them apart
    assert saved.activations.keys() == {"act1", "act2"}
    assert saved.winner_fractions.keys() == {"act1", "act2"}  # TinyNet(U=2): both LWTA
    write_report(
        tmp_path / "a", [ReportSection(given.name, None, saved, given.probe)], progress=False
    )
    write_report(tmp_path / "b", [given], progress=False)  # activations recorded separately
    for layer in ("act1", "act2"):
        (a,) = (tmp_path / "a").glob(f"*/{layer}.html")
        (b,) = (tmp_path / "b").glob(f"*/{layer}.html")
        assert _cards(a) == _cards(b)
    # every card shows its label's significance; labels that do not beat chance are marked
    (page,) = (tmp_path / "a").glob("*/act2.html")
    text = page.read_text()
    rows = saved.layer("act2")
    assert text.count(" · z ") == min(len(rows), 128)
    weak = sum(1 for u in rows if not u.above_chance)
    assert 0 < weak < len(rows)
    assert text.count("not above chance") == weak
    overview = (tmp_path / "a" / "index.html").read_text()
    assert "TinyNet" in overview and f"{count_parameters(given.model):,}" in overview


def test_report_never_runs_the_model(built, tmp_path):
    sections, _, _ = built
    given = sections[0]
    model = copy.deepcopy(given.model)

    def refuse(*args, **kwargs):
        raise AssertionError("the report ran the model")

    model.forward = refuse
    section = ReportSection(given.name, model, given.dissection, given.probe)
    write_report(tmp_path / "r", [section], progress=False)
    assert (tmp_path / "r" / "index.html").is_file()


def test_a_dissection_without_activations_asks_for_a_redissection(built, tmp_path):
    sections, _, _ = built
    given = sections[0]
    given.dissection.save(tmp_path / "d")
    (tmp_path / "d" / "activations.safetensors").unlink()  # as saved by discover 0.1
    old = Dissection.load(tmp_path / "d")
    section = ReportSection(given.name, None, old, given.probe)
    with pytest.raises(ValueError, match="holds no probe activations of layer 'act1'.*redissect"):
        write_report(tmp_path / "r", [section], progress=False)
    assert not (tmp_path / "r").exists()


def test_a_stale_dissection_is_refused_when_the_model_is_given(built, tmp_path):
    sections, _, _ = built
    given = sections[0]
    other = copy.deepcopy(given.model)
    torch.nn.init.zeros_(other.fc1.weight)
    section = ReportSection(given.name, other, given.dissection, given.probe)
    with pytest.raises(ValueError, match="weights differ"):
        write_report(tmp_path / "c", [section], progress=False)
    with pytest.warns(UserWarning, match="does not describe this model"):
        write_report(tmp_path / "c", [section], progress=False, allow_mismatch=True)


def test_existing_report_is_replaced_whole(built, tmp_path):
    sections, _, _ = built
    out = tmp_path / "report"
    write_report(out, sections[:1], config=ReportConfig(title="first"), progress=False)
    (out / "stale.txt").write_text("from the old report")
    write_report(out, sections[1:], config=ReportConfig(title="second"), progress=False)
    assert "second" in (out / "index.html").read_text()
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_a_failure_while_writing_leaves_the_old_report_intact(built, tmp_path, monkeypatch):
    sections, explanations, _ = built
    out = tmp_path / "report"
    write_report(out, sections, explanations=explanations[:1], progress=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def boom(self, *_args, **_kwargs):
        (self.root / "index.html").write_text("half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(report_module._Writer, "_explanations", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_report(out, sections, explanations=explanations, progress=False)
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no staging left


def test_refuses_to_replace_a_folder_that_is_not_a_report(built, tmp_path):
    sections, _, _ = built
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "best.safetensors").write_text("weights")
    with pytest.raises(ValueError, match="not a discover report"):
        write_report(tmp_path / "run", sections, progress=False)
    assert (tmp_path / "run" / "best.safetensors").read_text() == "weights"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        write_report(tmp_path / "file", sections, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "run"]


def test_bad_inputs_have_clear_messages(built, tmp_path):
    sections, explanations, _ = built
    s = sections[0]
    with pytest.raises(ValueError, match="no sections"):
        write_report(tmp_path / "r", [])
    with pytest.raises(ValueError, match="section 0 is a dict"):
        write_report(tmp_path / "r", [{}])
    short = ReportSection(
        s.name,
        s.model,
        s.dissection,
        s.probe,
        activations={"act1": torch.zeros(3, 8), "act2": torch.zeros(3, 8)},
    )
    with pytest.raises(ValueError, match=r"layer 'act1' have shape \(3, 8\), expected \(48, 8\)"):
        write_report(tmp_path / "r", [short], progress=False)
    partial = ReportSection(
        s.name, s.model, s.dissection, s.probe, activations={"act1": s.activations["act1"]}
    )
    with pytest.raises(ValueError, match="lack layer.*act2"):
        write_report(tmp_path / "r", [partial], progress=False)
    odd = ReportSection(s.name, s.model, s.dissection, s.probe, sparsity={"act1": "25 %"})
    with pytest.raises(ValueError, match="sparsity values must be numbers; 'act1'"):
        write_report(tmp_path / "r", [odd], progress=False)
    data, image = explanations[0]
    broken = {k: v for k, v in data.items() if k != "prediction"}
    with pytest.raises(ValueError, match="explanation 0 .*missing prediction"):
        write_report(tmp_path / "r", sections, explanations=[(broken, image)])
    no_unit = {**data, "layers": [{**data["layers"][0], "winners": [{"label": "x"}]}]}
    with pytest.raises(ValueError, match=r"layers\[0\].winners\[0\]"):
        write_report(tmp_path / "r", sections, explanations=[(no_unit, image)])
    with pytest.raises(ValueError, match="top_images=0"):
        ReportConfig(top_images=0)
    assert not (tmp_path / "r").exists()  # nothing was written for any of them


def test_to_pil_accepts_raw_images_and_rejects_normalised_ones():
    assert to_pil(torch.zeros(3, 5, 7, dtype=torch.uint8)).size == (7, 5)
    assert to_pil(torch.ones(1, 4, 4)).mode == "L"
    assert to_pil(np.zeros((4, 4, 3), np.uint8)).mode == "RGB"
    assert to_pil(Image.new("P", (3, 3))).mode == "RGB"
    with pytest.raises(ValueError, match=r"span \[-2, 2\], expected \[0, 1\]"):
        to_pil(torch.linspace(-2, 2, 48).reshape(3, 4, 4), "probe image 3")
    with pytest.raises(ValueError, match="probe image 3: a tensor image must be"):
        to_pil(torch.zeros(5, 4, 4), "probe image 3")
    with pytest.raises(ValueError, match="got list"):
        to_pil([1, 2])


def test_to_pil_reads_image_files(tmp_path):
    Image.new("RGB", (6, 4), "red").save(tmp_path / "red.png")
    assert to_pil(tmp_path / "red.png").getpixel((0, 0)) == (255, 0, 0)
    with pytest.raises(FileNotFoundError, match="explanation 2: no image file"):
        to_pil(tmp_path / "missing.png", "explanation 2")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image file"):
        to_pil(str(tmp_path / "broken.png"))


def test_histogram_colours_signs_and_reports_zeros(tmp_path):
    values = np.array([-1.0, -0.5, 0, 0, 0, 0, 0.5, 1.0, 2.0, 0])
    info = histogram_png(values, tmp_path / "h.png", bins=10)
    assert info == {"min": -1.0, "max": 2.0, "zero": 0.5}
    pixels = np.asarray(Image.open(tmp_path / "h.png"))
    assert pixels.shape == (44, 168, 3)
    colours = {tuple(p) for p in pixels.reshape(-1, 3)}
    assert (235, 130, 40) in colours and (55, 110, 200) in colours  # negative and positive bars
    flat = histogram_png(np.zeros(5), tmp_path / "z.png", bins=10)
    assert flat == {"min": 0.0, "max": 0.0, "zero": 1.0}


def test_layer_pages_show_the_saved_ground_truth(built, tmp_path, monkeypatch):
    import discover.evaluation.groundtruth as groundtruth
    from discover.evaluation import GroundTruthReport, evaluate_groundtruth

    sections, _, probe = built
    given = sections[0]
    copy.copy(given.dissection).save(tmp_path / "dissection")  # the shared one keeps its folder
    report = evaluate_groundtruth(tmp_path / "dissection", probe)
    saved = Dissection.load(tmp_path / "dissection")

    def refuse(*args, **kwargs):
        raise AssertionError("the report recomputed the ground-truth scores")

    monkeypatch.setattr(groundtruth, "groundtruth_scores", refuse)
    section = ReportSection(given.name, None, saved, probe)
    write_report(tmp_path / "r", [section], progress=False)
    (page,) = (tmp_path / "r").glob("*/act2.html")
    text = page.read_text()
    summary = report.layer("act2").summary()
    assert "Ground truth" in text and "Monosemantic" in text
    assert f"<strong>{100 * summary['monosemantic']:.1f} %</strong> of the units" in text
    for column in ("AUPRC", "IoU", "F1", "label is best", "best concept"):
        assert f"<th>{column}</th>" in text
    rows = re.findall(r'<tr>\s*<td class="num"><a href="#unit-(\d+)">.*?</tr>', text, re.S)
    assert sorted(map(int, rows)) == list(range(len(saved.layer("act2"))))
    unit = report.layer("act2").units[0]
    row = re.search(r'<a href="#unit-0">0</a></td>(.*?)</tr>', text, re.S)[1]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
    assert cells[1] == f"{unit.label_auprc:.3f}"
    assert cells[5] == ("yes" if unit.label_is_best else "no")
    assert text.count("ground truth: AUPRC") == len(saved.layer("act2"))
    assert SCRIPT not in text  # hostile labels (not ground-truth concepts) stay escaped
    overview = (tmp_path / "r" / "index.html").read_text()
    assert "<th>monosemantic</th>" in overview
    assert json.loads((tmp_path / "r" / "report.json").read_text())["sections"][0]["layers"][1][
        "truth"
    ]["monosemantic"] == pytest.approx(summary["monosemantic"])

    # no saved scores: no ground-truth section; scores of another dissection: a warning
    unsaved = copy.copy(saved)
    unsaved.folder = None
    write_report(
        tmp_path / "plain", [ReportSection(given.name, None, unsaved, probe)], progress=False
    )
    (page,) = (tmp_path / "plain").glob("*/act2.html")
    assert "Ground truth" not in page.read_text()
    passed = ReportSection(given.name, None, unsaved, probe, groundtruth=report)
    write_report(tmp_path / "passed", [passed], progress=False)
    (page,) = (tmp_path / "passed").glob("*/act2.html")
    assert "Monosemantic" in page.read_text()
    with pytest.raises(ValueError, match="groundtruth is a dict, expected a .*GroundTruthReport"):
        write_report(tmp_path / "bad", [ReportSection("x", None, unsaved, probe, groundtruth={})])
    saved.layer("act2")[0].label = "changed"
    with pytest.warns(UserWarning, match="computed from another dissection"):
        write_report(tmp_path / "stale", [section], progress=False)
    (page,) = (tmp_path / "stale").glob("*/act2.html")
    assert "Ground truth" not in page.read_text()
    assert isinstance(GroundTruthReport.load(tmp_path / "dissection"), GroundTruthReport)


def test_sections_named_like_the_reports_own_files_get_other_folders(built, tmp_path):
    """Issue 22: a section named "index.html", "style.css" or "report.json" crashed the
    writer; now its folder gets a suffix and the report's own files stay files."""
    import dataclasses

    sections, _, _ = built
    named = [
        dataclasses.replace(sections[0], name=name)
        for name in ("index.html", "Style.css", "report.json")
    ]
    index = write_report(tmp_path / "r", named, progress=False)
    root = tmp_path / "r"
    assert index.is_file() and (root / "style.css").is_file() and (root / "report.json").is_file()
    assert {p.name for p in root.iterdir() if p.is_dir()} >= {
        "index.html-2", "Style.css-2", "report.json-2",
    }  # fmt: skip
    for page in _pages(root):
        links = _Links()
        links.feed(page.read_text())
        for link in links.links:
            if "://" not in link and not link.startswith(("#", "data:")):
                assert (page.parent / link.split("#")[0]).exists(), (page, link)


def test_galleries_show_where_each_unit_fired(built, report_dir):
    """Issue 23: a conv layer's gallery shows each top image with the unit's heatmap (from the
    dissection's saved maps, no model run), a legend, and a layer without maps says so."""
    from PIL import Image

    sections, _, _ = built
    maps = sections[0].dissection.maps["act1"]
    page = next(p for p in report_dir.glob("*/act1.html") if "CVN" in p.parent.name)
    text = page.read_text()
    heat = re.findall(r'<img class="pixel heatmap" src="([^"]+)"', text)
    live = int((maps.maps.flatten(1).amax(1) > 0).sum())
    assert len(heat) == 5 * live and "heat-legend.png" in text
    assert "cyan outline marks where it exceeds half" in text
    for src in heat:
        unit, index = map(int, Path(src).stem.split("_"))
        assert index in maps.indices[unit].tolist()
        with Image.open(page.parent / src) as image:
            assert image.size[0] > 0 and image.mode == "RGB"
    assert (page.parent / "heat-legend.png").is_file()
    fc = next(p for p in report_dir.glob("*/act2.html") if "CVN" in p.parent.name).read_text()
    assert "No maps: this layer has no spatial extent" in fc and "heatmap" not in fc


def test_heatmap_outlines_the_region_above_half_the_peak(tmp_path):
    from PIL import Image

    from discover.report.figures import draw_heatmap

    heat = np.zeros((4, 4), dtype=np.float32)
    heat[1:3, 1:3] = 1.0
    draw_heatmap(Image.new("RGB", (40, 40), (128, 128, 128)), heat).save(tmp_path / "h.png")
    with Image.open(tmp_path / "h.png") as image:
        pixels = np.asarray(image)
    cyan = (pixels == (0, 255, 255)).all(axis=-1)
    assert cyan.any() and not cyan[:8].any() and not cyan[-8:].any()  # around the centre only
    assert pixels[20, 20].sum() > pixels[2, 2].sum()  # bright where the unit fired


def test_explanation_pages_show_where_units_fired_and_the_class_evidence(report_dir):
    pages = sorted((report_dir / "explanations").glob("*.html"))
    text = pages[0].read_text()
    assert '<img class="pixel explained heatmap"' in text and "Grad-CAM at act1" in text
    thumbs = re.findall(r'<img class="pixel heatmap heatthumb" src="([^"]+)"', text)
    assert thumbs and all((pages[0].parent / src).is_file() for src in thumbs)
    assert "Maps: conv map 24x24" in text  # act1, at the 24 px probe size
    assert "Maps: no spatial map: this layer has no spatial extent" in text  # act2 is dense
    assert (report_dir / "explanations" / "heat-legend.png").is_file()
