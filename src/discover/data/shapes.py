"""The Shapes world: procedurally rendered images of one coloured object on a textured background.

Every factor (shape, colour, background colour, texture, size, position) is known, so each
image of a :class:`ShapesWorld` carries an exact multi-hot concept vector: a ground truth for
dissection (docs/method.md §6) that needs no image-text model. Nothing is stored or downloaded.
Here live the shape drawing helpers, the factor vocabularies (:data:`SHAPES`, :data:`COLOURS`,
:data:`TEXTURES`, :data:`SIZES`, :data:`POSITIONS`, :data:`FACTORS`), the :data:`SPLITS` every
data set serves, :class:`ShapesConfig`, :class:`ShapeFactors` and :class:`ShapesWorld`.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from discover.errors import InputError

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
                raise InputError(
                    f"ShapesConfig.{attr}={names!r}: need distinct names from {tuple(vocabulary)}"
                )
            setattr(self, attr, names)
        if self.n < 0 or self.seed < 0 or self.image_size < 16:
            raise InputError(
                f"ShapesConfig: need n >= 0, seed >= 0 and image_size >= 16, got "
                f"n={self.n}, seed={self.seed}, image_size={self.image_size}"
            )
        if not 0 <= self.size_jitter < 0.5 or not 0 <= self.position_jitter < 1 / 12:
            raise InputError(
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
            raise InputError(f"ShapesWorld: split must be one of {SPLITS}, got {split!r}")
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
            raise InputError(f"ShapesWorld: concept names collide: {self.concept_names}")
        self._group_sizes = np.array([len(g) for g in self.concept_groups.values()])
        self._offsets = np.cumsum(self._group_sizes) - self._group_sizes

        self._colours = np.array([COLOURS[c] for c in cfg.colours], dtype=np.float32)
        self._backgrounds = np.array([COLOURS[c] for c in cfg.background_colours], np.float32)
        self._patterns = np.stack([_pattern_colour(rgb) for rgb in self._backgrounds])
        distance = np.linalg.norm(self._colours[:, None] - self._backgrounds[None], axis=-1)
        self._allowed_backgrounds = [np.flatnonzero(row >= cfg.min_contrast) for row in distance]
        for colour, allowed in zip(cfg.colours, self._allowed_backgrounds, strict=True):
            if allowed.size == 0:
                raise InputError(
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

    def concept_masks(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The pixels of each concept present in image ``index``: ``(concepts, masks)``,
        ``concepts`` the ``(G,)`` indices into :attr:`concept_names` (one per factor group)
        and ``masks`` a ``(G, H, W)`` bool tensor. Shape, colour, size and position concepts
        cover the object (coverage >= 0.5); background-colour and texture concepts cover
        the rest (the textures of this world are background textures). Every concept absent
        from the image has no pixels. Only the layout is computed, not the image.

        Example:
            >>> ds = ShapesWorld(n=10, image_size=32)
            >>> concepts, masks = ds.concept_masks(0)
            >>> masks.shape, bool((masks[0] ^ masks[2]).all())  # shape vs background: a partition
            (torch.Size([6, 32, 32]), True)
        """
        layout = self._layout(self._check_index(index))
        size = self.config.image_size
        inside = np.zeros((size, size), dtype=bool)
        h, w = layout.alpha.shape
        inside[layout.y0 : layout.y0 + h, layout.x0 : layout.x0 + w] = layout.alpha >= 0.5
        obj = torch.from_numpy(inside)
        on_background = {FACTORS.index("background"), FACTORS.index("texture")}
        masks = torch.stack([~obj if g in on_background else obj for g in range(len(FACTORS))])
        return torch.from_numpy(layout.codes + self._offsets), masks

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
