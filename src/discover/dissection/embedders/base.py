"""The embedder interface, its image preprocessing and the hashing behind its cache keys.

:class:`Embedder` is what every image-text embedder implements (L2-normalised vectors from
images and strings, and :meth:`Embedder.concept_matrix`, which gives ``P``);
:class:`ImageTransform` is an embedder's own preprocessing of raw images; :func:`cache_dir`,
:func:`module_sha256` and :func:`json_sha256` give the cache root and the digests that an
embedder's :attr:`~Embedder.id` is built from (docs/method.md §11, pitfall 5). The concrete
embedders live in :mod:`~discover.dissection.embedders.clip`,
:mod:`~discover.dissection.embedders.conse` and :mod:`~discover.dissection.embedders.annotations`.
"""

from __future__ import annotations

import functools
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from discover._utils import cache_root
from discover.dissection.concepts import ConceptSet
from discover.errors import InputError
from discover.nn.checkpoints import state_dict_sha256

__all__ = [
    "Images",
    "Concepts",
    "ImageTransform",
    "Embedder",
    "cache_dir",
    "module_sha256",
    "json_sha256",
    "concept_list",
]

Images = Tensor | Dataset | Iterable[Any]
"""A probe: an ``(N, C, H, W)`` tensor, a dataset of images (or ``(image, ...)`` tuples), or
an iterable of batches (a ``DataLoader``)."""
Concepts = Sequence[str] | ConceptSet


def cache_dir() -> Path:
    """discover's cache root: ``$DISCOVER_CACHE``, default ``~/.cache/discover``."""
    return cache_root()


def module_sha256(module: nn.Module) -> str:
    """SHA-256 of a module's structure (its ``repr``) and every ``state_dict`` tensor.

    Two modules get the same digest exactly when they print the same (layers, activations such
    as QuickGELU vs GELU) and hold bit-identical weights and buffers, however they were loaded.
    It is :func:`~discover.nn.state_dict_sha256` after the ``repr``, with ``name|dtype|shape|``
    headers; ``model_fingerprint`` hashes the weights alone with ``name:dtype:shape`` headers.
    Both formats predate the shared hasher and are saved (embedder ids are part of cache keys
    and results; model fingerprints are checked when a dissection is loaded), so each keeps
    its bytes.

    Example:
        >>> module_sha256(torch.nn.Linear(2, 2)) != module_sha256(torch.nn.Linear(2, 2))
        True
    """
    return state_dict_sha256(
        module.state_dict(), header="{name}|{dtype}|{shape}|", prefix=repr(module).encode()
    )


