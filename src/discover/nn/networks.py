"""discover's own small networks for 28-64 px images (CPU-trainable).

* ``small_resnet``: a CIFAR-style ResNet (3x3 stem, no max-pool, BasicBlocks). Every ReLU is
  a separate module, including the one after the residual addition, so LWTA replaces all of
  them, as in the paper's ResNets.
* ``small_vit``: a small ViT built from timm's ``VisionTransformer`` (CLS-token pooling);
  LWTA replaces only the MLP activation, as in the paper's DeiT.

Both are dense; :func:`discover.create_model` converts them. They expose timm's surface
(``forward_features``, ``forward_head``, ``pretrained_cfg``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from discover.errors import InputError
from discover.nn.models import register_model

__all__ = ["SmallResNet", "BasicBlock", "small_resnet", "small_vit"]


def _cfg(input_size: tuple[int, int, int], mean: Sequence[float], std: Sequence[float]) -> dict:
    return {
        "input_size": tuple(input_size),
        "mean": tuple(mean),
        "std": tuple(std),
        "interpolation": "bilinear",
        "crop_pct": 1.0,
    }


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> act1 -> conv3x3 -> BN -> (+ shortcut) -> act2."""

    def __init__(
        self, in_chs: int, out_chs: int, stride: int = 1, act_layer: type[nn.Module] = nn.ReLU
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act1 = act_layer()
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_chs != out_chs:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_chs, out_chs, 1, stride, bias=False), nn.BatchNorm2d(out_chs)
            )
        self.act2 = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + shortcut)


class SmallResNet(nn.Module):
    """CIFAR-style ResNet: ``conv1/bn1/act1`` stem, ``layer1..layerN``, global average pool, ``fc``.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels (1 for greyscale data).
        widths: channels of each stage; the first stage keeps the resolution, each later
            one halves it. Widths must be divisible by the ``U`` you want to use.
        depths: BasicBlocks per stage.
        img_size: the nominal input size (recorded in ``pretrained_cfg``; any size works).
        stem_stride: stride of the stem convolution; 2 halves every feature map (about 4x
            less compute) for inputs that are large for the network, e.g. 28-32 px on a CPU.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        widths: Sequence[int] = (32, 64, 128),
        depths: Sequence[int] = (2, 2, 2),
        img_size: int = 64,
        act_layer: type[nn.Module] = nn.ReLU,
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        if stem_stride not in (1, 2):
            raise InputError(f"SmallResNet: stem_stride must be 1 or 2, got {stem_stride!r}")
        if len(widths) != len(depths) or not widths:
            raise InputError(
                f"SmallResNet: widths {tuple(widths)} and depths {tuple(depths)} "
                "must be non-empty and of equal length"
            )
        self.num_classes = num_classes
        self.num_features = widths[-1]
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, stem_stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act1 = act_layer()
        in_chs = widths[0]
        for i, (width, depth) in enumerate(zip(widths, depths, strict=True), start=1):
            blocks = [
                BasicBlock(
                    in_chs if j == 0 else width,
                    width,
                    stride=(1 if i == 1 or j > 0 else 2),
                    act_layer=act_layer,
                )
                for j in range(depth)
            ]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            in_chs = width
        self.num_stages = len(widths)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        self.pretrained_cfg = _cfg(
            (in_chans, img_size, img_size), (0.5,) * in_chans, (0.25,) * in_chans
        )
        for m in self.modules():  # torchvision's init (docs/method.md §3.1)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x).flatten(1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model("small_resnet")
def small_resnet(num_classes: int = 10, **kwargs: Any) -> SmallResNet:
    """CIFAR-style ResNet, widths (32, 64, 128), 2 BasicBlocks per stage, 64 px by default.

    Example:
        >>> from discover import create_model
        >>> model = create_model("small_resnet", U=4, num_classes=8, in_chans=3)
    """
    return SmallResNet(num_classes=num_classes, **kwargs)


@register_model("small_vit")
def small_vit(num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """Small ViT (timm ``VisionTransformer``): 64 px, patch 8, dim 96, depth 6, 3 heads.

    The MLP hidden width is ``4 * 96 = 384``, divisible by U in {2, 4, 8, 12, 16, 24, 32, 48}.
    Pass ``img_size=28, patch_size=4, in_chans=1`` for Fashion-MNIST.

    Example:
        >>> from discover import create_model
        >>> model = create_model("small_vit", U=16, num_classes=10)
    """
    from timm.models.vision_transformer import VisionTransformer

    args: dict[str, Any] = dict(
        img_size=64,
        patch_size=8,
        in_chans=3,
        embed_dim=96,
        depth=6,
        num_heads=3,
        mlp_ratio=4.0,
        class_token=True,
        global_pool="token",
        act_layer=nn.GELU,
    )
    args.update(kwargs)
    model = VisionTransformer(num_classes=num_classes, **args)
    img = args["img_size"]
    chans = args["in_chans"]
    model.pretrained_cfg = _cfg((chans, img, img), (0.5,) * chans, (0.25,) * chans)
    return model
