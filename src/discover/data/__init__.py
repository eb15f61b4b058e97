"""Stage 0, images: generated and file data sets, transforms and the photo sampler.

Imports only :mod:`discover._utils`.
"""

from __future__ import annotations

from .datasets import (
    COLOURS,
    DATASETS,
    FACTORS,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    POSITIONS,
    SHAPES,
    SIZES,
    SPLITS,
    TEXTURES,
    DataConfig,
    FashionMNIST,
    RobustImageFolder,
    ShapeFactors,
    ShapesConfig,
    ShapesWorld,
    TorchvisionImages,
    UnreadableImageError,
    build_dataset,
    build_transforms,
    eval_transform,
    list_datasets,
    read_idx,
    register_dataset,
)
from .photos import (
    PHOTOS,
    load_photos,
    sample_photos,
)

__all__ = [
    "SPLITS",
    "SHAPES",
    "COLOURS",
    "TEXTURES",
    "SIZES",
    "POSITIONS",
    "FACTORS",
    "ShapesConfig",
    "ShapeFactors",
    "ShapesWorld",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "read_idx",
    "FashionMNIST",
    "RobustImageFolder",
    "UnreadableImageError",
    "TorchvisionImages",
    "DATASETS",
    "register_dataset",
    "list_datasets",
    "build_dataset",
    "DataConfig",
    "build_transforms",
    "eval_transform",
    "PHOTOS",
    "load_photos",
    "sample_photos",
]
