"""Fashion-MNIST read from the idx files of the Debian package ``dataset-fashion-mnist``.

:func:`read_idx` reads the idx (MNIST) format, :data:`FASHION_MNIST_CLASSES` and
:data:`FASHION_MNIST_DIR` name the classes and where the package installs the files, and
:class:`FashionMNIST` serves them as ``uint8`` tensors (torchvision's downloader is a fallback).
"""

from __future__ import annotations

import gzip
import hashlib
import math
import struct
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from discover.data.shapes import SPLITS
from discover.errors import InputError

__all__ = ["FASHION_MNIST_CLASSES", "FASHION_MNIST_DIR", "read_idx", "FashionMNIST"]

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
        raise InputError(f"{path}: not an idx file (magic bytes {raw[:4].hex() or 'missing'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise InputError(f"{path}: idx header truncated")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise InputError(f"{path}: {len(raw)} bytes, expected {expected} for shape {shape}")
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
            raise InputError(f"FashionMNIST: split must be one of {SPLITS}, got {split!r}")
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
            raise InputError(
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
