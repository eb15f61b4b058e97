"""Datasets and input transforms.

* :class:`ShapesWorld`: procedurally rendered images of one coloured object on a textured
  background. Every factor (shape, colour, background colour, texture, size, position) is
  known, so each image carries an exact multi-hot concept vector: a ground truth for
  dissection (method.md §6) that needs no image-text model. Nothing is stored or downloaded.
* :class:`FashionMNIST`: read from the idx files of the Debian package ``dataset-fashion-mnist``.
* :class:`RobustImageFolder`: torchvision's ``ImageFolder`` that follows links safely, skips
  and counts undecodable files and is fingerprinted by content; :class:`TorchvisionImages` wraps CIFAR-10/100, Places365 and ImageNet found on disk.
* :func:`build_dataset` picks a dataset by name from the :data:`DATASETS` registry.
* :class:`DataConfig` and :func:`build_transforms` turn a model's ``pretrained_cfg`` into
  torchvision v2 pipelines.

Without a transform every dataset returns raw ``uint8`` CHW tensors, so one dataset can feed
models with different input sizes, channel counts and normalisations.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import math
import operator
import os
import struct
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2.functional import pil_to_tensor

from discover._utils import Registry, cache_root

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
]

SPLITS = ("train", "val", "test")

# --------------------------------------------------------------------------------------------
# Shapes world: factor vocabularies
# --------------------------------------------------------------------------------------------

ShapeFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _polygon(vertices: Sequence[Sequence[float]]) -> ShapeFn:
    """Even-odd point-in-polygon test on broadcastable coordinate arrays ``(u, v)``."""
    points = np.asarray(vertices, dtype=np.float64)
    edges = list(zip(points, np.roll(points, -1, axis=0), strict=True))

    def inside(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        result = np.zeros(np.broadcast_shapes(u.shape, v.shape), dtype=bool)
        for (x0, y0), (x1, y1) in edges:
            if y0 != y1:  # horizontal edges never cross a horizontal ray
                crosses = (y0 > v) != (y1 > v)
                result ^= crosses & (u < x0 + (v - y0) * (x1 - x0) / (y1 - y0))
        return result

    return inside


def _star_vertices(points: int, outer: float, inner: float) -> np.ndarray:
    angle = -np.pi / 2 + np.pi * np.arange(2 * points) / points
    radius = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)


def _heart_vertices(num: int = 64) -> np.ndarray:
    t = np.linspace(0.0, 2 * np.pi, num, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)) - 2.5
    return np.stack([x, y], axis=1) / 16


_ARM = 0.34  # half-width of the cross's arms

# Unit shapes: ``inside(u, v)`` on coordinates in [-1, 1], v pointing down.
_SHAPE_FNS: dict[str, ShapeFn] = {
    "circle": lambda u, v: u * u + v * v <= 0.92**2,
    "square": lambda u, v: (np.abs(u) <= 0.8) & (np.abs(v) <= 0.8),
    "triangle": _polygon([(0.0, -1.0), (1.0, 0.75), (-1.0, 0.75)]),
    "star": _polygon(_star_vertices(5, 1.0, 0.42)),
    "cross": _polygon(
        [
            (-_ARM, -1),
            (_ARM, -1),
            (_ARM, -_ARM),
            (1, -_ARM),
            (1, _ARM),
            (_ARM, _ARM),
            (_ARM, 1),
            (-_ARM, 1),
            (-_ARM, _ARM),
            (-1, _ARM),
            (-1, -_ARM),
            (-_ARM, -_ARM),
        ]
    ),
    "heart": _polygon(_heart_vertices()),
    "diamond": lambda u, v: np.abs(u) / 0.7 + np.abs(v) <= 1.0,
    "hexagon": _polygon(_star_vertices(3, 1.0, 1.0)),
    "ring": lambda u, v: np.abs(np.hypot(u, v) - 0.72) <= 0.23,
    "arrow": _polygon(
        [
            (-1.0, -0.28),
            (0.15, -0.28),
            (0.15, -0.75),
            (1.0, 0.0),
            (0.15, 0.75),
            (0.15, 0.28),
            (-1.0, 0.28),
        ]
    ),
    "crescent": lambda u, v: (u * u + v * v <= 1.0) & ((u - 0.45) ** 2 + v * v > 0.8**2),
}

SHAPES: tuple[str, ...] = tuple(_SHAPE_FNS)
"""Every shape the world can draw. The default classes leave out ``"hexagon"``, which is
hard to tell from a circle at 32 px."""

COLOURS: MappingProxyType[str, tuple[int, int, int]] = MappingProxyType(
    {
        "red": (220, 30, 30),
        "orange": (255, 140, 0),
        "yellow": (250, 220, 30),
        "green": (30, 160, 50),
        "cyan": (0, 200, 220),
        "blue": (30, 70, 220),
        "purple": (120, 40, 170),
        "magenta": (230, 40, 200),
        "white": (245, 245, 245),
        "black": (20, 20, 20),
        "grey": (128, 128, 128),
        "brown": (130, 80, 30),
        "pink": (255, 160, 190),
    }
)
"""Named RGB colours for objects and backgrounds (the first ten are the defaults)."""

TEXTURES: MappingProxyType[str, str] = MappingProxyType(
    {
        "plain": "plain background",
        "stripes": "striped background",
        "dots": "dotted background",
        "checker": "checkered background",
        "noise": "noisy background",
    }
)
"""Background textures and their concept names."""

SIZES: MappingProxyType[str, float] = MappingProxyType(
    {
        "small": 0.16,
        "medium": 0.2,
        "large": 0.23,
    }
)
"""Object radius as a fraction of the image side."""

POSITIONS: MappingProxyType[str, tuple[float, float]] = MappingProxyType(
    {
        f"{row} {col}".replace("middle center", "center"): (fx, fy)
        for row, fy in (("top", 0.25), ("middle", 0.5), ("bottom", 0.75))
        for col, fx in (("left", 0.25), ("center", 0.5), ("right", 0.75))
    }
)
"""The 3x3 grid: name -> (x, y) of the object's centroid as a fraction of the image side.

