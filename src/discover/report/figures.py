"""The report's pictures: probe images as PIL images, heatmaps, histograms, the sparsity plot."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from discover.data.folders import ImageTooLargeError, open_image
from discover.errors import InputError

__all__ = [
    "HEAT_ALPHA",
    "HEAT_COLORMAP",
    "HEAT_OUTLINE",
    "draw_heatmap",
    "heat_legend_png",
    "histogram_png",
    "probe_image",
    "sparsity_plot",
    "to_pil",
]


def to_pil(image: Any, what: str = "image") -> Image.Image:
    """A PIL image from a PIL image or image file, a ``(C, H, W)`` tensor or an ``(H, W, C)`` array.

    ``uint8`` data is taken as is; float data must lie in ``[0, 1]``.

    Example:
        >>> to_pil(torch.zeros(3, 8, 8)).size
        (8, 8)
    """
    if isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise FileNotFoundError(f"{what}: no image file {image}")
        try:
            with open_image(image) as opened:
                opened.load()
                image = opened.copy()
        except ImageTooLargeError as err:
            raise InputError(f"{what}: image file {image} is too large: {err}") from None
        except OSError as err:
            raise InputError(f"{what}: cannot read image file {image}: {err}") from err
    if isinstance(image, Image.Image):
        return image if image.mode in ("L", "RGB", "RGBA") else image.convert("RGB")
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu()
        if array.dim() == 2:
            array = array[None]
        if array.dim() != 3 or array.shape[0] not in (1, 3, 4):
            raise InputError(
                f"{what}: a tensor image must be (C, H, W) with C in 1, 3, 4 or (H, W); "
                f"got shape {tuple(image.shape)}"
            )
        array = array.permute(1, 2, 0).numpy()
    elif isinstance(image, np.ndarray):
        array = image[..., None] if image.ndim == 2 else image
        if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
            raise InputError(
                f"{what}: an array image must be (H, W, C) with C in 1, 3, 4 or (H, W); "
                f"got shape {image.shape}"
            )
    else:
        raise InputError(
            f"{what}: expected a PIL image, an image file, a (C, H, W) tensor or an (H, W, C) "
            "array, got "
            f"{type(image).__name__}"
        )
    if array.dtype != np.uint8:
        array = array.astype(np.float32)
        lo, hi = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo < -1e-3 or hi > 1 + 1e-3:
            raise InputError(
                f"{what}: float pixel values span [{lo:.3g}, {hi:.3g}], expected [0, 1]; "
                "pass raw images (the probe set without the model's normalisation)"
            )
        array = np.round(np.clip(array, 0, 1) * 255).astype(np.uint8)
    if array.shape[2] == 1:
        return Image.fromarray(array[:, :, 0], "L")
    return Image.fromarray(np.ascontiguousarray(array), "RGB" if array.shape[2] == 3 else "RGBA")


def probe_image(probe: Dataset, index: int) -> Any:
    """The image of probe item ``index`` (an item is ``(image, label, ...)`` or the image)."""
    item = probe[index]
    return item[0] if isinstance(item, (tuple, list)) else item


HEAT_COLORMAP = "inferno"
"""The heatmaps' colour map: perceptually uniform, dark (the unit silent) to bright (its
peak), readable in greyscale and by colour-blind readers."""
HEAT_ALPHA = 0.6
HEAT_OUTLINE = 0.5
"""The outline on a heatmap marks where the unit exceeds this fraction of its peak over its
top images (a NetDissect-style thresholded region)."""


def draw_heatmap(image: Any, heat: Any) -> Any:
    """``image`` (PIL) with ``heat`` (an ``h x w`` array in [0, 1]) upsampled over it in
    :data:`HEAT_COLORMAP` and the region above :data:`HEAT_OUTLINE` outlined in cyan; the
    picture the report draws for a unit's map.

    Example:
        >>> from PIL import Image
        >>> draw_heatmap(Image.new("RGB", (32, 32)), np.eye(4)).size
        (32, 32)
    """
    from matplotlib import colormaps

    heat = np.asarray(heat, dtype=np.float32)

    size = image.size
    up = Image.fromarray(heat.astype(np.float32), mode="F").resize(size, Image.BILINEAR)
    values = np.clip(np.asarray(up), 0.0, 1.0)
    colours = (colormaps[HEAT_COLORMAP](values)[..., :3] * 255).astype(np.float32)
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    blend = (1 - HEAT_ALPHA) * base + HEAT_ALPHA * colours
    inside = values > HEAT_OUTLINE
    eroded = inside.copy()
    eroded[1:, :] &= inside[:-1, :]
    eroded[:-1, :] &= inside[1:, :]
    eroded[:, 1:] &= inside[:, :-1]
    eroded[:, :-1] &= inside[:, 1:]
    blend[inside & ~eroded] = (0, 255, 255)
    return Image.fromarray(np.rint(blend).astype(np.uint8))


def heat_legend_png(path: Path, size=(168, 30)) -> None:
    """The heatmaps' colour bar: 0 (silent) to 1 (the unit's peak), the outline level marked."""
    from matplotlib import colormaps

    width, height = size
    ramp = np.linspace(0.0, 1.0, width)
    bar = (colormaps[HEAT_COLORMAP](ramp)[:, :3] * 255).astype(np.uint8)
    image = Image.new("RGB", size, (255, 255, 255))
    image.paste(Image.fromarray(np.repeat(bar[None], height - 12, axis=0)), (0, 0))
    draw = ImageDraw.Draw(image)
    x = round(HEAT_OUTLINE * (width - 1))
    draw.line([x, 0, x, height - 12], fill=(0, 255, 255), width=2)
    draw.text((0, height - 11), "0", fill=(60, 60, 60))
    draw.text((width - 8, height - 11), "1", fill=(60, 60, 60))
    image.save(path)


def histogram_png(values: np.ndarray, path: Path, bins: int, size=(168, 44)) -> dict[str, Any]:
    """A small activation histogram drawn straight into a PNG (a few hundred per second).

    Heights are square-root scaled so that a spike at 0 (losing LWTA units) does not hide the
    rest; negative bins are orange, positive ones blue, and a grey line marks 0.
    """
    width, height = size
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    span = hi - lo if hi > lo else 1.0
    counts, edges = np.histogram(finite, bins=bins, range=(lo, lo + span))
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    peak = max(int(counts.max()) if counts.size else 0, 1)
    for i, count in enumerate(counts):
        if not count:
            continue
        x0 = round(i * width / bins)
        x1 = max(x0, round((i + 1) * width / bins) - 1)
        bar = max(1, round(math.sqrt(count / peak) * (height - 3)))
        colour = (235, 130, 40) if edges[i + 1] <= 0 else (55, 110, 200)
        draw.rectangle([x0, height - 1 - bar, x1, height - 1], fill=colour)
    if lo < 0 < hi:
        x = round((0 - lo) / span * (width - 1))
        draw.line([x, 0, x, height - 1], fill=(120, 120, 120))
    image.save(path)
    return {
        "min": lo,
        "max": hi,
        "zero": float((values == 0).mean()) if values.size else 0.0,
    }


def _mpl_text(text: str) -> str:
    """Keep matplotlib from reading ``$...$`` in layer names as mathtext."""
    return text.replace("$", r"\$")


def sparsity_plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Horizontal bars of the active fraction per layer; a red tick at ``1/U`` for LWTA."""
    from matplotlib.figure import Figure

    height = 1.2 + 0.28 * len(rows)
    fig = Figure(figsize=(7.0, height), dpi=100, layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(rows))
    ax.barh(y, [r["fraction"] for r in rows], color="#3b6fc4", height=0.7)
    marked = False
    for i, r in enumerate(rows):
        if r["U"] and r["U"] > 1:
            ax.plot(
                [1 / r["U"]] * 2,
                [i - 0.45, i + 0.45],
                color="#d62728",
                linewidth=2,
                label="1/U" if not marked else None,
            )
            marked = True
    ax.set_yticks(y, [_mpl_text(r["layer"]) for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("active fraction")
    ax.grid(axis="x", alpha=0.3)
    if marked:
        ax.legend(loc="lower right", fontsize=8)
    fig.savefig(path)
