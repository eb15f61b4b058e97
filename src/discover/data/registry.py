"""The dataset registry: :func:`build_dataset` picks a data set by name from :data:`DATASETS`.

Builders for ``shapes``, ``fashion-mnist``, ``imagefolder``, ``cifar10``, ``cifar100``,
``places365`` and ``imagenet`` are registered here; :func:`register_dataset` adds more. Without
a transform every data set returns raw ``uint8`` CHW tensors, so one data set can feed models
with different input sizes, channel counts and normalisations.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset, Subset

from discover._utils import Registry
from discover.data.fashion_mnist import FashionMNIST
from discover.data.folders import RobustImageFolder, TorchvisionImages
from discover.data.shapes import SPLITS, ShapesWorld
from discover.errors import InputError

__all__ = ["DATASETS", "register_dataset", "list_datasets", "build_dataset", "build_probe"]

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
        raise InputError(f"build_dataset: split must be one of {SPLITS}, got {split!r}")
    try:
        return builder(split=split, root=root, transform=transform, **kwargs)
    except TypeError as error:  # an option the data set does not take, or of the wrong type
        raise InputError(f"dataset {name!r} rejected its options {kwargs}: {error}") from None


def build_probe(
    name: str = "shapes",
    split: str = "val",
    root: str | Path | None = None,
    *,
    limit: int | None = None,
    **kwargs: Any,
) -> Dataset:
    """A probe set for dissection: raw images (no transform) of one split of a registered
    data set, never the training images by default.

    Args:
        name, split, root, kwargs: as for :func:`build_dataset`.
        limit: keep only the first ``limit`` images (a ``Subset``, still fingerprinted by its
            content for the caches).

    Example:
        >>> probe = build_probe("shapes", limit=50, n=200)
        >>> len(probe)
        50
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InputError(f"build_probe: limit must be an integer >= 1, got {limit!r}")
    probe = build_dataset(name, split, root=root, **kwargs)
    return probe if limit is None else Subset(probe, range(min(limit, len(probe))))


@register_dataset("shapes")
def _build_shapes(split: str, root: Any = None, transform: Any = None, **kw: Any) -> Dataset:
    return ShapesWorld(split=split, transform=transform, **kw)


@register_dataset("fashion-mnist")
def _build_fashion_mnist(split: str, root: Any = None, transform: Any = None, **kw: Any) -> Dataset:
    return FashionMNIST(root, split=split, transform=transform, **kw)


@register_dataset("imagefolder")
def _build_imagefolder(split: str, root: Any = None, transform: Any = None, **kw: Any) -> Dataset:
    if root is None:
        raise InputError(
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


def _open_torchvision(
    name: str, root: str | Path | None, layout: str, factory: Callable[[str], Any]
) -> Any:
    if root is None:
        raise InputError(f"{name}: pass root=<folder>; {layout}")
    path = Path(root).expanduser()
    try:
        return factory(str(path))
    except (RuntimeError, OSError) as err:
        raise FileNotFoundError(
            f"{name} not found under {path} ({err}); {layout}. discover never downloads it: "
            "place the files there, or use build_dataset('imagefolder', ...) for a class-folder "
            "copy."
        ) from err


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