The centroid always lies inside the named third of the image along each axis.
"""

_SUPERSAMPLE = 4  # anti-aliasing: 4x4 samples per pixel when a shape template is drawn


@functools.lru_cache(maxsize=4096)
def _shape_template(shape: str, radius: float) -> tuple[np.ndarray, float, float]:
    """Anti-aliased coverage of ``shape`` at ``radius`` px, cropped to its support.

    Returns ``(alpha, cx, cy)`` where ``(cx, cy)`` is the coverage centroid in template pixels.
    """
    half = math.ceil(radius) + 1
    side = 2 * half + 1
    coords = ((np.arange(side * _SUPERSAMPLE) + 0.5) / _SUPERSAMPLE - (half + 0.5)) / radius
    inside = _SHAPE_FNS[shape](coords[None, :], coords[:, None])
    alpha = inside.reshape(side, _SUPERSAMPLE, side, _SUPERSAMPLE).mean(axis=(1, 3))
    rows, cols = np.flatnonzero(alpha.any(1)), np.flatnonzero(alpha.any(0))
    alpha = alpha[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.float32)
    total = float(alpha.sum())
    cy = float(alpha.sum(1) @ np.arange(alpha.shape[0])) / total
    cx = float(alpha.sum(0) @ np.arange(alpha.shape[1])) / total
    alpha.setflags(write=False)
    return alpha, cx, cy


@functools.lru_cache(maxsize=16)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def _pattern_colour(rgb: np.ndarray) -> np.ndarray:
    """Second tone of a textured background: darker on light colours, lighter on dark ones."""
    luma = float(rgb @ np.array([0.299, 0.587, 0.114]))
    return rgb * 0.55 if luma > 100 else rgb + (255 - rgb) * 0.4


# --------------------------------------------------------------------------------------------
# Shapes world: dataset
# --------------------------------------------------------------------------------------------

FACTORS = ("shape", "colour", "background", "texture", "size", "position")
"""The factor groups of a Shapes image, in the order of codes and concept groups."""


@dataclass
class ShapesConfig:
    """Parameters of a :class:`ShapesWorld`.

    Each factor is a tuple of names drawn uniformly per image; pass a single name to fix it.

    Args:
        n: number of images.
        seed: base seed; image ``i`` of split ``s`` uses ``np.random.default_rng([seed, s, i])``.
        image_size: side of the square RGB images, in pixels (at least 16).
        shapes: names from :data:`SHAPES`; their order defines the class labels.
        colours: object colours, names from :data:`COLOURS`.
        background_colours: background colours, names from :data:`COLOURS`.
        textures: names from :data:`TEXTURES`.
        sizes: names from :data:`SIZES`.
        positions: names from :data:`POSITIONS`.
        size_jitter: relative uniform jitter of the object radius.
        position_jitter: uniform jitter of the centroid, as a fraction of the image side
            (below 1/12, so the centroid stays inside its named grid cell).
        min_contrast: the smallest RGB distance between the object and background colours.

    Example:
        >>> cfg = ShapesConfig(n=500, image_size=32, textures=("plain",), sizes=("large",))
        >>> ShapesWorld(cfg).concept_groups["texture"]
        ['plain background']
    """

    n: int = 10_000
    seed: int = 0
    image_size: int = 64
    shapes: tuple[str, ...] = tuple(s for s in SHAPES if s != "hexagon")
    colours: tuple[str, ...] = tuple(COLOURS)[:10]
    background_colours: tuple[str, ...] = tuple(COLOURS)[:10]
    textures: tuple[str, ...] = tuple(TEXTURES)
    sizes: tuple[str, ...] = ("small", "large")
    positions: tuple[str, ...] = tuple(POSITIONS)
    size_jitter: float = 0.08
    position_jitter: float = 0.04
    min_contrast: float = 140.0

    def __post_init__(self) -> None:
        vocabularies = {
            "shapes": SHAPES,
            "colours": COLOURS,
            "background_colours": COLOURS,
            "textures": TEXTURES,
            "sizes": SIZES,
            "positions": POSITIONS,
        }
        for attr, vocabulary in vocabularies.items():
            value = getattr(self, attr)
            names = (value,) if isinstance(value, str) else tuple(value)
            unknown = [name for name in names if name not in vocabulary]
            if not names or unknown or len(set(names)) != len(names):
                raise ValueError(
                    f"ShapesConfig.{attr}={names!r}: need distinct names from {tuple(vocabulary)}"
                )
            setattr(self, attr, names)
        if self.n < 0 or self.seed < 0 or self.image_size < 16:
            raise ValueError(
                f"ShapesConfig: need n >= 0, seed >= 0 and image_size >= 16, got "
                f"n={self.n}, seed={self.seed}, image_size={self.image_size}"
            )
        if not 0 <= self.size_jitter < 0.5 or not 0 <= self.position_jitter < 1 / 12:
            raise ValueError(
                "ShapesConfig: need 0 <= size_jitter < 0.5 and 0 <= position_jitter < 1/12"
            )


@dataclass(frozen=True)
class ShapeFactors:
    """The factors of one Shapes image.

    ``centre`` is the (x, y) centroid of the object's coverage, in pixels (pixel ``j`` spans
    ``[j - 0.5, j + 0.5)``); ``radius`` is the radius the shape was drawn at, in pixels.
    """

    shape: str
    colour: str
    background: str
    texture: str
    size: str
    position: str
    centre: tuple[float, float]
    radius: float


class _Layout(NamedTuple):
    codes: np.ndarray
    rng: np.random.Generator
    alpha: np.ndarray
    x0: int
    y0: int
    cx: float
    cy: float
    radius: float


class ShapesWorld(Dataset):
    """Images of one coloured shape on a textured background, rendered on demand.

    Item ``i`` returns ``(image, label)``, or ``(image, label, concepts)`` with
    ``return_concepts=True``. ``image`` is a ``uint8`` tensor ``(3, H, W)`` unless a
    ``transform`` is given, ``label`` is the shape's index in ``class_names`` and ``concepts``
    is a float multi-hot vector over ``concept_names`` with exactly one concept per factor
    group (see ``concept_groups``). Images depend only on ``(seed, split, index)``, never on
    access order or worker processes; the splits use independent random streams.

    Args:
        config: world parameters; keyword ``overrides`` replace its fields.
        split: ``"train"``, ``"val"`` or ``"test"``.
        transform: applied to the ``uint8`` image tensor.
        return_concepts: also return the concept vector.

    Example:
        >>> ds = ShapesWorld(n=1000, seed=0, split="val", return_concepts=True)
        >>> image, label, concepts = ds[3]
        >>> image.shape, ds.class_names[label]  # doctest: +SKIP
        (torch.Size([3, 64, 64]), 'star')
        >>> [ds.concept_names[j] for j in concepts.nonzero().flatten()]  # doctest: +SKIP
        ['star', 'red', 'blue background', 'striped background', 'small', 'top left']
        >>> ds.concepts_table().shape  # doctest: +SKIP
        torch.Size([1000, 46])
    """

    def __init__(
        self,
        config: ShapesConfig | None = None,
        *,
        split: str = "train",
        transform: Callable[[torch.Tensor], Any] | None = None,
        return_concepts: bool = False,
        **overrides: Any,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"ShapesWorld: split must be one of {SPLITS}, got {split!r}")
        base = config if config is not None else ShapesConfig()
        self.config = replace(base, **overrides) if overrides else base
        self.split = split
        self.transform = transform
        self.return_concepts = return_concepts
        cfg = self.config

        self.class_names: list[str] = list(cfg.shapes)
        self.concept_groups: dict[str, list[str]] = {
            "shape": list(cfg.shapes),
            "colour": list(cfg.colours),
            "background": [f"{name} background" for name in cfg.background_colours],
            "texture": [TEXTURES[name] for name in cfg.textures],
            "size": list(cfg.sizes),
            "position": list(cfg.positions),
        }
        self.concept_names: list[str] = [c for group in self.concept_groups.values() for c in group]
        if len(set(self.concept_names)) != len(self.concept_names):
            raise ValueError(f"ShapesWorld: concept names collide: {self.concept_names}")
        self._group_sizes = np.array([len(g) for g in self.concept_groups.values()])
        self._offsets = np.cumsum(self._group_sizes) - self._group_sizes

        self._colours = np.array([COLOURS[c] for c in cfg.colours], dtype=np.float32)
        self._backgrounds = np.array([COLOURS[c] for c in cfg.background_colours], np.float32)
        self._patterns = np.stack([_pattern_colour(rgb) for rgb in self._backgrounds])
        distance = np.linalg.norm(self._colours[:, None] - self._backgrounds[None], axis=-1)
        self._allowed_backgrounds = [np.flatnonzero(row >= cfg.min_contrast) for row in distance]
        for colour, allowed in zip(cfg.colours, self._allowed_backgrounds, strict=True):
            if allowed.size == 0:
                raise ValueError(
                    f"ShapesWorld: no background colour differs from {colour!r} by "
                    f"at least min_contrast={cfg.min_contrast}"
                )

    def __len__(self) -> int:
        return self.config.n

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        layout = self._layout(self._check_index(index))
        image = self._render(layout)
        if self.transform is not None:
            image = self.transform(image)
        label = int(layout.codes[0])
        if self.return_concepts:
            return image, label, self._multi_hot(layout.codes[None])[0]
        return image, label

    def factors(self, index: int) -> ShapeFactors:
        """The factors of image ``index``, with names.

        Example:
            >>> ShapesWorld(n=10).factors(0).shape in SHAPES
            True
        """
        layout = self._layout(self._check_index(index))
        vocabularies = self._vocabularies()
        names = [vocab[code] for vocab, code in zip(vocabularies, layout.codes, strict=True)]
        return ShapeFactors(*names, centre=(layout.cx, layout.cy), radius=layout.radius)

    def factor_codes(self, indices: Sequence[int] | None = None) -> np.ndarray:
        """``(N, 6)`` integer codes of the factors (:data:`FACTORS` order), without rendering.

        Example:
            >>> codes = ShapesWorld(n=100).factor_codes()  # codes[:, 0] are the labels
        """
        indices = range(len(self)) if indices is None else indices
        codes = [self._sample(self._check_index(i))[0] for i in indices]
        return np.stack(codes) if codes else np.zeros((0, len(FACTORS)), dtype=np.int64)

    def concepts(self, index: int) -> torch.Tensor:
        """Multi-hot ground-truth concepts of image ``index``, a float tensor ``(M,)``."""
        return self.concepts_table([index])[0]

    def concepts_table(self, indices: Sequence[int] | None = None) -> torch.Tensor:
        """``(N, M)`` float multi-hot concept matrix of ``indices`` (default: all images).

        Only samples the factors (no rendering): about 25 µs per image.

        Example:
            >>> ds = ShapesWorld(n=200, seed=1)
            >>> table = ds.concepts_table()
            >>> bool((table.sum(1) == len(ds.concept_groups)).all())
            True
        """
        return self._multi_hot(self.factor_codes(indices))

    def mask(self, index: int) -> torch.Tensor:
        """Anti-aliased object coverage of image ``index``, a float tensor ``(H, W)`` in [0, 1].

        Example:
            >>> ds = ShapesWorld(n=10)
            >>> bool(ds.mask(0).sum() > 0)
            True
        """
        layout = self._layout(self._check_index(index))
        size = self.config.image_size
        coverage = np.zeros((size, size), dtype=np.float32)
        h, w = layout.alpha.shape
        coverage[layout.y0 : layout.y0 + h, layout.x0 : layout.x0 + w] = layout.alpha
        return torch.from_numpy(coverage)

    def _vocabularies(self) -> tuple[tuple[str, ...], ...]:
        cfg = self.config
        return (
            cfg.shapes,
            cfg.colours,
            cfg.background_colours,
            cfg.textures,
            cfg.sizes,
            cfg.positions,
        )

    def _check_index(self, index: int) -> int:
        index = operator.index(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"ShapesWorld: index {index} out of range for {len(self)} images")
        return index

    def _sample(self, index: int) -> tuple[np.ndarray, np.random.Generator]:
        """Draw the categorical factors of ``index``; the generator continues for rendering."""
        rng = np.random.default_rng([self.config.seed, SPLITS.index(self.split), index])
        u = rng.random(len(FACTORS))
        codes = np.minimum((u * self._group_sizes).astype(np.int64), self._group_sizes - 1)
        allowed = self._allowed_backgrounds[codes[1]]
        codes[2] = allowed[min(int(u[2] * allowed.size), allowed.size - 1)]
        return codes, rng

    def _layout(self, index: int) -> _Layout:
        codes, rng = self._sample(index)
        cfg = self.config
        size = cfg.image_size
        jitter = rng.uniform(-1.0, 1.0, size=3)
        radius = SIZES[cfg.sizes[codes[4]]] * size * (1 + cfg.size_jitter * jitter[0])
        radius = round(radius * 4) / 4  # quarter-pixel steps keep the template cache small
        alpha, tcx, tcy = _shape_template(cfg.shapes[codes[0]], radius)
        fx, fy = POSITIONS[cfg.positions[codes[5]]]
        h, w = alpha.shape
        x0 = min(max(round((fx + cfg.position_jitter * jitter[1]) * size - 0.5 - tcx), 0), size - w)
        y0 = min(max(round((fy + cfg.position_jitter * jitter[2]) * size - 0.5 - tcy), 0), size - h)
        return _Layout(codes, rng, alpha, x0, y0, x0 + tcx, y0 + tcy, radius)

    def _render(self, layout: _Layout) -> torch.Tensor:
        codes, rng = layout.codes, layout.rng
        size = self.config.image_size
        base, pattern = self._backgrounds[codes[2]], self._patterns[codes[2]]
        image = np.empty((size, size, 3), dtype=np.float32)
        image[:] = base
        texture = self.config.textures[codes[3]]
        if texture != "plain":
            yy, xx = _pixel_grid(size)
            period = size / 8
            p = rng.random(3)
            if texture == "stripes":
                angle = np.pi / 4 * int(p[0] * 4)
                phase = (xx * np.cos(angle) + yy * np.sin(angle)) / period + p[1]
                tone = phase % 1.0 < 0.5
            elif texture == "dots":
                tone = (
                    np.hypot((xx / period + p[1]) % 1.0 - 0.5, (yy / period + p[2]) % 1.0 - 0.5)
                    < 0.3
                )
            elif texture == "checker":
                tone = (np.floor(xx / period + p[1]) + np.floor(yy / period + p[2])) % 2 == 1
            else:  # noise
                tone = rng.random((size, size), dtype=np.float32)
            image += tone[..., None] * (pattern - base)
        h, w = layout.alpha.shape
        region = image[layout.y0 : layout.y0 + h, layout.x0 : layout.x0 + w]
        region += layout.alpha[..., None] * (self._colours[codes[1]] - region)
        image = np.rint(image, out=image).astype(np.uint8)
        return torch.from_numpy(image.transpose(2, 0, 1).copy())

    def _multi_hot(self, codes: np.ndarray) -> torch.Tensor:
        table = torch.zeros(len(codes), len(self.concept_names))
        if len(codes):
            table.scatter_(1, torch.from_numpy(codes + self._offsets), 1.0)
        return table


# --------------------------------------------------------------------------------------------
# Fashion-MNIST
# --------------------------------------------------------------------------------------------

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where the Debian package ``dataset-fashion-mnist`` installs the idx files."""

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (the MNIST format), gzipped if its name ends in ``.gz``.

    Example:
        >>> labels = read_idx(FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz")  # doctest: +SKIP
        >>> labels.shape, labels.dtype  # doctest: +SKIP
        ((10000,), dtype('uint8'))
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] or raw[1] or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an idx file (magic bytes {raw[:4].hex() or 'missing'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: idx header truncated")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(f"{path}: {len(raw)} bytes, expected {expected} for shape {shape}")
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


class FashionMNIST(Dataset):
    """Fashion-MNIST as ``uint8`` tensors ``(1, 28, 28)`` with integer labels.

    Looks for ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` in ``root``, in
    ``root/FashionMNIST/raw`` (torchvision's layout) and in :data:`FASHION_MNIST_DIR`, in that
    order. If none has them and ``download`` is true, torchvision downloads them into ``root``
    (default ``~/.cache/discover/datasets``), which needs internet access.

    Args:
        root: a folder holding the idx files, or torchvision's download root.
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000); ``"val"`` is the test set,
            as Fashion-MNIST has no validation split.
        transform: applied to the ``uint8`` image tensor.
        download: fall back to torchvision's downloader.

    Example:
        >>> ds = FashionMNIST(split="test")  # doctest: +SKIP
        >>> image, label = ds[0]; image.shape, ds.class_names[label]  # doctest: +SKIP
        (torch.Size([1, 28, 28]), 'ankle boot')
    """

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        transform: Callable[[torch.Tensor], Any] | None = None,
        download: bool = True,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"FashionMNIST: split must be one of {SPLITS}, got {split!r}")
        self.split = split
        self.transform = transform
        self.class_names = list(FASHION_MNIST_CLASSES)
        prefix = "train" if split == "train" else "t10k"
        root = Path(root).expanduser() if root is not None else None
        folders = [root, root / "FashionMNIST" / "raw"] if root is not None else []
        folders.append(FASHION_MNIST_DIR)
        files = self._locate(folders, prefix)
        if files is None and download:
            files = self._download(root, prefix, folders)
        if files is None:
            raise FileNotFoundError(self._missing_message(folders, prefix, download))
        self.source = files[0].parent
        images, labels = read_idx(files[0]), read_idx(files[1])
        if images.ndim != 3 or labels.shape != images.shape[:1] or labels.max(initial=0) > 9:
            raise ValueError(
                f"FashionMNIST: {files[0]} {images.shape} and {files[1]} "
                f"{labels.shape} are not matching Fashion-MNIST images and labels"
            )
        self.data = torch.from_numpy(images)
        self.targets = torch.from_numpy(labels.astype(np.int64))

    def __len__(self) -> int:
        return len(self.targets)

    def fingerprint(self) -> str:
        """SHA-256 of the images and labels (content, not paths): caches key on it."""
        digest = hashlib.sha256(b"FashionMNIST")
        for tensor in (self.data, self.targets):
            digest.update(tensor.contiguous().numpy().tobytes())
        return digest.hexdigest()

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.data[index].unsqueeze(0).clone()
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])

    @staticmethod
    def _locate(folders: Sequence[Path], prefix: str) -> tuple[Path, Path] | None:
        for folder in folders:
            images = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
            labels = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
            if images is not None and labels is not None:
                return images, labels
        return None

    @classmethod
    def _download(
        cls, root: Path | None, prefix: str, folders: Sequence[Path]
    ) -> tuple[Path, Path] | None:
        from torchvision.datasets import FashionMNIST as TorchvisionFashionMNIST

        root = root if root is not None else Path.home() / ".cache" / "discover" / "datasets"
        try:
            TorchvisionFashionMNIST(str(root), train=prefix == "train", download=True)
        except (OSError, RuntimeError) as err:  # offline: URLError is an OSError
            warnings.warn(f"FashionMNIST: download into {root} failed: {err}", stacklevel=3)
            return None
        return cls._locate([*folders, root / "FashionMNIST" / "raw"], prefix)

    @staticmethod
    def _missing_message(folders: Sequence[Path], prefix: str, download: bool) -> str:
        where = ", ".join(str(folder) for folder in folders)
        tried = "; torchvision's download failed too" if download else ""
        return (
            f"Fashion-MNIST not found: looked for {prefix}-images-idx3-ubyte[.gz] and "
            f"{prefix}-labels-idx1-ubyte[.gz] in {where}{tried}. Install it with "
            f"`apt-get install dataset-fashion-mnist` (files go to {FASHION_MNIST_DIR}), "
            f"or pass root= a folder holding the four idx files."
        )


