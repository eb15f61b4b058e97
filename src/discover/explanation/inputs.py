"""What :func:`~discover.explanation.explain` takes in: image files, raw images or model
inputs, turned into one batch; and the forward pass with clear errors for inputs the model
cannot take."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from discover.data.folders import ImageTooLargeError, open_image
from discover.errors import InputError
from discover.nn.models import default_input_size

__all__ = ["read_images"]


def read_images(
    paths: Sequence[str | os.PathLike[str]],
) -> tuple[list[Any], list[str], dict[str, str]]:
    """Open image files with PIL: ``(images, names, failures)``.

    A file that cannot be read is reported in ``failures`` (path -> reason) and left out;
    the other images are still returned.

    Example:
        >>> images, names, failures = read_images(["a.png", "broken.jpg"])  # doctest: +SKIP
        >>> failures  # doctest: +SKIP
        {'broken.jpg': 'cannot identify image file'}
    """
    from PIL import Image

    images, names, failures = [], [], {}
    for path in paths:
        name = os.fspath(path)
        try:
            with open_image(name) as image:
                image.load()
                images.append(_rgb_or_grey(image))
            names.append(name)
        except FileNotFoundError:
            failures[name] = "no such file"
        except IsADirectoryError:
            failures[name] = "is a directory"
        except ImageTooLargeError as exc:
            failures[name] = f"too large: {exc}"
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            failures[name] = str(exc).replace(f"{name!r}", "").strip() or type(exc).__name__
    return images, names, failures


def _rgb_or_grey(image: Any) -> Any:
    """A PIL image in mode ``RGB`` or ``L`` (alpha dropped, palettes and CMYK converted)."""
    if image.mode in ("RGB", "L"):
        return image.copy()
    return image.convert("L" if image.mode in ("LA", "La", "I", "I;16", "F") else "RGB")


def _eval_transform(model: nn.Module) -> Callable:
    from discover.data.transforms import eval_transform

    try:
        return eval_transform(model)
    except ValueError as exc:
        raise InputError(
            f"explain: raw images need a transform and {exc}; pass transform= or "
            "preprocessed float tensors"
        ) from None


def forward_logits(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """``model(batch)`` as float logits; inputs the model cannot take are a clear error."""
    expected = default_input_size(model)
    if batch.shape[1] != expected[0]:
        raise InputError(
            f"explain: the model takes {expected[0]}-channel inputs (input size "
            f"{tuple(expected)}), the images are {tuple(batch.shape[1:])}"
        )
    try:
        return model(batch).float()
    except (RuntimeError, AssertionError) as exc:  # e.g. a timm ViT given another image size
        raise InputError(
            f"explain: the model cannot run on inputs of shape {tuple(batch.shape[1:])} "
            f"(its input size is {tuple(expected)}): {exc}"
        ) from exc


def as_batch(
    model: nn.Module,
    images: Any,
    names: Sequence[str] | None,
    transform: Callable | None,
) -> tuple[torch.Tensor, list[str], list[Any] | None]:
    """Model inputs ``(N, C, H, W)``, a name per image and the raw images (``None`` when
    given preprocessed float tensors)."""
    raw: list[Any] | None = None
    if isinstance(images, torch.Tensor) and images.is_floating_point():
        batch = _float_batch(images)
        default = [f"image[{i}]" for i in range(len(batch))]
    else:
        items = _raw_items(images)
        batch, default, raw = _preprocessed(items, transform or _eval_transform(model))
    if names is None:
        names = default
    if len(names) != len(batch):
        raise InputError(f"explain: {len(names)} names for {len(batch)} images")
    return batch, list(names), raw


def _float_batch(images: torch.Tensor) -> torch.Tensor:
    """Preprocessed model inputs as ``(N, C, H, W)``."""
    batch = images.unsqueeze(0) if images.dim() == 3 else images
    if batch.dim() != 4:
        raise InputError(
            f"explain: a float tensor of images must be (C, H, W) or (N, C, H, W) model "
            f"inputs, got shape {tuple(images.shape)}"
        )
    return batch


def _raw_items(images: Any) -> list[Any]:
    """Raw images as a list: one file, PIL image or ``uint8`` tensor, or several."""
    if isinstance(images, torch.Tensor):  # uint8 raw images
        items = [images] if images.dim() == 3 else list(images)
    elif isinstance(images, (str, os.PathLike)) or not isinstance(images, Sequence):
        items = [images]
    else:
        items = list(images)
    if not items:
        raise InputError("explain: no images given")
    return items


def _preprocessed(
    items: list[Any], transform: Callable
) -> tuple[torch.Tensor, list[str], list[Any]]:
    """Read and transform raw images: ``(batch, names, images as read)``."""
    loaded, names, raw = [], [], []
    for i, item in enumerate(items):
        if isinstance(item, (str, os.PathLike)):
            read, _, failures = read_images([item])
            if failures:
                raise InputError(
                    f"cannot read image {os.fspath(item)}: {failures[os.fspath(item)]}"
                )
            item, label = read[0], os.fspath(item)
        else:
            label = f"image[{i}]"
            if hasattr(item, "mode") and hasattr(item, "convert"):  # a PIL image
                item = _rgb_or_grey(item)
        try:
            loaded.append(transform(item))
        except (TypeError, ValueError, RuntimeError) as exc:
            raise InputError(
                f"explain: cannot preprocess {label} ({type(item).__name__}): {exc}"
            ) from None
        names.append(label)
        raw.append(item)
    return torch.stack(loaded), names, raw
