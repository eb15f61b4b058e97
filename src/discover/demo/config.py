"""The demo's settings (:class:`DemoConfig`) and the data sets it runs on (:class:`DemoData`)."""

from __future__ import annotations

import copy
import dataclasses
import functools
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from discover._utils import Registry, dataclass_from_dict
from discover.errors import InputError

__all__ = ["DEMO_DATA", "DemoConfig", "DemoData", "get_demo_data", "register_demo_data"]


@dataclass
class DemoConfig:
    """Every setting of a demo run; saved as ``OUT/demo.json``.

    Use :meth:`preset` for the tested sizes (``fast=True`` is the CI size).

    Example:
        >>> config = DemoConfig.preset("shapes", fast=True, out="runs/demo-fast")
        >>> config.U, config.embedder
        (4, 'annotations')
    """

    out: str = "runs/demo"
    data: str = "shapes"
    embedder: str = "annotations"
    fast: bool = False
    model: str = "small_resnet"
    model_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"widths": [16, 32, 64], "depths": [1, 1, 1]}
    )
    U: int = 4
    recipe: str = "cvn_small"  # anneals the competition: --policy argmax loses nothing
    epochs: int = 4
    lr: float = 1.5e-3
    batch_size: int = 64
    warmup_epochs: int = 0
    image_size: int = 32  # generated data sets only
    train_images: int = 16_000
    probe_images: int = 2_000
    test_images: int = 1_000
    explain_images: int = 6
    policy: str = "sample"  # LWTA eval policy for evaluation, dissection and explanations
    eval_samples: int = 6  # stochastic passes averaged in the evaluation (policy "sample")
    similarity: str | None = None  # None: the embedder kind's default (LABEL_DEFAULTS)
    top: int = 8  # winners listed per layer in the explanations
    precision_images: int = 200  # held-out images whose explanations are checked (Shapes)
    seed: int = 0
    threads: int = 2

    @classmethod
    def preset(cls, data: str = "shapes", *, fast: bool = False, **overrides: Any) -> DemoConfig:
        """The demo's settings for ``data`` (and the CI size with ``fast``); ``None``
        overrides are ignored."""
        spec = get_demo_data(data)
        values: dict[str, Any] = {"data": data, "fast": fast, **spec.defaults}
        if fast:
            values.update(spec.fast)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(copy.deepcopy(values))  # presets are shared class data

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DemoConfig:
        """From :meth:`to_dict`'s keys; unknown keys raise, naming the closest options."""
        return dataclass_from_dict(cls, data, "demo option")


# -- data sets --------------------------------------------------------------------------------
# ``--fast``: the CI size, the same for every built-in data set (about a minute, rough labels).
_FAST: dict[str, Any] = {
    "model_kwargs": {"widths": [8, 16, 32], "depths": [1, 1, 1]},
    "epochs": 1,
    "train_images": 1_500,
    "probe_images": 300,
    "test_images": 200,
    "explain_images": 3,
    "eval_samples": 2,
    "precision_images": 40,
}


class DemoData(ABC):
    """How the demo uses one data set: training data, probe set, held-out images, concepts."""

    name: str
    dataset: str  # a name in the data-set registry (discover.data.list_datasets())
    embedders: tuple[str, ...]  # embedders that work on it (the first is the default)
    concepts: str  # concept set for the hidden layers
    defaults: dict[str, Any] = {}
    fast: dict[str, Any] = _FAST  # the --fast overrides

    def check(self, config: DemoConfig) -> None:
        """Raise a clear error when the data (or the embedder) cannot be used."""
        if config.embedder not in self.embedders:
            raise InputError(
                f"embedder: {config.embedder!r} does not work with the {self.name} demo data; "
                f"choose one of {', '.join(self.embedders)}"
            )

    @abstractmethod
    def train_options(self, config: DemoConfig) -> dict[str, Any]:
        """``TrainConfig`` fields for this data set (``dataset_kwargs``, ...)."""

    @abstractmethod
    def probe(self, config: DemoConfig) -> Dataset:
        """Raw probe images (``uint8`` tensors) with labels, never seen in training."""

    @abstractmethod
    def held_out(self, config: DemoConfig) -> Dataset:
        """Raw held-out images (``uint8`` tensors) to explain, never seen in training."""

    def truth(self, held_out: Dataset, indices: list[int]) -> tuple[torch.Tensor, list[str]] | None:
        """The concepts of held-out images ``(len(indices), C)`` and their names, where the
        data set knows them (``None``: it does not, so explanations cannot be checked)."""
        return None


DEMO_DATA: Registry[DemoData] = Registry("demo data")


def register_demo_data(spec: DemoData) -> DemoData:
    """Make ``discover demo --data NAME`` available (``spec.name``)."""
    return DEMO_DATA.register(spec.name, spec)


def get_demo_data(name: str) -> DemoData:
    """The registered demo data ``name`` (unknown names list the closest ones)."""
    return DEMO_DATA.get(name)


class _Shapes(DemoData):
    name = dataset = "shapes"
    embedders = ("annotations", "shapes-clip", "conse")
    concepts = "shapes"

    def train_options(self, config: DemoConfig) -> dict[str, Any]:
        return {
            "dataset_kwargs": {"n": config.train_images, "image_size": config.image_size},
            "model_kwargs": {**config.model_kwargs, "img_size": config.image_size},
        }

    def probe(self, config: DemoConfig) -> Dataset:
        from discover.data.shapes import ShapesWorld

        return ShapesWorld(n=config.probe_images, image_size=config.image_size, split="val")

    def held_out(self, config: DemoConfig) -> Dataset:
        from discover.data.shapes import ShapesWorld

        n = max(200, config.explain_images, config.precision_images)
        return ShapesWorld(n=n, image_size=config.image_size, split="test")

    def truth(self, held_out: Dataset, indices: list[int]) -> tuple[torch.Tensor, list[str]]:
        return held_out.concepts_table(indices), list(held_out.concept_names)


class _FashionMNIST(DemoData):
    name = dataset = "fashion-mnist"
    embedders = ("conse",)
    concepts = "broden"
    defaults = {"embedder": "conse", "train_images": 12_000}

    def check(self, config: DemoConfig) -> None:
        if config.embedder == "annotations":
            raise InputError(
                "embedder: Fashion-MNIST has no ground-truth concept annotations; "
                "use embedder='conse'"
            )
        super().check(config)
        from discover.data.fashion_mnist import FashionMNIST

        FashionMNIST(split="test", download=False)  # a clear FileNotFoundError when missing

    def train_options(self, config: DemoConfig) -> dict[str, Any]:
        return {
            "dataset_kwargs": {"download": False},
            "train_subset": config.train_images,
            "model_kwargs": {**config.model_kwargs, "img_size": 28, "in_chans": 1},
        }

    @functools.lru_cache(maxsize=1)  # noqa: B019 (one registered instance; read the files once)
    def _test(self) -> Dataset:
        from discover.data.fashion_mnist import FashionMNIST

        return FashionMNIST(split="test", download=False)

    def probe(self, config: DemoConfig) -> Dataset:
        return Subset(self._test(), range(config.probe_images))  # fingerprinted

    def held_out(self, config: DemoConfig) -> Dataset:
        test = self._test()
        start = max(config.probe_images, len(test) - 500)  # disjoint from the probe images
        return Subset(test, range(start, len(test)))


register_demo_data(_Shapes())
register_demo_data(_FashionMNIST())
