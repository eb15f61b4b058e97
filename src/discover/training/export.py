"""Deploying a trained run: its model exported to ONNX with deterministic winners, checked
against PyTorch on the run's own test split.

Example:
    >>> result = export_run("runs/cvn-u4", "cvn-u4.onnx")  # doctest: +SKIP
    >>> print(result.summary())  # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from discover.errors import InputError
from discover.nn.export import EXPORT_ATOL, EXPORT_FORMATS, export_onnx, onnx_session, run_onnx
from discover.nn.lwta import eval_policy

__all__ = ["ExportResult", "export_run"]


@dataclass
class ExportResult:
    """An exported run and how its export agreed with PyTorch on the check images."""

    out: Path
    run: str
    weights: str
    format: str
    split: str
    images: int
    same_top1: int
    max_logit_difference: float

    def summary(self) -> str:
        return (
            f"exported {self.run} ({self.weights} weights, argmax winners) to {self.out}: "
            f"ONNX Runtime and PyTorch agree on the top-1 of {self.same_top1} of {self.images} "
            f"{self.split} images, logits within {self.max_logit_difference:.1e}"
        )

    def save(self) -> Path:
        """Write the check beside the export (``OUT.json``)."""
        path = self.out.with_suffix(self.out.suffix + ".json")
        path.write_text(json.dumps({**asdict(self), "out": str(self.out)}, indent=2))
        return path


def export_run(
    run: str | Path,
    out: str | Path,
    *,
    format: str = "onnx",  # noqa: A002
    weights: str = "best",
    policy: str = "argmax",
    split: str = "test",
    limit: int | None = None,
    batch_size: int = 256,
) -> ExportResult:
    """Export the model of a training run and check the export on its ``split``: every
    image's top-1 must equal PyTorch's under the ``"argmax"`` policy and every logit be within
    :data:`~discover.nn.export.EXPORT_ATOL` (``limit``: the first images only).

    Raises:
        InputError: an unknown format, ``policy="sample"``, or an export that disagrees with
            PyTorch on the check (the file is kept for inspection).

    Example:
        >>> export_run("runs/cvn-u4", "cvn-u4.onnx").same_top1  # doctest: +SKIP
        1000
    """
    from discover.data.registry import build_dataset
    from discover.data.transforms import build_transforms
    from discover.training.runs import load_run

    if format not in EXPORT_FORMATS:
        raise InputError(f"export: format {format!r}; expected one of {', '.join(EXPORT_FORMATS)}")
    loaded = load_run(run, weights)
    model = loaded.model.eval()
    dataset = build_dataset(
        loaded.train.dataset,
        split,
        root=loaded.train.data_root,
        transform=build_transforms(loaded.data, train=False),
        **loaded.train.dataset_kwargs,
    )
    if limit is not None:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    loader = DataLoader(dataset, batch_size=batch_size)
    example = next(iter(loader))[0][:4]
    path = export_onnx(model, out, example=example, policy=policy)
    session = onnx_session(path)
    images = same = 0
    worst = 0.0
    with eval_policy(model, "argmax"), torch.no_grad():
        for batch in loader:
            x = batch[0]
            expected, got = model(x), run_onnx(session, x)
            same += int((expected.argmax(1) == got.argmax(1)).sum())
            worst = max(worst, float((expected - got).abs().max()))
            images += len(x)
    result = ExportResult(path, str(run), weights, format, split, images, same, worst)
    if same != images or worst > EXPORT_ATOL:
        raise InputError(f"export: {result.summary()}; the file is kept for inspection")
    result.save()
    return result
