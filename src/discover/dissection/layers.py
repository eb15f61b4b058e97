"""A model's layers by dotted name, and how their outputs are pooled to one vector per image.

* :func:`list_layers` shows every addressable layer (dotted name, output shape, suggested
  pooling) from one dry forward pass; :func:`resolve_layers` finds layers by name, glob
  pattern or ``"lwta"``.
* :func:`pool` reduces a layer output to ``(N, K)``: conv maps ``(N, C, H, W)`` use ``avg``
  or ``max`` over space, token sequences ``(N, T, D)`` use ``cls`` (token 0), ``mean`` or
  ``max`` over tokens, vectors ``(N, K)`` use ``none``; :func:`pool_mask` pools an LWTA
  winner mask the same way.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from discover.errors import InputError
from discover.nn.hooks import capture
from discover.nn.lwta import LWTA
from discover.nn.models import default_input_size

__all__ = [
    "POOLINGS",
    "LayerInfo",
    "suggested_pooling",
    "list_layers",
    "resolve_layers",
    "pool",
    "pool_mask",
]

POOLINGS: dict[int, tuple[str, ...]] = {4: ("avg", "max"), 3: ("cls", "mean", "max"), 2: ("none",)}
"""Poolings by output rank; the first of each is the suggestion."""


@dataclass
class LayerInfo:
    """One addressable layer: dotted name, module type, output shape for one image."""

    name: str
    type: str
    output_shape: tuple[int, ...] | None
    suggested_pooling: str | None
    U: int | None = None  # LWTA competitors per block

    def __str__(self) -> str:
        shape = "x".join(map(str, self.output_shape)) if self.output_shape else "-"
        lwta = f"  LWTA U={self.U}" if self.U else ""
        return f"{self.name:<36} {self.type:<22} {shape:<16} {self.suggested_pooling or '-'}{lwta}"


def suggested_pooling(shape: tuple[int, ...] | None, model: nn.Module) -> str | None:
    """The default pooling for a layer output of ``shape`` (batch dim excluded), or ``None``."""
    if shape is None or len(shape) + 1 not in POOLINGS:
        return None
    rank = len(shape) + 1
    if rank == 3 and getattr(model, "cls_token", None) is None:
        return "mean"  # token sequences without a class token
    return POOLINGS[rank][0]


def list_layers(
    model: nn.Module, input_size: Sequence[int] | None = None, pattern: str = "*"
) -> list[LayerInfo]:
    """Every named submodule with its output shape for one image of ``input_size`` (C, H, W).

    ``input_size`` defaults to the model's ``cvn_config``/``pretrained_cfg`` input size;
    ``pattern`` keeps the layers whose dotted name matches it (a glob, e.g.
    ``blocks.*.mlp.act``).

    Example:
        >>> [str(info).split()[0] for info in list_layers(create_model("small_vit"))][:3]  # doctest: +SKIP
        ['patch_embed', 'patch_embed.proj', 'patch_embed.norm']
    """
    input_size = tuple(input_size or default_input_size(model))
    shapes: dict[str, tuple[int, ...] | None] = {}

    def hook(name: str, _m: nn.Module, _i: Any, out: Any) -> None:
        if name not in shapes:
            shapes[name] = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else None

    modules = {name: module for name, module in model.named_modules() if name}
    with capture(model, modules, hook, mode=False), torch.no_grad():
        model(torch.zeros(1, *input_size))
    return [
        LayerInfo(
            name,
            type(module).__name__,
            shapes.get(name),
            suggested_pooling(shapes.get(name), model),
            module.U if isinstance(module, LWTA) else None,
        )
        for name, module in model.named_modules()
        if name and fnmatch.fnmatchcase(name, pattern)
    ]


def resolve_layers(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    """Modules by dotted name, glob pattern, or ``"lwta"`` for every LWTA layer.

    A name that is a module's dotted name is that module (also when it is ``"lwta"``); a name
    with ``*``, ``?`` or ``[`` is a pattern over all dotted names (``blocks.*.mlp.act``);
    ``"lwta"`` is every :class:`~discover.LWTA` layer, in model order. Duplicates are dropped.
    An unknown name, or a pattern or ``"lwta"`` that matches nothing, is an error listing
    the closest names.

    Example:
        >>> list(resolve_layers(create_model("small_resnet"), ["layer3.1"]))  # doctest: +SKIP
        ['layer3.1']
        >>> len(resolve_layers(create_model("deit_tiny_patch16_224", U=8), ["lwta"]))  # doctest: +SKIP
        12
    """
    modules = {n: m for n, m in model.named_modules() if n}
    if not names:
        raise InputError("no layers given; see `discover layers MODEL` for the names")
    resolved: dict[str, nn.Module] = {}
    for name in names:
        if name in modules:
            matches = [name]
        elif name == "lwta":
            matches = [n for n, m in modules.items() if isinstance(m, LWTA)]
            if not matches:
                raise InputError("'lwta' selects every LWTA layer, but this model has none")
        elif any(c in name for c in "*?["):
            matches = fnmatch.filter(modules, name)
            if not matches:
                raise InputError(
                    f"layer pattern {name!r} matches no layer (list them with `discover layers MODEL`)"
                )
        else:
            close = difflib.get_close_matches(name, list(modules), n=5, cutoff=0.5)
            raise InputError(
                f"unknown layer {name!r}. Closest names: {', '.join(close) or 'none'}"
                " (list them all with `discover layers MODEL`)"
            )
        resolved.update((n, modules[n]) for n in matches)
    return resolved


def _check_pooling(output: torch.Tensor, pooling: str, layer: str) -> None:
    allowed = POOLINGS.get(output.dim())
    if allowed is None or pooling not in allowed:
        expected = ", ".join(f"{r}-D: {'/'.join(p)}" for r, p in POOLINGS.items())
        raise InputError(
            f"pooling {pooling!r} does not fit layer {layer!r} with output shape "
            f"{tuple(output.shape)}; poolings by output rank: {expected}"
        )


def pool(output: torch.Tensor, pooling: str, layer: str = "layer") -> torch.Tensor:
    """Reduce one layer output to ``(N, K)`` with the named pooling.

    Example:
        >>> pool(torch.ones(2, 8, 4, 4), "avg").shape
        torch.Size([2, 8])
    """
    _check_pooling(output, pooling, layer)
    rank = output.dim()
    if rank == 4:
        return output.mean(dim=(2, 3)) if pooling == "avg" else output.amax(dim=(2, 3))
    if rank == 3:
        if pooling == "cls":
            return output[:, 0]
        return output.mean(dim=1) if pooling == "mean" else output.amax(dim=1)
    return output


def pool_mask(mask: torch.Tensor, pooling: str, layer: str = "layer") -> torch.Tensor:
    """Pool a boolean winner mask like :func:`pool` pools activations, as ``float32``.

    ``avg``/``mean`` give the fraction of positions a unit won, ``max`` whether it won
    anywhere, ``cls`` whether it won at the class token. The mask is never expanded to a
    float tensor of its full size.

    Example:
        >>> pool_mask(torch.ones(2, 8, 4, 4, dtype=torch.bool), "avg")[0, 0].item()
        1.0
    """
    _check_pooling(mask, pooling, layer)
    if mask.dim() == 2 or pooling == "none":
        return mask.float()
    if pooling == "cls":
        return mask[:, 0].float()
    dims = (2, 3) if mask.dim() == 4 else (1,)
    if pooling == "max":
        return mask.any(dim=dims).float()
    positions = math.prod(mask.shape[d] for d in dims)
    return mask.sum(dim=dims, dtype=torch.float32) / positions
