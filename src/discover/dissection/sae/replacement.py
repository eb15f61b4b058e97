"""How well an SAE stands in for its layer: the model's accuracy with the SAE's reconstruction
in place of the layer's output (:func:`sae_replacement_accuracy`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from discover.dissection.layers import resolve_layers
from discover.dissection.sae.model import SAE, as_sae, position_vectors
from discover.errors import InputError
from discover.nn.hooks import capture
from discover.nn.lwta import eval_policy

__all__ = ["Replacement", "sae_replacement_accuracy"]


@dataclass
class Replacement:
    """The model's accuracy with the SAE's reconstruction in place of its layer."""

    accuracy: float
    original_accuracy: float
    images: int
    agreement: float
    """Share of images whose predicted class the replacement leaves unchanged."""
    fve: float
    """Fraction of variance of the layer's output (every position) the SAE explains."""


@torch.no_grad()
def sae_replacement_accuracy(
    model: nn.Module,
    layer: str,
    sae: SAE | str | Path,
    loader: Iterable,
    *,
    policy: str = "argmax",
    seed: int = 0,
    device: str = "cpu",
) -> Replacement:
    """Top-1 accuracy of ``model`` when ``sae.reconstruct`` replaces the output of ``layer``,
    next to the unchanged model's, on ``loader`` (batches ``(images, targets, ...)`` already
    transformed for the model).

    The SAE is applied to every position's activation vector of a conv map or token
    sequence. That is what it was trained on with ``sites="positions"``; an SAE trained on
    pooled vectors (``sites="pooled"``) is applied the same way, outside the distribution
    it was trained on, so its replacement accuracy says little about the pooled latents the
    dissection labels.

    Example:
        >>> loader = DataLoader(build_dataset("shapes", "val", transform=tf), batch_size=64)  # doctest: +SKIP
        >>> sae_replacement_accuracy(model, "layer3.1.act2", "sae/l3", loader).accuracy  # doctest: +SKIP
        0.91
    """
    sae = as_sae(sae)
    module = resolve_layers(model, [layer])[layer]
    if layer != sae.layer:
        raise InputError(f"sae: the SAE describes layer {sae.layer!r}, not layer {layer!r}")
    device_ = torch.device(device)
    model.to(device_)
    sae.to(device_).eval()
    replace = {"on": False}
    stats = _Spread(sae.config.width)

    def hook(_name: str, _module: nn.Module, _inputs: Any, output: Any) -> Any:
        if not replace["on"]:
            return None
        rebuilt = sae.reconstruct(output.float())
        stats.add(position_vectors(output.float()), position_vectors(rebuilt))
        return rebuilt.to(output.dtype)  # replaces the layer's output

    correct = {"original": 0, "replaced": 0}
    images = agree = 0
    with capture(model, {layer: module}, hook, mode=False), eval_policy(model, policy):
        for batch in loader:
            if not isinstance(batch, (list, tuple)) or len(batch) < 2:
                raise InputError(
                    "sae_replacement_accuracy: loader must yield (images, targets, ...) batches"
                )
            x, y = batch[0].to(device_), batch[1].to(device_)
            predicted = {}
            for name, on in (("original", False), ("replaced", True)):
                replace["on"] = on
                torch.manual_seed(seed)  # the same LWTA samples under policy="sample"
                predicted[name] = model(x).argmax(1)
                correct[name] += int((predicted[name] == y).sum())
            agree += int((predicted["original"] == predicted["replaced"]).sum())
            images += len(x)
    if images == 0:
        raise InputError("sae_replacement_accuracy: the loader yielded no images")
    return Replacement(
        accuracy=correct["replaced"] / images,
        original_accuracy=correct["original"] / images,
        images=images,
        agreement=agree / images,
        fve=stats.variance_explained(),
    )


class _Spread:
    """Streamed fraction of variance explained of vectors ``x`` by ``x_hat``."""

    def __init__(self, width: int) -> None:
        self.error, self.square, self.count = 0.0, 0.0, 0
        self.sum = torch.zeros(width, dtype=torch.float64)

    def add(self, x: torch.Tensor, x_hat: torch.Tensor) -> None:
        x, x_hat = x.reshape(-1, x.shape[-1]).double(), x_hat.reshape(-1, x.shape[-1]).double()
        self.error += float((x_hat - x).pow(2).sum())
        self.square += float(x.pow(2).sum())
        self.sum += x.sum(0).cpu()
        self.count += len(x)

    def variance_explained(self) -> float:
        variance = self.square - float(self.sum.pow(2).sum()) / max(self.count, 1)
        return 1.0 - self.error / variance if variance > 0 else float(self.error == 0)
