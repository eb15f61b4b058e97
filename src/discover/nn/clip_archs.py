"""open_clip architectures that discover ships: small CLIPs for its built-in worlds.

Each ``open_clip_configs/<name>.json`` is an open_clip model config (``embed_dim``,
``vision_cfg``, ``text_cfg``). :func:`register_open_clip_archs` adds them to open_clip's
registry (``open_clip.add_model_config``) and registers their image trunks with timm, after
which ``open_clip.create_model(name)`` and discover's ``open_clip:<name>:<weights>``
embedder spec know them like any built-in architecture.
:func:`discover.training.clip.train_shapes_clip` trains :data:`SHAPES_CLIP_ARCH`.

``ShapesCLIP-RN``: open_clip's ``CLIP`` with a timm image tower (:class:`CLIPTrunk`, the
small ResNet of the Shapes classifiers: a stride-2 stem and three stages of widths 32, 64,
128, i.e. a 4 x 4 map at 32 px) and timm's absolute-position attention pooling, so the
image embedding keeps where the object is. The text tower is a 2-layer, 96-wide
transformer on open_clip's BPE tokenizer, 24 tokens.

Why not open_clip's own image towers: on Shapes captions at 32 px, its ViT (4 px patches,
sine-cosine positions) learned position but stayed at chance on shape after 6 epochs, and
its ``ModifiedResNet`` (a /4 stem, a 1 x 1 final map) stayed near chance on shape and
position; a supervised shape classifier on the ``ModifiedResNet`` tower reached only 28 %
after two epochs, where this trunk, trained as the Shapes classifier, reaches 91 % after
three.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from discover._utils import import_extra
from discover.errors import InputError
from discover.nn.networks import SmallResNet

__all__ = [
    "SHAPES_CLIP_ARCH",
    "OPEN_CLIP_CONFIGS",
    "CLIPTrunk",
    "register_open_clip_archs",
]

OPEN_CLIP_CONFIGS = Path(__file__).parent / "open_clip_configs"
"""The folder of discover's open_clip model configs."""
SHAPES_CLIP_ARCH = "ShapesCLIP-RN"
"""The architecture of the Shapes world's small CLIP (32 px images)."""
_TRUNKS = {"discover_shapes_clip_trunk": {"widths": (32, 64, 128), "depths": (1, 1, 1)}}


class CLIPTrunk(SmallResNet):
    """A :class:`~discover.nn.networks.SmallResNet` with the surface timm gives open_clip's
    ``TimmModel``: ``reset_classifier(0, global_pool="")`` makes it return its final feature
    map, and ``default_cfg["pool_size"]`` is that map's size at ``img_size``.

    Example:
        >>> trunk = CLIPTrunk(img_size=32)
        >>> trunk.reset_classifier(0, global_pool="")
        >>> tuple(trunk(torch.zeros(2, 3, 32, 32)).shape)
        (2, 128, 4, 4)
    """

    def __init__(
        self,
        img_size: int = 32,
        widths: tuple[int, ...] = (32, 64, 128),
        depths: tuple[int, ...] = (1, 1, 1),
        num_classes: int = 0,
        global_pool: str = "avg",
        **_: Any,
    ) -> None:
        super().__init__(
            num_classes=max(num_classes, 1),
            widths=widths,
            depths=depths,
            img_size=img_size,
            stem_stride=2,
        )
        side = img_size // 2 // 2 ** (len(widths) - 1)
        self.default_cfg = {**self.pretrained_cfg, "pool_size": (side, side)}
        self.reset_classifier(num_classes, global_pool)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            self.pool = global_pool
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.forward_features(x)
        if not self.pool:
            return features
        return self.fc(features.mean(dim=(2, 3)))


def _trunk_builder(name: str, spec: dict[str, Any]) -> Any:
    def build(pretrained: bool = False, **kwargs: Any) -> CLIPTrunk:
        if pretrained:
            raise InputError(f"{name} has no pretrained weights; train it (discover train-clip)")
        return CLIPTrunk(**{**spec, **kwargs})

    build.__name__ = build.__qualname__ = name
    build.__module__ = __name__
    return build


def register_open_clip_archs() -> list[str]:
    """Make discover's architectures known to open_clip and their trunks to timm (once);
    returns the architecture names.

    Example:
        >>> SHAPES_CLIP_ARCH in register_open_clip_archs()
        True
    """
    import timm

    open_clip = import_extra("open_clip", "discover's CLIP architectures")
    from timm.models import register_model

    for name, spec in _TRUNKS.items():
        if not timm.is_model(name):
            exported = list(__all__)
            register_model(_trunk_builder(name, spec))
            __all__[:] = exported  # timm appends the name to its module's __all__
    names = sorted(path.stem for path in OPEN_CLIP_CONFIGS.glob("*.json"))
    if not set(names) <= set(open_clip.list_models()):
        open_clip.add_model_config(OPEN_CLIP_CONFIGS)
    return names