# --------------------------------------------------------------------------------------------
# User data: image folders and torchvision datasets found on disk
# --------------------------------------------------------------------------------------------

_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
_BACKGROUND = 255  # transparent pixels are composited onto white
_RACY_NS = 2_000_000_000  # files changed this recently are hashed again next time (racy git)


def _to_rgb(image: Any) -> torch.Tensor:
    """A PIL image of any mode as a ``uint8`` RGB tensor ``(3, H, W)``.

    16-bit grey is scaled to 8 bits (``v / 257``, rounded), 32-bit integer and float images are
    read on the 0-255 scale (clipped), CMYK, YCbCr and HSV are converted by Pillow, and
    transparency (an alpha channel or a palette / colour-key ``transparency``) is composited
    onto white.
    """
    mode = image.mode
    if mode.startswith("I;16"):
        grey = np.asarray(image).astype(np.float64) / 257.0
        return torch.from_numpy(np.rint(grey).astype(np.uint8)).expand(3, -1, -1).contiguous()
    if mode in ("I", "F"):
        grey = np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
        return torch.from_numpy(grey).expand(3, -1, -1).contiguous()
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint32)
        alpha = rgba[..., 3:]
        rgb = (rgba[..., :3] * alpha + _BACKGROUND * (255 - alpha) + 127) // 255
        return torch.from_numpy(rgb.astype(np.uint8)).permute(2, 0, 1).contiguous()
    return pil_to_tensor(image.convert("RGB"))


