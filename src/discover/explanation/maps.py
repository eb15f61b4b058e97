"""Where units fired on an image: the 3 x 3 part of a map that holds its peak, and Grad-CAM
maps of the predicted class (:attr:`~discover.explanation.Explanation.class_evidence`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from discover.dissection.spatial import spatial_maps
from discover.explanation.inputs import forward_logits
from discover.nn.hooks import capture

_ROWS, _COLUMNS = ("top", "middle", "bottom"), ("left", "center", "right")


def where(grid: list[list[float]] | None) -> str | None:
    """The 3 x 3 part of a map where it fires: the centre of mass of its values at or above
    half its peak, named like Shapes positions (``"top left"``, ..., ``"center"``)."""
    if not grid or not grid[0]:
        return None
    values = torch.tensor(grid, dtype=torch.float64)
    peak = float(values.max())
    if peak <= 0:
        return None
    weights = torch.where(values >= peak / 2, values, torch.zeros_like(values))
    h, w = values.shape
    ys = (torch.arange(h, dtype=torch.float64) + 0.5)[:, None]
    xs = (torch.arange(w, dtype=torch.float64) + 0.5)[None, :]
    total = float(weights.sum())
    cy, cx = float((weights * ys).sum()) / total, float((weights * xs).sum()) / total
    name = f"{_ROWS[min(int(3 * cy / h), 2)]} {_COLUMNS[min(int(3 * cx / w), 2)]}"
    return "center" if name == "middle center" else name


def as_grid(values: torch.Tensor) -> list[list[float]]:
    """A 2-d map as nested lists of floats rounded to 4 places (what JSON keeps)."""
    return [[round(float(v), 4) for v in row] for row in values.tolist()]


def last_spatial_layer(model: nn.Module, example: torch.Tensor) -> tuple[str, int] | None:
    """The last leaf module (in execution order) whose output has spatial extent (more than
    one position), with its rank (4: a conv map, 3: tokens); ``None`` when none has."""
    order: list[tuple[str, int]] = []

    def hook(name: str, _m: nn.Module, _i: Any, out: Any) -> None:
        maps = spatial_maps(out, model) if isinstance(out, torch.Tensor) else None
        if maps is not None and maps.shape[-2:].numel() > 1:  # not a pooled 1 x 1 map
            order.append((name, out.dim()))

    leaves = {n: m for n, m in model.named_modules() if n and not list(m.children())}
    with capture(model, leaves, hook), torch.no_grad():
        forward_logits(model, example)  # inputs the model cannot take: a clear error
    return order[-1] if order else None


def class_evidence(
    model: nn.Module, batch: torch.Tensor, classes: list[int], layer: tuple[str, int] | None
) -> list[dict[str, Any]]:
    """Grad-CAM of each image's class: at the last conv map with captum's ``LayerGradCam``;
    for a token model at the input of its last block (``*.norm1``: after it, only the class
    token reaches the classifier), as Grad-CAM for ViTs is usually taken, computed here on
    the patch grid because captum's ``LayerGradCam`` averages over the wrong axis of tokens."""
    if layer is None:
        return [{"note": "no layer with spatial extent: no map"}] * len(batch)
    name, rank = layer
    if rank == 4:
        return _conv_grad_cam(model, batch, classes, name)
    return _token_grad_cam(model, batch, classes, name)


def _conv_grad_cam(
    model: nn.Module, batch: torch.Tensor, classes: list[int], name: str
) -> list[dict[str, Any]]:
    """Grad-CAM at the conv map of module ``name`` (captum's ``LayerGradCam``)."""
    from captum.attr import LayerGradCam

    module = dict(model.named_modules())[name]
    with torch.enable_grad():
        cams = LayerGradCam(model, module).attribute(
            batch.clone().requires_grad_(True), target=classes, relu_attributions=True
        )
    return _evidence("Grad-CAM", name, classes, cams[:, 0])


def _token_grad_cam(
    model: nn.Module, batch: torch.Tensor, classes: list[int], name: str
) -> list[dict[str, Any]]:
    """Grad-CAM on the patch grid at the input of the last block (``*.norm1``); ``name`` is
    the last spatial layer, named in the note when there is no such block."""
    named = dict(model.named_modules())
    blocks = [n for n in named if n.endswith(".norm1")]
    if not blocks:
        note = f"the last spatial layer ({name}) is a token layer of no known block layout"
        return [{"note": note}] * len(batch)
    name = blocks[-1]
    kept: dict[str, torch.Tensor] = {}
    with capture(model, {name: named[name]}, lambda _n, _m, _i, o: kept.update(out=o)):
        with torch.enable_grad():
            logits = model(batch.clone().requires_grad_(True))
            chosen = logits.gather(1, torch.tensor(classes, device=logits.device)[:, None])
            (grads,) = torch.autograd.grad(chosen.sum(), kept["out"])
    acts, grads = spatial_maps(kept["out"].detach(), model), spatial_maps(grads, model)
    if acts is None or grads is None:
        return [{"note": f"{name}: its tokens do not form a patch grid"}] * len(batch)
    cams = (grads.mean(dim=(2, 3), keepdim=True) * acts).sum(dim=1).clamp_min(0)
    return _evidence("Grad-CAM (patch tokens)", name, classes, cams)


def _evidence(
    method: str, layer: str, classes: list[int], cams: torch.Tensor
) -> list[dict[str, Any]]:
    return [
        {"method": method, "layer": layer, "class": cls, "map": as_grid(cam.detach())}
        for cls, cam in zip(classes, cams, strict=True)
    ]
