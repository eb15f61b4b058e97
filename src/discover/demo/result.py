"""What a demo run found (:class:`DemoResult`) and the summary it prints."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DemoResult", "convergence_notes"]


@dataclass
class DemoResult:
    """The figures of a demo run (also in ``OUT/demo.json``)."""

    out: Path
    report: Path
    accuracy: dict[str, dict[str, float]]  # model -> {"top1", "top5"}
    sparsity: dict[str, float]  # model -> mean active fraction over the explained layers
    description_scores: dict[str, dict[str, Any]]  # model -> final-layer protocol figures
    final_labels: dict[str, list[str]]  # model -> classifier unit labels (class-name concepts)
    # model -> ExplanationScores.to_dict() on held-out images whose concepts are known
    explanation_precision: dict[str, dict[str, Any]]
    class_names: list[str]
    policy: str
    test_images: int
    seconds: dict[str, float] = field(default_factory=dict)
    # model -> the plateau rule on its validation curve (discover.training.plateau)
    convergence: dict[str, dict[str, Any]] = field(default_factory=dict)

    def notes(self) -> list[str]:
        """What the figures do not say: a warning when a model was still learning."""
        return convergence_notes(self.convergence)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["out"], data["report"] = str(self.out), str(self.report)
        return data

    def summary(self) -> str:
        """The short summary ``discover demo`` prints.

        Accuracy on the held-out test images; the active fraction of the LWTA layers (the
        twin: units with ``|a| > 1e-6`` at the same places), measured on the same images; the
        final-layer protocol's description accuracy (unit ``k`` labelled as class ``k``).
        """
        width = max(len(name) for name in self.accuracy) + 2
        lines = [
            f"{'':<{width}}{'top-1':>8}{'top-5':>9}{'active':>9}   final-layer descriptions",
        ]
        for model, acc in self.accuracy.items():
            scores = self.description_scores.get(model) or {}
            lines.append(
                f"{model:<{width}}{_percent(acc['top1']):>8}{_percent(acc['top5']):>9}"
                f"{_percent(self.sparsity.get(model)):>9}   top-1 "
                f"{_percent(scores.get('top1'))}, top-5 {_percent(scores.get('top5'))}"
            )
        for model, figures in self.explanation_precision.items():
            table = figures.get("contributions") or {}
            if table.get("precision") is not None:
                lines.append(
                    f"{model} explanations: {_percent(table['precision'])} of the labels in the "
                    f"contribution tables are true of the held-out image (shuffled labels "
                    f"{_percent(table.get('shuffled'))}, chance {_percent(figures['chance'])}, "
                    f"{_percent(table.get('abstained'))} of the rows unlabelled; "
                    f"{figures['images']} images)"
                )
        for model, labels in self.final_labels.items():
            matched = sum(a == b for a, b in zip(labels, self.class_names, strict=False))
            lines.append(
                f"{model} final-layer labels ({matched} of {len(self.class_names)} = the class "
                f"name): {', '.join(labels)}"
            )
        lines += [f"NOTE: {note}" for note in self.notes()]
        total = sum(self.seconds.values())
        lines.append(
            f"(LWTA policy {self.policy}; {self.test_images} held-out test images; "
            f"{total / 60:.1f} min)"
        )
        lines.append(f"explained images: {self.out / 'explanations.json'}")
        lines.append(f"report: {self.report}")
        return "\n".join(lines)


def convergence_notes(convergence: dict[str, dict[str, Any]]) -> list[str]:
    """A warning for models that had not plateaued (``{model: Plateau.to_dict()}``); ``[]``
    when every model had.

    Example:
        >>> convergence_notes({"dense twin": {"plateaued": True, "reason": ""}})
        []
    """
    learning = {
        model: check.get("reason") or "not plateaued"
        for model, check in convergence.items()
        if not check.get("plateaued", True)
    }
    if not learning:
        return []
    which = "; ".join(f"{model}: {reason}" for model, reason in learning.items())
    return [
        "Not a verdict on competition: these models had not converged (the plateau rule on "
        f"their validation top-1; {which}), so their accuracy gap says little about what "
        "competition costs. For CVNs against dense twins trained until they plateau, over "
        "several seeds, see the project's evidence page (benchmarks/results/evidence.md)."
    ]


def _percent(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.1f} %"
