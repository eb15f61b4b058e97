"""A handful of real photos that ship with scikit-image, for smoke runs and demos.

They are natural images available offline (no download), not a benchmark.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torch import nn

from discover.errors import InputError

__all__ = ["PHOTOS", "load_photos", "sample_photos"]

# name -> scikit-image loader; all are bundled with the package (no download).
PHOTOS: dict[str, str] = {
    "astronaut": "astronaut",
    "coffee": "coffee",
    "cat": "chelsea",
    "rocket": "rocket",
    "motorcycle": "stereo_motorcycle",
}


def load_photos() -> dict[str, Image.Image]:
    """The bundled scikit-image photos as RGB PIL images, by name.

    Example:
        >>> sorted(load_photos())[:2]
        ['astronaut', 'cat']
    """
    from skimage import data

    photos = {}
    for name, loader in PHOTOS.items():
        image = getattr(data, loader)()
        if isinstance(image, tuple):  # stereo_motorcycle returns (left, right, disparity)
            image = image[0]
        photos[name] = Image.fromarray(np.asarray(image)).convert("RGB")
    return photos


def sample_photos(model: nn.Module) -> tuple[list[str], torch.Tensor]:
    """The photos as one batch, preprocessed with ``model``'s evaluation transform.

    The transform comes from the model's ``pretrained_cfg`` (input size, mean/std,
    interpolation, crop), as timm resolves it; greyscale models get the luminance.

    Example:
        >>> names, batch = sample_photos(create_model("small_resnet"))  # doctest: +SKIP
        >>> batch.shape
        torch.Size([5, 3, 64, 64])
    """
    from timm.data import create_transform, resolve_data_config

    config = resolve_data_config({}, model=model)
    in_chans = config["input_size"][0]
    if in_chans == 1:
        config = {
            **config,
            "input_size": (3, *config["input_size"][1:]),
            "mean": config["mean"] * 3,
            "std": config["std"] * 3,
        }
    transform = create_transform(**config)
    photos = load_photos()
    batch = torch.stack([transform(image) for image in photos.values()])
    if in_chans == 1:
        batch = batch.mean(dim=1, keepdim=True)
    elif in_chans != 3:
        raise InputError(
            f"sample_photos: model expects {in_chans} input channels; "
            "the photos have 3 (or 1 after conversion)"
        )
    return list(photos), batch
