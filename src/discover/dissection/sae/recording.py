"""Recording through a tap on an SAE's layer: the SAE's latents per image
(:func:`record_latents`, what a dissection labels) and the activation vectors it trains on
(:func:`record_sites`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from discover.dissection.layers import pool, resolve_layers, suggested_pooling
from discover.dissection.recording import Recording, model_fingerprint, record
from discover.dissection.sae.model import SAE, as_sae, position_vectors
from discover.errors import InputError
from discover.nn.hooks import capture

__all__ = ["record_latents", "record_sites"]


class _Tap(nn.Module):
    """Computes something from a layer's output; :func:`record` records its output.

    ``digest`` (a buffer) makes the tap's settings part of the weights hash, so the
    activation cache never mixes up two taps with the same weights but other settings.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], settings: Any, sae=None):
        super().__init__()
        self.fn = fn
        self.sae = sae
        digest = hashlib.sha256(json.dumps(settings, default=str).encode()).digest()
        self.register_buffer("digest", torch.tensor(list(digest), dtype=torch.uint8))

    def forward(self, output: torch.Tensor) -> torch.Tensor:
        return self.fn(output)


class _Tapped(nn.Module):
    """``model`` whose layer ``layer`` also feeds the tap (a layer :func:`record` can read)."""

    def __init__(self, model: nn.Module, layer: str, tap: _Tap) -> None:
        super().__init__()
        self.model = model
        self.tap = tap
        self._target = {layer: resolve_layers(model, [layer])[layer]}  # a dict: not a submodule
        self.training = model.training  # record restores this mode: the model keeps its own

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def hook(_name: str, _module: nn.Module, _inputs: Any, output: Any) -> None:
            if isinstance(output, torch.Tensor):
                self.tap(output)  # returns None: the model's own output is unchanged

        with capture(self.model, self._target, hook):
            return self.model(x)


def record_latents(
    model: nn.Module,
    layers: Sequence[str],
    probe: Dataset,
    pooling: str | dict[str, str] = "auto",
    *,
    sae: SAE | str | Path,
    **record_options: Any,
) -> Recording:
    """:func:`~discover.dissection.recording.record` of an SAE's latents: per image, the
    latents of ``sae`` on its layer (:meth:`SAE.image_latents`), ``(N, latents)``.

    ``layers`` must be the SAE's layer alone and ``pooling`` ``"auto"`` or the SAE's own
    pooling (it is part of what the SAE describes). ``probe`` is already transformed for the
    model; ``record_options`` are those of ``record`` (``batch_size``, ``device``, ``policy``,
    ``seed``, ``cache_dir``, ``progress``). The cache key covers the SAE's weights and
    settings. The result's ``meta`` has the model's own weights hash and ``sae`` provenance.

    Example:
        >>> rec = record_latents(model, ["layer3.1.act2"], probe, sae="sae/l3")  # doctest: +SKIP
        >>> rec.activations["layer3.1.act2"].shape  # doctest: +SKIP
        torch.Size([1000, 1024])
    """
    sae = as_sae(sae)
    names = list(resolve_layers(model, layers))
    if names != [sae.layer]:
        raise InputError(
            f"sae: the SAE describes layer {sae.layer!r}; dissect that layer alone "
            f"(layers={[sae.layer]!r}), got {names!r}"
        )
    wanted = pooling.get(sae.layer, "auto") if isinstance(pooling, dict) else pooling
    if wanted not in ("auto", sae.config.pooling):
        raise InputError(
            f"sae: the SAE of {sae.layer!r} was trained for pooling {sae.config.pooling!r}, "
            f"got pooling {wanted!r}; use 'auto' or {sae.config.pooling!r}"
        )
    sae.eval()
    settings = ["latents", sae.layer, sae.config.pooling, sae.config.sites, sae.config.k]
    tap = _Tap(sae.image_latents, settings, sae=sae)
    with torch.no_grad():
        tapped = record(_Tapped(model, sae.layer, tap), ["tap"], probe, "none", **record_options)
    meta = {k: v for k, v in tapped.meta.items() if k not in ("layers", "pooling")}
    meta.update(
        layers=[sae.layer],
        pooling={sae.layer: sae.config.pooling},
        model_sha256=model_fingerprint(model),
        sae=sae.provenance(),
    )
    return Recording(
        activations={sae.layer: tapped.activations["tap"]},
        wins={},
        pooling={sae.layer: sae.config.pooling},
        meta=meta,
    )


def record_sites(
    model: nn.Module,
    layer: str,
    probe: Dataset,
    pooling: str,
    sites: str,
    positions_per_image: int | None,
    *,
    seed: int,
    **options: Any,
) -> tuple[torch.Tensor, str, int]:
    """The activation vectors an SAE of ``layer`` trains on: every image's pooled vector
    (``sites="pooled"``) or a seeded sample of ``positions_per_image`` of its positions
    (``"positions"``). Returns ``(rows (images, per_image, width), resolved pooling,
    positions per output)``."""
    shape: dict[str, tuple[int, ...]] = {}

    if sites == "pooled":
        recording = record(model, [layer], probe, pooling, seed=seed, **options)
        rows = recording.activations[layer]
        return rows.unsqueeze(1), recording.pooling[layer], 1

    generator = torch.Generator().manual_seed(seed)

    def sample(output: torch.Tensor) -> torch.Tensor:
        shape.setdefault("out", tuple(output.shape[1:]))
        vectors = position_vectors(output.detach())
        n, p, _ = vectors.shape
        if positions_per_image is None or positions_per_image >= p:
            return vectors.flatten(1)
        index = torch.rand(n, p, generator=generator).argsort(dim=1)[:, :positions_per_image]
        index = index.to(vectors.device).unsqueeze(-1).expand(-1, -1, vectors.shape[2])
        return vectors.gather(1, index).flatten(1)

    tap = _Tap(sample, ["positions", positions_per_image, seed])
    recording = record(_Tapped(model, layer, tap), ["tap"], probe, "none", seed=seed, **options)
    out_shape = shape["out"]
    if pooling == "auto":
        pooling = suggested_pooling(out_shape, model) or "none"
    pool(torch.zeros(1, *out_shape), pooling, layer)  # a pooling that does not fit: clear error
    every = position_vectors(torch.zeros(1, *out_shape))
    positions, width = int(every.shape[1]), int(every.shape[2])
    rows = recording.activations["tap"]
    return rows.reshape(len(rows), -1, width), pooling, positions