def json_sha256(data: Any) -> str:
    """SHA-256 of ``data`` as canonical JSON (sorted keys): a digest of settings."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageTransform:
    """An embedder's preprocessing of raw images, on tensors (batched or not).

    Input: ``uint8`` images, or float images in ``[0, 1]``, with 1 channel (replicated to 3) or
    3 channels; a PIL image is converted first. Output: normalised ``float32`` ``(B, 3, *size)``
    (or ``(3, *size)``). Resizing runs on the input dtype with antialiasing (on ``uint8`` it
    follows PIL closely), so results match the PIL pipelines of open_clip, transformers and
    timm up to resampling round-off.

    Args:
        size: output ``(height, width)``.
        resize_mode: ``"shortest"``: resize the shorter side to ``resize`` and centre-crop
            ``size`` (CLIP, timm); ``"squash"``: resize straight to ``size`` (SigLIP);
            ``"longest"``: resize the longer side to ``max(size)`` and centre-pad with ``fill``.
        resize: shorter side before the crop in ``"shortest"`` mode; default ``max(size)``.
        interpolation: ``"bicubic"`` or ``"bilinear"``.
        mean: per-channel mean on the ``[0, 1]`` scale.
        std: per-channel standard deviation.
        fill: padding value on the ``[0, 1]`` scale for ``"longest"``.

    Example:
        >>> tf = ImageTransform(size=(224, 224), resize=256)  # timm-style: 256 -> crop 224
        >>> tf(torch.zeros(2, 1, 300, 400, dtype=torch.uint8)).shape
        torch.Size([2, 3, 224, 224])
    """

    size: tuple[int, int]
    resize_mode: Literal["shortest", "squash", "longest"] = "shortest"
    resize: int | None = None
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    fill: float = 0.0

    def __post_init__(self) -> None:
        size = (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)
        object.__setattr__(self, "size", tuple(int(s) for s in size))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(self.size) != 2 or min(self.size) < 1:
            raise InputError(f"ImageTransform: size must be (height, width), got {self.size}")
        if self.resize_mode not in ("shortest", "squash", "longest"):
            raise InputError(f"ImageTransform: unknown resize_mode {self.resize_mode!r}")
        if self.interpolation not in ("bicubic", "bilinear"):
            raise InputError(
                f"ImageTransform: interpolation must be bicubic or bilinear, got "
                f"{self.interpolation!r}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise InputError("ImageTransform: mean and std need 3 values, std > 0")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly description, for run metadata."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @functools.cached_property
    def sha256(self) -> str:
        """Digest of :meth:`to_dict`."""
        return json_sha256(self.to_dict())

    def __call__(self, images: Any) -> Tensor:
        from torchvision.transforms.v2 import functional as TF

        if not isinstance(images, Tensor):
            images = TF.pil_to_tensor(images.convert("RGB"))
        if images.ndim not in (3, 4) or images.shape[-3] not in (1, 3):
            raise InputError(
                f"expected raw images (C, H, W) or (B, C, H, W) with C in (1, 3), "
                f"got shape {tuple(images.shape)}"
            )
        if images.dtype != torch.uint8:
            images = images.float()
            low, high = images.aminmax()
            if low < -1e-3 or high > 1 + 1e-3:
                raise InputError(
                    f"expected raw images, uint8 or float in [0, 1]; got values in "
                    f"[{low:.3g}, {high:.3g}]. Pass unnormalised images: each embedder applies "
                    "its own normalisation."
                )
        if images.shape[-3] == 1:
            images = images.expand(*images.shape[:-3], 3, *images.shape[-2:])
        mode = TF.InterpolationMode(self.interpolation)
        height, width = images.shape[-2:]
        if self.resize_mode == "shortest":
            images = TF.resize(images, [self.resize or max(self.size)], interpolation=mode)
        elif self.resize_mode == "squash":
            images = TF.resize(images, list(self.size), interpolation=mode)
        else:
            scale = max(self.size) / max(height, width)
            images = TF.resize(
                images, [round(height * scale), round(width * scale)], interpolation=mode
            )
        if images.dtype == torch.uint8:
            images = images.float().div_(255)
        else:
            images = images.clamp(0, 1)  # bicubic overshoot, as PIL clips
        if self.resize_mode == "longest":
            pad_h = max(0, self.size[0] - images.shape[-2])
            pad_w = max(0, self.size[1] - images.shape[-1])
            images = F.pad(
                images,
                [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2],
                value=self.fill,
            )
        images = TF.center_crop(images, list(self.size))
        return TF.normalize(images.contiguous(), list(self.mean), list(self.std))


# --------------------------------------------------------------------------------------------
# Interface
# --------------------------------------------------------------------------------------------


class _TransformedImages(Dataset):
    """Images of ``dataset`` (first tuple element) through ``transform``."""

    def __init__(self, dataset: Any, transform: Callable[[Any], Tensor]) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tensor:
        item = self.dataset[index]
        return self.transform(item[0] if isinstance(item, (tuple, list)) else item)


def concept_list(concepts: Concepts) -> list[str]:
    """The concept strings of a list or :class:`ConceptSet`, checked: non-empty, all strings."""
    names = list(concepts.concepts if isinstance(concepts, ConceptSet) else concepts)
    if not names:
        raise InputError("concept_matrix: the concept list is empty")
    if isinstance(concepts, str) or not all(isinstance(c, str) for c in names):
        raise TypeError("concept_matrix: concepts must be a list of strings or a ConceptSet")
    return names


class Embedder(ABC):
    """Common interface of image-text embedders.

    Subclasses implement :meth:`encode_preprocessed` (model-ready pixels -> vectors),
    :meth:`encode_texts` and :attr:`id`, and set :attr:`image_transform`, :attr:`name` and
    :attr:`device`. All ``encode_*`` methods return L2-normalised ``float32`` CPU tensors.

    Attributes:
        name: human-readable label to print next to results (e.g. which CLIP).
        image_transform: this embedder's preprocessing of raw images.
        device: where the model runs.

    Example:
        >>> embedder = build_embedder("conse")  # doctest: +SKIP
        >>> embedder.encode_images(torch.rand(2, 3, 64, 64)).norm(dim=1)  # doctest: +SKIP
        tensor([1.0000, 1.0000])
    """

    name: str
    image_transform: ImageTransform | None
    device: torch.device
    spec: str | None = None
    """The spec string that :func:`~discover.dissection.embedders.build_embedder` built it
    from (``None``: built otherwise), recorded with results so that it can be rebuilt."""
    kind: str = "vlm"
    """``"vlm"``: graded image-text similarities from a vision-language model (or a stand-in
    such as ConSE); ``"annotations"``: a binary ground-truth table. Label defaults
    (:data:`discover.dissection.labels.LABEL_DEFAULTS`) depend on it."""

    @property
    @abstractmethod
    def id(self) -> str:
        """Stable identifier: kind, architecture, weights and transform digests (cache keys)."""

    @abstractmethod
    def encode_preprocessed(self, pixels: Tensor) -> Tensor:
        """Embed a batch already preprocessed by :attr:`image_transform`: ``(B, D)``."""

    @abstractmethod
    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        """Embed strings as given (no prompt template): ``(M, D)``, L2-normalised."""

    def encode_images(self, images: Tensor) -> Tensor:
        """Embed raw images ``(B, C, H, W)`` (``uint8``, or float in ``[0, 1]``): ``(B, D)``."""
        return self.encode_preprocessed(self.image_transform(images))

    def metadata(self) -> dict[str, Any]:
        """What to save with results: id, name, kind and image transform."""
        transform = self.image_transform.to_dict() if self.image_transform else None
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "spec": self.spec,
            "image_transform": transform,
        }

    def concept_matrix(
        self,
        probe: Images,
        concepts: Concepts,
        *,
        batch_size: int = 64,
        num_workers: int = 0,
        progress: bool = True,
    ) -> Tensor:
        """``P`` (N x M): cosine of every probe image with every concept (docs/method.md §6.1).

        Args:
            probe: raw images: an ``(N, C, H, W)`` tensor, a dataset whose items are images
                or ``(image, ...)`` tuples (the embedder's transform is applied per item, so
                sizes may differ), or an iterable of such batches (e.g. a ``DataLoader``
                without shuffling).
            concepts: the concept strings, encoded raw.
            batch_size: images (and texts) per forward pass.
            num_workers: ``DataLoader`` workers when ``probe`` is a dataset.
            progress: show a tqdm progress bar.

        Returns:
            ``float32`` CPU tensor ``(N, M)`` in probe order.

        Example:
            >>> embedder = build_embedder("conse")  # doctest: +SKIP
            >>> P = embedder.concept_matrix(torch.rand(8, 3, 32, 32), ["a", "b"])  # doctest: +SKIP
            >>> P.shape  # doctest: +SKIP
            torch.Size([8, 2])
        """
        text_vectors = self.text_vectors(concept_list(concepts), batch_size, progress)
        rows = [
            vectors @ text_vectors.T
            for vectors in self.image_vectors(probe, batch_size, num_workers, progress)
        ]
        if not rows:
            raise InputError("concept_matrix: the probe set is empty")
        return torch.cat(rows)

    def concept_rows(
        self,
        probe: Images,
        concepts: Concepts,
        folder: str | Path,
        *,
        batch_size: int = 64,
        num_workers: int = 0,
        progress: bool = True,
    ) -> Any:
        """``P`` as a row source (:mod:`discover.dissection.streaming`): the image vectors
        are written to ``folder`` batch by batch and each row of ``P`` is computed when read,
        so ``P`` is never held whole (the same rows as :meth:`concept_matrix`).

        Example:
            >>> P = embedder.concept_rows(probe, ["a", "b"], "cache/images")  # doctest: +SKIP
            >>> P.shape  # doctest: +SKIP
            (1000000, 2)
        """
        from discover.dissection.rows import FileRows, ProductRows, RowWriter

        text_vectors = self.text_vectors(concept_list(concepts), batch_size, progress)
        with RowWriter(folder) as writer:
            for vectors in self.image_vectors(probe, batch_size, num_workers, progress):
                writer.append(vectors)
        if not writer.rows:
            raise InputError("concept_rows: the probe set is empty")
        return ProductRows(FileRows(folder), text_vectors)

    def text_vectors(
        self, texts: Sequence[str], batch_size: int = 64, progress: bool = False
    ) -> Tensor:
        """The concept strings' vectors, ``(M, D)``, in batches."""
        texts = list(texts)
        starts = range(0, len(texts), batch_size)
        return torch.cat(
            [
                self.encode_texts(texts[i : i + batch_size])
                for i in tqdm(
                    starts,
                    desc=f"concepts: {self.name}",
                    unit="batch",
                    disable=not progress or len(starts) < 2,
                )
            ]
        )

    def image_vectors(
        self, probe: Images, batch_size: int = 64, num_workers: int = 0, progress: bool = False
    ) -> Iterator[Tensor]:
        """The image vectors of the probe, batch by batch, in probe order."""
        preprocessed = False
        if isinstance(probe, Tensor):
            batches: Iterable[Any] = probe.split(batch_size)
            total: int | None = len(probe)
        elif isinstance(probe, DataLoader) or not hasattr(probe, "__getitem__"):
            batches, total = probe, None
        else:  # a dataset: preprocess per item, so image sizes may differ
            batches = DataLoader(
                _TransformedImages(probe, self.image_transform),
                batch_size=batch_size,
                num_workers=num_workers,
            )
            total, preprocessed = len(probe), True
        with tqdm(total=total, desc=f"P: {self.name}", unit="img", disable=not progress) as bar:
            for batch in batches:
                if isinstance(batch, (tuple, list)):
                    batch = batch[0]
                vectors = (
                    self.encode_preprocessed(batch) if preprocessed else self.encode_images(batch)
                )
                bar.update(len(vectors))
                yield vectors
