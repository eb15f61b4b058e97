"""Stage 0, images: generated and file data sets, transforms and the photo sampler.

Imports only :mod:`discover._utils`.
"""

from __future__ import annotations

from .fashion_mnist import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    FashionMNIST,
    read_idx,
)
from .folders import RobustImageFolder, TorchvisionImages, UnreadableImageError
from .photos import (
    PHOTOS,
    load_photos,
    sample_photos,
)
from .registry import DATASETS, build_dataset, build_probe, list_datasets, register_dataset
from .shapes import (
    COLOURS,
    FACTORS,
    POSITIONS,
    SHAPES,
    SIZES,
    SPLITS,
    TEXTURES,
    ShapeFactors,
    ShapesConfig,
    ShapesWorld,
)
from .transforms import BatchAugment, DataConfig, build_transforms, eval_transform

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
    "build_probe",
    "DataConfig",
    "build_transforms",
    "BatchAugment",
    "eval_transform",
    "PHOTOS",
    "load_photos",
    "sample_photos",
]
