"""Network-Dissection IoU (issue 23): planted units, baselines, errors, save and load."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from discover.data import ShapesWorld
from discover.data.shapes import COLOURS
from discover.data.transforms import DataConfig
from discover.dissection.core import dissect
from discover.evaluation.localization import (
    DETECTOR_IOU,
    LocalizationReport,
    evaluate_localization,
    localization_iou,
)

SIZE = 48
BACKGROUNDS = ("white", "black", "grey", "blue", "green")  # no red: red pixels are the object's


class Planted(nn.Module):
    """Unit 0 fires exactly on red pixels (a pixel nearer to red than to every other colour
    of the world, by how much); unit 1 is a fixed noise map, the same on every image; unit 2 never
    fires."""

    def __init__(self) -> None:
        super().__init__()
        self.units = nn.Identity()
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("noise", torch.rand(SIZE, SIZE, generator=generator))
        self.register_buffer("red", torch.tensor(COLOURS["red"]).float()[:, None, None] / 255)
        papers = torch.tensor([v for c, v in COLOURS.items() if c != "red"]).float() / 255
        self.register_buffer("papers", papers[:, :, None, None])
        self.data_config = DataConfig(input_size=(3, SIZE, SIZE), mean=(0.0,), std=(1.0,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        to_red = (x - self.red).square().sum(dim=1)  # (B, H, W)
        to_paper = (x[:, None] - self.papers).square().sum(dim=2).amin(dim=1)
        red = (to_paper - to_red).clamp_min(0)
        maps = torch.stack([red, self.noise.expand_as(red), torch.zeros_like(red)], dim=1)
        return self.units(maps).mean(dim=(2, 3))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    probe = ShapesWorld(
        n=80, image_size=SIZE, split="val", background_colours=BACKGROUNDS, textures=("plain",)
    )
    from discover.dissection.concepts import concept_set_from_lines

    model = Planted()
    folder = tmp_path_factory.mktemp("planted") / "dissection"
    concepts = concept_set_from_lines(probe.concept_names, name="planted")
    dissect(
        model, ["units"], probe, concepts, "annotations", null_repeats=0, cache_dir=None,
        progress=False,
    ).save(folder)  # fmt: skip
    return model, probe, folder


def _red_fraction(probe) -> float:
    red = probe.concept_names.index("red")
    total = 0
    for i in range(len(probe)):
        concepts, masks = probe.concept_masks(i)
        total += int(masks[(concepts == red).nonzero()[:, 0]].sum())
    return total / (len(probe) * SIZE * SIZE)


def test_a_planted_red_detector_is_found_and_noise_is_not(planted):
    model, probe, folder = planted
    # the quantile just above red's share of the pixels: the threshold falls on 0
    quantile = _red_fraction(probe) * 1.05
    report = evaluate_localization(model, folder, probe, quantile=quantile)
    layer = report.layers["units"]
    best = layer.best_concepts
    assert best[0] == "red" and float(layer.iou[0, probe.concept_names.index("red")]) >= 0.9
    assert float(layer.best_iou[1]) <= DETECTOR_IOU and float(layer.best_iou[2]) == 0.0
    summary = layer.summary()
    assert summary["unique_detectors"] == 1 and summary["detected_concepts"] == ["red"]
    # the baselines stay near nothing
    assert summary["shuffled_masks"]["mean_best_iou"] < 0.2
    assert summary["random_units"]["unique_detectors"] == 0
    # saved into the dissection folder and read back
    again = LocalizationReport.load(folder)
    assert torch.allclose(again.layers["units"].iou, layer.iou, atol=1e-6)
    assert "unique detectors 1" in report.table()
    rows = (folder / "localization_units.csv").read_text().splitlines()
    assert rows[1].startswith("units,0,red,")


def test_the_default_quantile_is_network_dissections_and_exact(planted):
    import math

    model, probe, folder = planted
    report = evaluate_localization(model, folder, probe, save=False, batch_size=7)
    layer = report.layers["units"]
    assert report.meta["quantile"] == 0.005
    # the streaming top-m gives the exact top-0.5 % value over every position of every image
    m = math.ceil(0.005 * len(probe) * SIZE * SIZE)
    noise_values = model.noise.flatten().repeat(len(probe))
    assert float(layer.thresholds[1]) == float(noise_values.topk(m).values[-1])
    assert float(layer.thresholds[2]) == 0.0  # a dead unit: nothing exceeds it, IoU 0
    assert float(layer.best_iou[2]) == 0.0


def test_localization_iou_counts_pixels():
    maps = torch.zeros(2, 1, 2, 2)
    maps[0, 0, 0, 0] = 1.0  # image 0: the top-left quarter after upsampling
    masks = torch.zeros(2, 2, 4, 4, dtype=torch.bool)
    masks[0, 0, :2, :2] = True  # concept 0 in image 0: exactly that quarter
    masks[1, 1] = True  # concept 2 covers image 1
    concepts = torch.tensor([[0, 1], [1, 2]])
    inter, area_k, area_c = localization_iou(maps, torch.tensor([0.6]), concepts, masks, 3)
    assert area_k.tolist() == [3.0]  # bilinear upsampling: 1, 0.75, 0.75 exceed 0.6 (0.5625 not)
    assert inter.tolist() == [[3.0, 0.0, 0.0]] and area_c.tolist() == [4.0, 0.0, 16.0]


def test_bad_inputs_are_one_line_errors(planted, tmp_path):
    model, probe, folder = planted
    from torch.utils.data import TensorDataset

    plain = TensorDataset(torch.zeros(4, 3, SIZE, SIZE, dtype=torch.uint8))
    with pytest.raises(ValueError, match="has no pixel masks"):
        evaluate_localization(model, folder, plain)
    other = ShapesWorld(n=10, image_size=SIZE, split="val")
    with pytest.raises(ValueError, match="probe"):
        evaluate_localization(model, folder, other)
    from discover.dissection.result import Dissection

    flat = Dissection.load(folder)
    flat.maps = {}
    with pytest.raises(ValueError, match="no layer with spatial maps"):
        evaluate_localization(model, flat, probe)
    model.data_config = DataConfig(input_size=(3, SIZE, SIZE), crop_pct=0.875)
    try:
        with pytest.raises(ValueError, match="crops"):
            evaluate_localization(model, folder, probe)
    finally:
        model.data_config = DataConfig(input_size=(3, SIZE, SIZE), mean=(0.0,), std=(1.0,))


@pytest.mark.slow
def test_cli_localization_of_a_training_run(tmp_path, capsys):
    import json

    from _helpers import train_tiny
    from discover.cli import main

    run = train_tiny(tmp_path / "run", U=4).out
    probe = ["--probe", "shapes", "--probe-arg", "n=40", "--probe-arg", "image_size=16"]
    folder = tmp_path / "d"
    argv = ["dissect", "--run", str(run), "--layers", "layer2.0.act2", "fc", *probe]
    argv += ["--concepts", "shapes", "--embedder", "annotations", "--no-cache"]
    assert main([*argv, "--null-repeats", "0", "--out", str(folder)]) == 0
    capsys.readouterr()
    located = ["eval-descriptions", str(folder), "--localization", "--run", str(run), *probe]
    assert main(located) == 0
    out = capsys.readouterr().out
    assert "layer2.0.act2: 16 units, map 8x8; mean best IoU" in out and "shuffled masks" in out
    saved = json.loads((folder / "localization.json").read_text())
    assert [layer["layer"] for layer in saved["layers"]] == ["layer2.0.act2"]
    rows = (folder / "localization_units.csv").read_text().splitlines()
    assert len(rows) == 17 and rows[0].startswith("layer,unit,best_iou_concept,best_iou")

    def fails(argv, expected):
        assert main(argv) == 2
        err = capsys.readouterr().err.rsplit("\r", 1)[-1].strip()
        assert expected in err and len(err.splitlines()) == 1, err

    fails([*located, "--layer", "fc"], "layer(s) fc have no spatial maps")
    fails(located[:3] + probe, "--localization: give --run")
    fails(["eval-descriptions", str(folder), "--ground-truth", "--run", str(run), *probe],
          "--run: only used with --localization")  # fmt: skip
    # the explanation can show the units' best-IoU concepts instead of their text labels
    from PIL import Image

    Image.new("RGB", (16, 16), (200, 30, 30)).save(tmp_path / "red.png")
    explained = ["explain", str(tmp_path / "red.png"), "--run", str(run)]
    explained += ["--dissection", str(folder), "--labels", "iou", "--json"]
    assert main(explained) == 0
    data = json.loads(capsys.readouterr().out)
    layer = next(row for row in data[0]["layers"] if row["layer"] == "layer2.0.act2")
    rows = LocalizationReport.load(folder).layers["layer2.0.act2"].rows()
    best = {r["unit"]: r["best_iou_concept"] for r in rows}
    assert layer["winners"]
    for w in layer["winners"]:  # the label, or the first candidate when shown unlabelled
        assert (w["label"] or w["candidates"][0]) == best[w["unit"]], w
    (folder / "maps.safetensors").unlink()
    fails(located, "the dissection has no layer with spatial maps")


def test_the_report_shows_where_units_fire_from_the_saved_localization(planted, tmp_path):
    import shutil

    from discover.dissection.result import Dissection
    from discover.evaluation.localization import saved_localization
    from discover.report.inputs import ReportSection
    from discover.report.writer import write_report

    model, probe, folder = planted
    copy = tmp_path / "dissection"
    shutil.copytree(folder, copy)
    evaluate_localization(model, copy, probe, quantile=_red_fraction(probe) * 1.05)
    dissection = Dissection.load(copy)
    assert saved_localization(dissection) is not None
    out = write_report(
        tmp_path / "report", [ReportSection("planted", None, dissection, probe)], progress=False
    )
    page = next(out.parent.glob("*/units.html")).read_text()
    assert "Where units fire (Network Dissection)" in page
    assert "<strong>1</strong> unique concept detectors" in page and ": red;" in page
    assert "where it fires: red (IoU" in page and "a detector" in page
    # a localization of other labels is ignored, with a warning
    dissection.units[0].label = "square"
    with pytest.warns(UserWarning, match="computed from another dissection"):
        assert saved_localization(dissection) is None


def test_best_iou_concepts_as_labels(planted, tmp_path):
    """Issue 23: the best-IoU concept is available as a unit's label (Network Dissection's
    labels): a detector gets its concept, other units are shown unlabelled."""
    import shutil

    from discover.dissection.result import Dissection
    from discover.evaluation.localization import iou_labelled

    model, probe, folder = planted
    copy = tmp_path / "dissection"
    shutil.copytree(folder, copy)
    for name in ("localization.json", "localization_units.csv"):
        (copy / name).unlink(missing_ok=True)
    dissection = Dissection.load(copy)
    with pytest.raises(ValueError, match="has no localization"):
        iou_labelled(dissection)
    evaluate_localization(model, copy, probe, quantile=_red_fraction(probe) * 1.05)
    relabelled = iou_labelled(Dissection.load(copy))
    units = relabelled.layer("units")
    assert units[0].label == "red" and units[0].abstained is None and units[0].score >= 0.9
    assert units[0].top[0][0] == "red" and len(units[0].top) == 5
    assert units[1].abstained == "no detector"
    assert units[2].abstained == "dead"  # never active: stays dead
    assert relabelled.shown_labels("units") == ["red", None, None]
    assert relabelled.meta["labels"].startswith("best-IoU concept")
