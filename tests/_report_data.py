"""A small, fast report fixture shared by test_report.py and test_report_browser.py.

A tiny CVN (conv -> LWTA -> pool -> linear -> LWTA -> fc) and its dense twin, dissected on
48 Shapes-world images with ground-truth annotations. Two concept names are replaced by
hostile strings, so every page must escape them.
"""

from __future__ import annotations

import torch
from torch import nn

from discover import LWTA, explain
from discover.data import ShapesWorld
from discover.dissection.concepts import concept_set_from_lines
from discover.dissection.core import dissect
from discover.dissection.embedders import AnnotationEmbedder
from discover.report.inputs import ReportSection

SCRIPT = "<script>alert(1)</script>"
QUOTES = "\"&' <b>bold</b>"


class TinyNet(nn.Module):
    def __init__(self, U: int = 2, classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act1 = LWTA(U, name="act1") if U > 1 else nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(8, 8)
        self.act2 = LWTA(U, name="act2") if U > 1 else nn.ReLU()
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act2(self.fc1(self.pool(self.act1(self.conv(x))).flatten(1))))


def to_input(image: torch.Tensor) -> torch.Tensor:
    return image.float() / 255


def probe_and_concepts(n: int = 48):
    probe = ShapesWorld(n=n, image_size=24, split="val", seed=0)
    names = list(probe.concept_names)
    names[names.index("red")] = SCRIPT
    names[names.index("circle")] = QUOTES
    embedder = AnnotationEmbedder(probe.concepts_table(), names)
    return probe, concept_set_from_lines(names, name="hostile"), embedder


def explanations_for(model: nn.Module, dissection, probe, indices=(0, 1)) -> list[tuple]:
    """``(Explanation.to_dict(), image)`` pairs from :func:`discover.explain` itself."""
    images = [probe[i][0] for i in indices]
    found = explain(
        model,
        images,
        dissection,
        transform=to_input,
        class_names=probe.class_names,
        names=[f"ShapesWorld[{i}] {SCRIPT}" for i in indices],
        targets=[int(probe[i][1]) for i in indices],
        top=None,
    )
    return [(e.to_dict(), image) for e, image in zip(found, images, strict=True)]


def build_sections(n: int = 48, with_activations: bool = False) -> tuple[list, list, object]:
    """(sections, explanations, probe) for a CVN (U=2) and its dense twin, untrained."""
    probe, concepts, embedder = probe_and_concepts(n)
    sections, explanations = [], []
    for name, U in (("CVN (U=2) " + SCRIPT, 2), ("dense twin", 1)):
        torch.manual_seed(0)
        model = TinyNet(U)
        dissection = dissect(
            model,
            ["act1", "act2"],
            probe,
            concepts,
            embedder,
            "soft_wpmi",
            transform=to_input,
            similarity_params={"top_k": 10},
            progress=False,
            batch_size=16,
        )
        activations = None
        if with_activations:
            from discover.dissection.recording import model_view, record

            activations = record(
                model, ["act1", "act2"], model_view(model, probe, to_input), progress=False
            ).activations
        sections.append(
            ReportSection(
                name=name,
                model=model,
                dissection=dissection,
                probe=probe,
                accuracy={"top1": 0.1, "top5": 0.5},
                sparsity={"act1": 1 / U if U > 1 else 0.6, "act2": 1 / U if U > 1 else 0.55},
                settings={"model": "TinyNet", "U": U, "train": {"epochs": 0, "note": QUOTES}},
                description_scores={"final layer": {"accuracy": 0.3}},
                activations=activations,
            )
        )
        explanations += explanations_for(model, dissection, probe)
    return sections, explanations, probe
