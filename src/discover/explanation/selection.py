"""Choosing what an explanation lists: the units that fired in each layer (by the winner
mask, the SAE's nonzero latents or a threshold), their labels in this image, and the
predicted logit split into ``activation x weight`` contributions."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from discover.dissection.layers import pool, pool_mask, suggested_pooling
from discover.dissection.result import Dissection
from discover.dissection.sae import SAE
from discover.errors import InputError
from discover.explanation.rows import Contributions, UnitContribution, Winner

__all__ = ["WEAK"]

WEAK = "weak here"
"""Why a listed unit is unlabelled in one image: it fires there below ``min_percentile``."""


@dataclass
class LayerActivity:
    """One layer's units over a batch of images."""

    pooled: torch.Tensor  # (B, K) pooled like the dissection pooled the layer
    active: torch.Tensor  # (B, K) which units fired
    fraction: torch.Tensor  # (B,) share of active (unit, position) entries before pooling
    percentile: torch.Tensor | None  # (B, K) share of the probe below, see percentiles


def layer_activity(
    name: str,
    output: torch.Tensor,
    model: nn.Module,
    *,
    dissection: Dissection | None,
    described: Mapping[int, Any] | None,
    sae: SAE | None,
    mask: torch.Tensor | None,
    threshold: float,
) -> LayerActivity:
    """Which units of layer ``name`` fired, from its ``output`` and LWTA winner ``mask``.

    The layer ``sae`` was trained on is read through its latents; an LWTA layer through its
    mask; any other layer through ``|activation| > threshold``. ``described`` are the
    dissection's descriptions of the layer's units, if it has any.
    """
    out = output.float()
    pooling = _pooling(dissection, name, out, model)
    latents = sae is not None and name == sae.layer
    pooled = sae.image_latents(out) if latents else pool(out, pooling, name)
    if described is not None and len(described) != pooled.shape[1]:
        raise InputError(
            f"explain: the dissection describes {len(described)} units of {name!r}, the "
            f"model's output has {pooled.shape[1]}: was it made for another model?"
        )
    if latents:
        active = pooled > 0
        raw_active = sae.latent_map(out) > 0 if sae.config.sites == "positions" else active
    elif mask is not None:
        active = pool_mask(mask, pooling, name) > 0
        raw_active = mask
    else:
        active = pooled.abs() > threshold
        raw_active = out.abs() > threshold
    probe_q = dissection.activations.get(name) if dissection is not None else None
    return LayerActivity(
        pooled=pooled,
        active=active,
        fraction=raw_active.reshape(len(pooled), -1).float().mean(dim=1),
        percentile=percentiles(probe_q, pooled),
    )


def _pooling(
    dissection: Dissection | None, name: str, output: torch.Tensor, model: nn.Module
) -> str:
    """The pooling the dissection used for ``name`` (or the suggested one)."""
    chosen = dissection.pooling(name) if dissection is not None else None
    return chosen or suggested_pooling(tuple(output.shape[1:]), model) or "none"


def percentiles(probe_q: torch.Tensor | None, pooled: torch.Tensor) -> torch.Tensor | None:
    """``(B, K)``: for every image and unit, the share of the probe on which the unit is less
    active (``None`` without the dissection's probe activations, or for another width)."""
    if probe_q is None or not len(probe_q) or probe_q.shape[1] != pooled.shape[1]:
        return None
    ordered = probe_q.float().T.contiguous().sort(dim=1).values  # (K, N)
    below = torch.searchsorted(ordered, pooled.float().T.contiguous(), side="left")  # (K, B)
    return (below.T.double() / probe_q.shape[0]).float()


def strongest(values: torch.Tensor, active: torch.Tensor, top: int | None) -> list[int]:
    """The active units by decreasing ``|value|`` (ties: lower unit first), the first ``top``."""
    if top == 0:
        return []
    units = active.nonzero().flatten()
    if top is not None and len(units) > top:
        magnitude = values[units].abs()
        kth = magnitude.topk(top).values[-1]
        units = units[magnitude >= kth]  # the top ones and any tie at the boundary
    order = sorted(units.tolist(), key=lambda u: (-abs(float(values[u])), u))
    return order if top is None else order[:top]


