"""A small, fast report fixture shared by test_report.py and test_report_browser.py.

A tiny CVN (conv -> LWTA -> pool -> linear -> LWTA -> fc) and its dense twin, dissected on
48 Shapes-world images with ground-truth annotations. Two concept names are replaced by
hostile strings, so every page must escape them.
"""

from __future__ import annotations

import torch
from torch import nn

from discover import LWTA, capture_winners, eval_policy
from discover.concepts import concept_set_from_lines
from discover.data import ShapesWorld
from discover.dissection import dissect
from discover.embedders import AnnotationEmbedder
from discover.report import ReportSection

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


def explanation_dict(model: nn.Module, probe, index: int, labels: dict) -> dict:
    """An explanation in the shared contract's shape, from one real forward pass."""
    image, target = probe[index][:2]
    x = to_input(image)[None]
    model.eval()
    with torch.no_grad(), eval_policy(model, "argmax"), capture_winners(model) as layers:
        feats = {}
        hooks = [
            m.register_forward_hook(lambda _m, _i, out, n=n: feats.__setitem__(n, out))
            for n, m in model.named_modules()
            if n in ("act1", "act2")
        ]
        logits = model(x)
        for h in hooks:
            h.remove()
        masks = {n: layer.last_mask for n, layer in layers.items()}
    probs = logits.softmax(-1)[0]
    pred = int(probs.argmax())
    rows = []
    for name in ("act1", "act2"):
        act = feats[name][0]
        if act.dim() == 3:  # conv: pool over space, winners = channels that won anywhere
            mask = masks[name][0].any(-1).any(-1) if name in masks else act.abs().amax((1, 2)) > 0
            act = act.mean((1, 2))
        else:
            mask = masks[name][0] if name in masks else act.abs() > 1e-6
        units = mask.nonzero().flatten().tolist()
        units.sort(key=lambda k: -abs(float(act[k])))
        rows.append(
            {
                "layer": name,
                "kind": "lwta" if name in masks else "dense",
                "units": act.numel(),
                "active": len(units),
                "active_fraction": len(units) / act.numel(),
                "threshold": None if name in masks else 1e-6,
                "winners": [
                    {
                        "unit": k,
                        "block": k // 2 if name in masks else None,
                        "activation": float(act[k]),
                        "label": labels[name][k],
                        "score": 0.5,
                    }
                    for k in units
                ],
            }
        )
    act2 = feats["act2"][0]
    weight = model.fc.weight[pred].detach()
    contrib = [(k, float(act2[k] * weight[k])) for k in range(act2.numel()) if act2[k] != 0]
    contrib.sort(key=lambda t: -abs(t[1]))
    logit = float(logits[0, pred])
    return {
        "image": f"ShapesWorld[{index}] {SCRIPT}",
        "model": "TinyNet",
        "prediction": {
            "index": pred,
            "label": probe.class_names[pred],
            "probability": float(probs[pred]),
        },
        "target": {"index": int(target), "label": probe.class_names[int(target)]},
        "policy": "argmax" if masks else None,
        "layers": rows,
        "contributions": {
            "layer": "act2",
            "class_index": pred,
            "class_label": probe.class_names[pred],
            "logit": logit,
            "bias": float(model.fc.bias[pred].detach()),
            "explained_share": sum(c for _, c in contrib) / logit if logit else 0.0,
            "units": [
                {
                    "unit": k,
                    "label": labels["act2"][k],
                    "activation": float(act2[k]),
                    "weight": float(weight[k]),
                    "contribution": c,
                }
                for k, c in contrib
            ],
        },
    }


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
            transform=to_input,
            similarity_params={"top_k": 10},
            progress=False,
            batch_size=16,
        )
        activations = None
        if with_activations:
            from discover.dissection import model_view
            from discover.recording import record

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
                transform=to_input,
            )
        )
        labels = {layer: dissection.labels(layer) for layer in ("act1", "act2")}
        for index in (0, 1):
            explanations.append((explanation_dict(model, probe, index, labels), probe[index][0]))
    return sections, explanations, probe