def _read_rgb(path: str) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as image:
        return _to_rgb(image)


class UnreadableImageError(ValueError):
    """An image of a :class:`RobustImageFolder` could not be decoded when it was loaded."""


def _stat_key(stat: os.stat_result) -> list[int]:
    """What must be unchanged for a remembered digest to hold: size, times, inode, device.

    ``ctime`` is part of it: writing a file or restoring its mtime with ``os.utime`` changes
    it, and no user call can set it back.
    """
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev]


class _DigestIndex:
    """SHA-256 and decode verdict of the files of one folder, remembered across runs.

    A JSON file under ``cache_root()/digests``, keyed by absolute path; an entry is used only
    while the file's :func:`_stat_key` is unchanged. An unreadable, foreign or stale index is
    ignored; the index is rewritten atomically (temporary file in the same folder, then
    ``os.replace``) with the entries of the current files only.
    """

    FORMAT = 1

    def __init__(self, folder: Path, enabled: bool = True) -> None:
        from PIL import __version__ as pillow

        name = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:32]
        self.path = cache_root() / "digests" / f"{name}.json" if enabled else None
        self.pillow = pillow  # decode verdicts hold for one Pillow version
        self.entries: dict[str, dict[str, Any]] = {}
        self.changed = False
        if self.path is not None:
            try:
                data = json.loads(self.path.read_text())
                if data["format"] == self.FORMAT and data["pillow"] == self.pillow:
                    self.entries = {str(k): dict(v) for k, v in data["files"].items()}
            except FileNotFoundError:
                pass
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                self.changed = True  # damaged or foreign: rewrite it

    def get(self, path: str, stat: os.stat_result) -> dict[str, Any] | None:
        entry = self.entries.get(path)
        if entry is None or entry.get("stat") != _stat_key(stat):
            return None
        sha, error = entry.get("sha256"), entry.get("error")
        valid = isinstance(sha, str) and len(sha) == 64 and isinstance(error, (str, type(None)))
        return entry if valid else None

    def put(self, path: str, stat: os.stat_result, **values: Any) -> None:
        key = _stat_key(stat)
        if max(stat.st_mtime_ns, stat.st_ctime_ns) > time.time_ns() - _RACY_NS:
            self.entries.pop(path, None)  # may change again within the clock's resolution
            return
        entry = self.entries.get(path)
        self.entries[path] = {**(entry if entry and entry.get("stat") == key else {}), **values}
        self.entries[path]["stat"] = key
        self.changed = True

    def save(self, keep: Sequence[str]) -> None:
        """Write the entries of ``keep`` (the current files) when anything changed."""
        if self.path is None or not (self.changed or set(self.entries) - set(keep)):
            return
        data = {
            "format": self.FORMAT,
            "pillow": self.pillow,
            "files": {p: self.entries[p] for p in keep if p in self.entries},
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(
                "w", dir=self.path.parent, prefix=f".{self.path.name}.", delete=False
            ) as tmp:
                json.dump(data, tmp)
            os.replace(tmp.name, self.path)
        except OSError as err:
            warnings.warn(f"RobustImageFolder: cannot write {self.path} ({err})", stacklevel=4)
        self.changed = False


def _examine(path: str, decode: bool) -> dict[str, Any]:
    """Stream ``path`` through SHA-256 and, when ``decode``, decode it once."""
    from PIL import Image

    with open(path, "rb") as file:
        digest = hashlib.sha256()
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
        result: dict[str, Any] = {"sha256": digest.hexdigest()}
        if decode:
            file.seek(0)
            try:
                with Image.open(file) as image:
                    _to_rgb(image)
            except Image.UnidentifiedImageError:
                result["error"] = "not an image file Pillow can identify"
            except Exception as err:  # decoders raise many error types
                result["error"] = f"{type(err).__name__}: {err}"
            else:
                result["error"] = None
    return result


class RobustImageFolder(ImageFolder):
    """``root/<class>/<image>`` folders as ``uint8`` RGB tensors; unreadable files are skipped.

    Files are found with symbolic links followed: a directory reached twice (a link loop) is
    walked once, and a file reached through several paths (links, hard links) is one sample,
    listed under its own path when it has one inside ``root`` (``duplicates`` maps the other
    paths to it). Every image mode is converted to RGB (see :func:`_to_rgb`).

    With ``verify="full"`` (the default) every file is decoded once when the data set is built,
    and the ones that fail are left out, so the data set holds exactly the readable images.
    ``skipped`` (path -> reason) lists them; it is fixed at construction and is the one count
    that warnings, ``dissection.json``, training runs and reports show. The SHA-256 of each
    file and its verdict are remembered under ``cache_root()/digests`` while its size, times
    and inode are unchanged, so building again is quick. ``"header"`` only checks the file
    structure and ``"none"`` nothing: faster, but an image that then fails to decode raises
    :class:`UnreadableImageError` when loaded (it is never replaced by another image).

    Args:
        root: the folder holding one sub-folder per class.
        transform: applied to the ``uint8`` image tensor.
        verify: ``"full"``, ``"header"`` or ``"none"``.
        digest_cache: remember digests and verdicts under the cache root.

    Example:
        >>> ds = RobustImageFolder("~/data/places365/val")  # doctest: +SKIP
        >>> len(ds.skipped), ds.class_names[:2]  # doctest: +SKIP
        (0, ['airfield', 'airplane_cabin'])
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable[[torch.Tensor], Any] | None = None,
        verify: Literal["none", "header", "full"] = "full",
        digest_cache: bool = True,
    ) -> None:
        if verify not in ("none", "header", "full"):
            raise ValueError(f"RobustImageFolder: verify must be none/header/full, got {verify!r}")
        path = Path(root).expanduser()
        layout = (
            "expected an ImageFolder layout: one sub-folder per class holding its images, "
            "e.g. root/dog/0001.jpg, root/cat/0002.png"
        )
        if not path.is_dir():
            raise FileNotFoundError(f"RobustImageFolder: {path} is not a directory; {layout}")
        self.skipped: dict[str, str] = {}
        self.duplicates: dict[str, str] = {}
        try:
            super().__init__(str(path), transform=transform, loader=_read_rgb)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"RobustImageFolder: {path}: {err}; {layout}") from err
        self.class_names: list[str] = list(self.classes)
        self.verify = verify
        self.digest_cache = digest_cache
        if verify != "none":
            self._verify(verify)
        if self.skipped:
            warnings.warn(
                f"RobustImageFolder: skipped {len(self.skipped)} unreadable image(s) under "
                f"{self.root}, e.g. {next(iter(self.skipped))} "
                f"({next(iter(self.skipped.values()))})",
                stacklevel=2,
            )
        if not self.samples:
            raise FileNotFoundError(f"RobustImageFolder: no readable image under {self.root}")

    def make_dataset(  # type: ignore[override]
        self,
        directory: str | Path,
        class_to_idx: dict[str, int] | None = None,
        extensions: tuple[str, ...] | None = None,
        is_valid_file: Callable[[str], bool] | None = None,
        allow_empty: bool = False,
    ) -> list[tuple[str, int]]:
        """Samples in sorted order, symlinks followed without loops, each file once."""
        from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

        if class_to_idx is None:
            _, class_to_idx = self.find_classes(str(directory))
        valid = is_valid_file or (
            lambda p: has_file_allowed_extension(p, extensions or IMG_EXTENSIONS)
        )
        first: dict[tuple[int, int], int] = {}  # (device, inode) -> index in samples
        folders = {name: _identity(os.path.join(directory, name)) for name in class_to_idx}
        folders[""] = _identity(str(directory))
        samples: list[tuple[str, int]] = []
        empty = []
        for name in sorted(class_to_idx):
            found = False
            others = {key for other, key in folders.items() if other != name}
            for file in _walk(os.path.join(directory, name), valid, others):
                found = True
                try:
                    stat = os.stat(file)
                except OSError as err:  # e.g. a broken symbolic link
                    self.skipped[file] = f"{type(err).__name__}: {err}"
                    continue
                key = (stat.st_dev, stat.st_ino)
                if key not in first:
                    first[key] = len(samples)
                    samples.append((file, class_to_idx[name]))
                    continue
                kept = samples[first[key]][0]
                if not _is_own_path(kept, directory) and _is_own_path(file, directory):
                    samples[first[key]] = (file, class_to_idx[name])
                    kept, file = file, kept
                self.duplicates[file] = kept
            if not found:
                empty.append(name)
        if empty and not allow_empty:
            raise FileNotFoundError(f"found no image file for the classes {', '.join(empty)}")
        return samples

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, target = self.samples[index]
        try:
            image = self.loader(path)
        except Exception as err:  # decoders raise many error types
            hint = (
                "it decoded when the data set was built, so it changed since: build it again"
                if self.verify == "full"
                else "build the data set with verify='full' (the default) to skip such files"
            )
            raise UnreadableImageError(
                f"RobustImageFolder: cannot decode {path} ({type(err).__name__}: {err}); {hint}"
            ) from err
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target

    def fingerprint(self) -> str:
        """SHA-256 of every sample's bytes and label, in order: caches key on it.

        File contents are hashed (streamed); names, sizes and times only decide whether a
        digest remembered under ``cache_root()/digests`` can be reused.
        """
        results = self._examine_all(decode=False)
        digest = hashlib.sha256(b"RobustImageFolder\n")
        for path, target in self.samples:
            digest.update(f"{target} {results[path]['sha256']}\n".encode())
        return digest.hexdigest()

    def _examine_all(self, decode: bool) -> dict[str, dict[str, Any]]:
        """Digest (and, when ``decode``, verdict) of every sample, from the index if fresh."""
        index = _DigestIndex(Path(self.root), enabled=self.digest_cache)
        results: dict[str, dict[str, Any]] = {}
        todo: list[tuple[str, os.stat_result]] = []
        for path, _ in self.samples:
            try:
                stat = os.stat(path)
            except OSError as err:
                raise FileNotFoundError(f"RobustImageFolder: {path} has gone ({err})") from err
            entry = index.get(os.path.abspath(path), stat)
            if entry is not None and "sha256" in entry and (not decode or "error" in entry):
                results[path] = entry
            else:
                todo.append((path, stat))
        workers = min(8, os.cpu_count() or 1, len(todo))
        if todo:
            with ThreadPoolExecutor(max(workers, 1)) as pool:
                done = pool.map(lambda item: _examine(item[0], decode), todo)
                for (path, stat), result in zip(todo, done, strict=True):
                    index.put(os.path.abspath(path), stat, **result)
                    results[path] = result
        index.save([os.path.abspath(path) for path, _ in self.samples])
        return results

    def _verify(self, mode: str) -> None:
        from PIL import Image

        if mode == "full":
            results = self._examine_all(decode=True)
            errors = {path: results[path].get("error") for path, _ in self.samples}
        else:
            errors = {}
            for path, _ in self.samples:
                try:
                    with Image.open(path) as image:
                        image.verify()
                except Exception as err:  # see __getitem__
                    errors[path] = f"{type(err).__name__}: {err}"
        self.skipped.update({path: reason for path, reason in errors.items() if reason})
        self.samples = self.imgs = [s for s in self.samples if not errors.get(s[0])]
        self.targets = [target for _, target in self.samples]


def _identity(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _walk(
    directory: str, valid: Callable[[str], bool], exclude: set[tuple[int, int] | None]
) -> list[str]:
    """Files under ``directory`` (links followed), sorted: a directory's files, then its
    sub-directories. A directory reached again through a link, or one in ``exclude`` (the
    root and the other classes), is not walked."""
    seen = set(exclude)
    files: list[str] = []

    def visit(folder: str) -> None:
        try:
            stat = os.stat(folder)
            if (stat.st_dev, stat.st_ino) in seen:
                return
            seen.add((stat.st_dev, stat.st_ino))
            entries = sorted(os.scandir(folder), key=operator.attrgetter("name"))
        except OSError:
            return
        folders = []
        for entry in entries:
            try:
                is_dir = entry.is_dir()  # follows links
            except OSError:
                is_dir = False
            if is_dir:
                folders.append(entry.path)
            elif valid(entry.path):
                files.append(entry.path)
        for sub in folders:
            visit(sub)

    visit(directory)
    return files


def _is_own_path(path: str, root: str | Path) -> bool:
    """Whether ``path`` reaches its file through no link below ``root``."""
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    return os.path.realpath(path) == os.path.join(os.path.realpath(root), relative)


class TorchvisionImages(Dataset):
    """A torchvision dataset returning PIL images, turned into ``uint8`` RGB tensors.

    Example:
        >>> from torchvision.datasets import CIFAR10
        >>> raw = CIFAR10("~/data/cifar", train=False)  # doctest: +SKIP
        >>> ds = TorchvisionImages(raw, raw.classes)  # doctest: +SKIP
    """

    def __init__(
        self,
        dataset: Dataset,
        class_names: Sequence[str],
        transform: Callable[[torch.Tensor], Any] | None = None,
    ) -> None:
        self.dataset = dataset
        self.class_names = list(class_names)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, target = self.dataset[index]
        image = _to_rgb(image)
        if self.transform is not None:
            image = self.transform(image)
        return image, target


def _open_torchvision(
    name: str, root: str | Path | None, layout: str, factory: Callable[[str], Any]
) -> Any:
    if root is None:
        raise ValueError(f"{name}: pass root=<folder>; {layout}")
    path = Path(root).expanduser()
    try:
        return factory(str(path))
    except (RuntimeError, OSError) as err:
        raise FileNotFoundError(
            f"{name} not found under {path} ({err}); {layout}. discover never downloads it: "
            "place the files there, or use build_dataset('imagefolder', ...) for a class-folder "
            "copy."
        ) from err


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

DatasetBuilder = Callable[..., Dataset]
DATASETS: Registry[DatasetBuilder] = Registry(
    "dataset", normalize=lambda name: name.lower().replace("_", "-")
)
"""Dataset builders by name: ``builder(split, root, transform, **kwargs) -> Dataset``."""


def register_dataset(name: str) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Register a dataset builder under ``name``; registering a name twice raises.

    Example:
        >>> @register_dataset("my-shapes")
        ... def my_shapes(split, root=None, transform=None, **kw):
        ...     return ShapesWorld(split=split, transform=transform, image_size=32, **kw)
    """

    return DATASETS.register(name)


def list_datasets() -> list[str]:
    """Registered dataset names, sorted."""
    return DATASETS.list()


def build_dataset(
    name: str,
    split: str = "train",
    root: str | Path | None = None,
    transform: Callable[[Any], Any] | None = None,
    **kwargs: Any,
) -> Dataset:
    """Build a registered dataset by name; it has ``class_names``.

    Splits are ``"train"``, ``"val"`` and ``"test"``. Fashion-MNIST and CIFAR serve their test
    set for both ``"val"`` and ``"test"``; ImageNet and Places365 serve their validation set
    for both (their test labels are not public). ``imagefolder`` reads ``root/<split>`` when it
    exists, else ``root`` itself. ``shapes`` ignores ``root``.

    Example:
        >>> ds = build_dataset("shapes", "val", n=100, return_concepts=True)
        >>> len(ds), len(ds.class_names)
        (100, 10)
    """
    builder = DATASETS.get(name)
    if split not in SPLITS:
        raise ValueError(f"build_dataset: split must be one of {SPLITS}, got {split!r}")
    try:
        return builder(split=split, root=root, transform=transform, **kwargs)
    except TypeError as error:  # an option the data set does not take, or of the wrong type
        raise ValueError(f"dataset {name!r} rejected its options {kwargs}: {error}") from None


@register_dataset("shapes")
def _build_shapes(split: str, root: Any = None, transform: Any = None, **kw: Any) -> Dataset:
    return ShapesWorld(split=split, transform=transform, **kw)


@register_dataset("fashion-mnist")
def _build_fashion_mnist(split: str, root: Any = None, transform: Any = None, **kw: Any) -> Dataset:
    return FashionMNIST(root, split=split, transform=transform, **kw)


@register_dataset("imagefolder")
def _build_imagefolder(split: str, root: Any = None, transform: Any = None, **kw: Any) -> Dataset:
    if root is None:
        raise ValueError(
            "imagefolder: pass root=<folder> holding <split>/<class>/<image> or <class>/<image>"
        )
    path = Path(root).expanduser()
    if (path / split).is_dir():
        path = path / split
    else:
        present = [s for s in SPLITS if (path / s).is_dir()]
        if present:
            raise FileNotFoundError(
                f"imagefolder: no {split!r} split under {path} (found {', '.join(present)})"
            )
    return RobustImageFolder(path, transform=transform, **kw)


def _cifar(name: str, cls_name: str, split: str, root: Any, transform: Any) -> Dataset:
    from torchvision import datasets

    layout = (
        f"expected torchvision's {cls_name} layout: root/"
        f"{'cifar-10-batches-py' if cls_name == 'CIFAR10' else 'cifar-100-python'}/"
    )
    raw = _open_torchvision(
        name,
        root,
        layout,
        lambda r: getattr(datasets, cls_name)(r, train=split == "train", download=False),
    )
    return TorchvisionImages(raw, [c.replace("_", " ") for c in raw.classes], transform)


@register_dataset("cifar10")
def _build_cifar10(split: str, root: Any = None, transform: Any = None) -> Dataset:
    return _cifar("cifar10", "CIFAR10", split, root, transform)


@register_dataset("cifar100")
def _build_cifar100(split: str, root: Any = None, transform: Any = None) -> Dataset:
    return _cifar("cifar100", "CIFAR100", split, root, transform)


@register_dataset("places365")
def _build_places365(
    split: str, root: Any = None, transform: Any = None, small: bool = True
) -> Dataset:
    from torchvision.datasets import Places365

    layout = (
        "expected torchvision's Places365 layout: root/categories_places365.txt, "
        "root/places365_{train_standard,val}.txt and root/{data,val}_{256,large}/"
    )
    tv_split = "train-standard" if split == "train" else "val"
    raw = _open_torchvision(
        "places365",
        root,
        layout,
        lambda r: Places365(r, split=tv_split, small=small, download=False),
    )
    names = [c[3:].replace("/", " ").replace("_", " ") for c in raw.classes]  # "/a/airfield"
    return TorchvisionImages(raw, names, transform)


@register_dataset("imagenet")
def _build_imagenet(split: str, root: Any = None, transform: Any = None) -> Dataset:
    from torchvision.datasets import ImageNet

    layout = (
        "expected torchvision's ImageNet layout: root/ILSVRC2012_devkit_t12.tar.gz (or "
        "meta.bin) and root/{train,val}/<wnid>/"
    )
    tv_split = "train" if split == "train" else "val"
    raw = _open_torchvision("imagenet", root, layout, lambda r: ImageNet(r, split=tv_split))
    return TorchvisionImages(raw, [names[0] for names in raw.classes], transform)


# --------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------

_INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic")


@dataclass
class DataConfig:
    """Input preprocessing of a model, saved with it; also the train-time augmentation.

    The first five fields mirror ``model.pretrained_cfg`` (timm's keys). ``mean`` and ``std``
    default to 0.5 and 0.25 per channel (discover's small networks); a single value is
    repeated for every channel.

    Args:
        input_size: ``(C, H, W)``; ``C`` is 1 or 3.
        mean: per-channel mean, on the [0, 1] scale.
        std: per-channel standard deviation.
        interpolation: ``"bilinear"``, ``"bicubic"``, ``"nearest"`` or ``"nearest-exact"``.
        crop_pct: evaluation resizes to ``size / crop_pct`` and centre-crops ``size``.
        hflip: training horizontal-flip probability (off by default: flips change the Shapes
            world's position concepts).
        scale: training random-resized-crop scale range; ``None`` resizes as in evaluation.
        ratio: random-resized-crop aspect-ratio range.
        padding: training random crop after zero padding by this many pixels (CIFAR style).

    Example:
        >>> cfg = DataConfig(input_size=(1, 28, 28), padding=2)
        >>> DataConfig.from_dict(cfg.to_dict()) == cfg
        True
    """

    input_size: tuple[int, int, int] = (3, 64, 64)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    hflip: float = 0.0
    scale: tuple[float, float] | None = None
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    padding: int = 0

    def __post_init__(self) -> None:
        self.input_size = tuple(int(x) for x in self.input_size)
        if len(self.input_size) != 3 or self.input_size[0] not in (1, 3):
            raise ValueError(
                f"DataConfig: input_size must be (C, H, W) with C in (1, 3), got {self.input_size}"
            )
        channels = self.input_size[0]
        for attr, default in (("mean", 0.5), ("std", 0.25)):
            value = tuple(float(x) for x in (getattr(self, attr) or (default,)))
            if len(value) == 1:
                value *= channels
            if len(value) != channels:
                raise ValueError(
                    f"DataConfig: {attr} has {len(value)} values for {channels} channel(s)"
                )
            setattr(self, attr, value)
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(
                f"DataConfig: interpolation must be one of {_INTERPOLATIONS}, "
                f"got {self.interpolation!r}"
            )
        if not 0 < self.crop_pct <= 1 or not 0 <= self.hflip <= 1 or self.padding < 0:
            raise ValueError("DataConfig: need 0 < crop_pct <= 1, 0 <= hflip <= 1, padding >= 0")
        if self.scale is not None:
            self.scale = (float(self.scale[0]), float(self.scale[1]))
        self.ratio = (float(self.ratio[0]), float(self.ratio[1]))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-friendly dict (tuples become lists)."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in fields(self)
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"DataConfig.from_dict: unknown keys {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def from_model(cls, model: torch.nn.Module, **overrides: Any) -> DataConfig:
        """Read ``model.pretrained_cfg`` (input_size, mean, std, interpolation, crop_pct).

        Example:
            >>> from discover import create_model
            >>> model = create_model("small_resnet", U=4, num_classes=10, in_chans=1, img_size=28)
            >>> DataConfig.from_model(model, hflip=0.5).input_size
            (1, 28, 28)
        """
        cfg = getattr(model, "pretrained_cfg", None)
        if not cfg:
            raise ValueError(
                f"DataConfig.from_model: {type(model).__name__} has no "
                "pretrained_cfg; build a DataConfig by hand"
            )
        keys = ("input_size", "mean", "std", "interpolation", "crop_pct")
        return cls(**{**{k: cfg[k] for k in keys if cfg.get(k) is not None}, **overrides})


def eval_transform(model: torch.nn.Module) -> v2.Compose:
    """The evaluation transform of ``model``: from ``model.data_config`` (set by training runs
    and kept in their checkpoints), else from its ``pretrained_cfg``.

    Example:
        >>> tf = eval_transform(create_model("small_resnet", img_size=32))  # doctest: +SKIP
    """
    config = getattr(model, "data_config", None) or DataConfig.from_model(model)
    return build_transforms(config, train=False)


def build_transforms(config: DataConfig, train: bool = False) -> v2.Compose:
    """A v2 pipeline: ``uint8`` tensor or PIL image -> normalised float ``config.input_size``.

    Greyscale inputs are replicated to 3 channels, RGB is converted to luma for 1 channel.
    Evaluation resizes to ``size / crop_pct`` and centre-crops; training applies the
    configured random-resized-crop (or the evaluation resize), padded random crop and flip.

    Example:
        >>> tf = build_transforms(DataConfig(input_size=(3, 32, 32)), train=True)
        >>> tf(torch.zeros(1, 28, 28, dtype=torch.uint8)).shape
        torch.Size([3, 32, 32])
    """
    channels, height, width = config.input_size
    interpolation = InterpolationMode(config.interpolation)
    ops: list[Callable[[Any], Any]] = [v2.ToImage(), v2.RGB() if channels == 3 else v2.Grayscale(1)]
    if train and config.scale is not None:
        ops.append(
            v2.RandomResizedCrop(
                (height, width),
                scale=config.scale,
                ratio=config.ratio,
                interpolation=interpolation,
                antialias=True,
            )
        )
    else:
        resize = (
            math.floor(height / config.crop_pct)
            if height == width
            else (math.floor(height / config.crop_pct), math.floor(width / config.crop_pct))
        )
        ops += [
            v2.Resize(resize, interpolation=interpolation, antialias=True),
            v2.CenterCrop((height, width)),
        ]
    if train and config.padding:
        ops.append(v2.RandomCrop((height, width), padding=config.padding))
    if train and config.hflip:
        ops.append(v2.RandomHorizontalFlip(config.hflip))
    ops += [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(config.mean, config.std),
        v2.ToPureTensor(),
    ]
    return v2.Compose(ops)