def _label(
    described: Any, percentile: float | None, min_percentile: float | None
) -> tuple[str | None, str | None, list[str]]:
    """``(label, why unlabelled, candidates)`` of a listed unit in this image: the
    dissection's verdict, and ``"weak here"`` when the unit fires on this image below
    ``min_percentile`` of the probe (its label describes what drives it strongly)."""
    if described is None:
        return None, None, []
    if described.abstained:
        return None, described.abstained, described.candidates
    if min_percentile is not None and percentile is not None and percentile < min_percentile:
        return None, WEAK, described.candidates
    return described.label, None, described.candidates


def winner(
    unit: int,
    activation: float,
    U: int | None,
    labels: Mapping[int, Any] | None,
    percentile: float | None,
    min_percentile: float | None,
) -> Winner:
    """A listed unit of a layer, labelled as the dissection labels it in this image."""
    described = labels.get(unit) if labels else None
    label, why, candidates = _label(described, percentile, min_percentile)
    return Winner(
        unit=unit,
        block=unit // U if U else None,
        activation=activation,
        label=label,
        score=float(described.score) if described is not None else None,
        probe_percentile=percentile,
        abstained=why,
        candidates=candidates,
    )


@dataclass
class ClassifierFeatures:
    """The classifier's input over a batch, the layer it comes from, and its weights."""

    layer: str  # the explained layer whose pooled output it is, or "<classifier> input"
    features: torch.Tensor  # (B, K)
    active: torch.Tensor  # (B, K)
    weight: torch.Tensor  # (classes, K)
    bias: torch.Tensor | None
    logits: torch.Tensor  # (B, classes)


def classifier_features(
    calls: list[tuple[torch.Tensor, torch.Tensor]],
    logits: torch.Tensor,
    classifier: tuple[str, nn.Linear] | None,
    activity: Mapping[str, LayerActivity],
    threshold: float,
) -> ClassifierFeatures | None:
    """The classifier's input features, the layer they come from, and which are active.

    ``calls`` are the classifier's ``(input, output)`` in the forward pass. ``None`` when
    the model has no final ``nn.Linear`` whose output is the model's output.
    """
    if classifier is None or len(calls) != 1:
        return None
    features, output = calls[0]
    if features.dim() != 2 or output.shape != logits.shape:
        return None
    if not torch.allclose(output.float(), logits, rtol=1e-4, atol=1e-5):
        return None
    features = features.float()
    source, active = f"{classifier[0]} input", features.abs() > threshold
    for name, layer in activity.items():  # e.g. the last LWTA layer, average-pooled
        if layer.pooled.shape == features.shape and torch.allclose(
            layer.pooled, features, rtol=1e-4, atol=1e-6
        ):
            source, active = name, layer.active
            break
    linear = classifier[1]
    return ClassifierFeatures(
        layer=source,
        features=features,
        active=active,
        weight=linear.weight.detach().float().cpu(),
        bias=None if linear.bias is None else linear.bias.detach().float().cpu(),
        logits=logits,
    )


def contributions(
    head: ClassifierFeatures,
    i: int,
    cls: int,
    class_label: str,
    labels: Mapping[int, Any],
    top: int | None,
    percentile: torch.Tensor | None,
    min_percentile: float | None,
) -> Contributions:
    """Image ``i``'s logit of class ``cls`` split over the classifier's active features."""
    x = head.features[i].cpu()
    w = head.weight[cls]
    bias = float(head.bias[cls]) if head.bias is not None else 0.0
    logit = float(head.logits[i, cls])
    listed = []
    for unit in strongest(x * w, head.active[i], top):
        pct = None if percentile is None else float(percentile[i, unit])
        label, why, candidates = _label(labels.get(unit), pct, min_percentile)
        listed.append(
            UnitContribution(
                unit=unit,
                label=label,
                activation=float(x[unit]),
                weight=float(w[unit]),
                contribution=float(x[unit] * w[unit]),
                abstained=why,
                candidates=candidates,
                probe_percentile=pct,
            )
        )
    explained = math.fsum(u.contribution for u in listed)
    denominator = logit - bias
    share = explained / denominator if abs(denominator) > 1e-12 else float(abs(explained) < 1e-12)
    return Contributions(
        layer=head.layer,
        class_index=cls,
        class_label=class_label,
        logit=logit,
        bias=bias,
        explained_share=share,
        units=listed,
    )
