"""Record pooled activations of any layer of any model over a probe set.

* :func:`list_layers` shows every addressable layer (dotted name, output shape, suggested
  pooling) from one dry forward pass.
* :func:`record` streams a probe set through the model and keeps, per layer, one pooled
  vector per image: an ``(N, K)`` matrix, never the raw feature maps. LWTA layers also keep
  the pooled winner mask (how often each unit won, per image).
* Results are cached under a key that hashes everything they depend on (weights, layers,
  pooling, eval policy and seed, the probe set's content fingerprint and transform), so a
  changed input never reuses a stale entry. Writes are atomic; an entry that cannot be read
  (cut short, damaged, another key or shape) is a miss that warns, naming the file, and is
  recomputed and replaced; a write that fails (disk full, read-only) warns and carries on.

Pooling is explicit and recorded: conv maps ``(N, C, H, W)`` use ``avg`` or ``max`` over
space, token sequences ``(N, T, D)`` use ``cls`` (token 0), ``mean`` or ``max`` over tokens,
vectors ``(N, K)`` use ``none``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import fnmatch
import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from discover._utils import atomic_path, cache_warning, require_int
from discover.errors import InputError, NonFiniteError
from discover.nn.lwta import LWTA, capture_winners, eval_policy
from discover.nn.models import default_input_size

__all__ = [
    "GALLERY_SIZE",
    "LayerMaps",
    "spatial_maps",
    "top_images",
    "model_view",
    "POOLINGS",
    "LayerInfo",
    "Recording",
    "RowsRecording",
    "pool_mask",
    "list_layers",
    "resolve_layers",
    "pool",
    "record",
    "record_rows",
    "model_fingerprint",
    "dataset_fingerprint",
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
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(_m, _i, out, name=name):
            if name not in shapes:
                shapes[name] = tuple(out.shape[1:]) if isinstance(out, torch.Tensor) else None

        handles.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_size))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
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


GALLERY_SIZE = 5
"""Top probe images per unit whose spatial maps a dissection keeps (and a report shows)."""


def spatial_maps(output: torch.Tensor, model: nn.Module) -> torch.Tensor | None:
    """A layer output as per-unit spatial maps ``(N, K, h, w)``, or ``None`` without spatial
    extent. Conv maps are taken as they are; a token sequence ``(N, T, K)`` keeps its patch
    tokens, reshaped to the model's patch grid, and leaves the class and register tokens
    (``model.num_prefix_tokens``) out.

    Example:
        >>> spatial_maps(torch.ones(2, 8, 4, 4), nn.Identity()).shape
        torch.Size([2, 8, 4, 4])
    """
    if output.dim() == 4:
        return output
    if output.dim() != 3:
        return None
    prefix = getattr(model, "num_prefix_tokens", None)
    if prefix is None:
        prefix = 1 if getattr(model, "cls_token", None) is not None else 0
    patches = output.shape[1] - int(prefix)
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is None or math.prod(grid) != patches:
        side = math.isqrt(max(patches, 0))
        if side * side != patches or patches == 0:
            return None
        grid = (side, side)
    tokens = output[:, int(prefix) :]
    return tokens.transpose(1, 2).reshape(output.shape[0], output.shape[2], *grid)


@dataclass
class LayerMaps:
    """The spatial activation maps of each unit's top probe images (by pooled activation,
    ties to the lower index, the order :func:`top_images` gives), kept while recording.

    ``indices`` ``(K, k)`` probe indices, ``maps`` ``(K, k, h, w)`` the unit's activation map
    on each, ``wins`` ``(K, k, h, w)`` (LWTA layers) where the unit won its block.
    """

    indices: torch.Tensor
    maps: torch.Tensor
    wins: torch.Tensor | None = None
    note: str = ""

    def to_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        tensors = {f"{prefix}.indices": self.indices, f"{prefix}.maps": self.maps}
        if self.wins is not None:
            tensors[f"{prefix}.wins"] = self.wins
        return tensors

    @classmethod
    def from_tensors(
        cls, tensors: dict[str, torch.Tensor], prefix: str, note: str = ""
    ) -> LayerMaps:
        return cls(
            tensors[f"{prefix}.indices"],
            tensors[f"{prefix}.maps"],
            tensors.get(f"{prefix}.wins"),
            note,
        )


def top_images(scores: torch.Tensor, k: int) -> torch.Tensor:
    """``(K, k)`` indices of each unit's ``k`` highest-scoring rows of ``scores`` ``(N, K)``,
    best first, ties to the lower index.

    Example:
        >>> top_images(torch.tensor([[1.0], [3.0], [3.0]]), 2).tolist()
        [[1, 2]]
    """
    order = torch.sort(scores.T, dim=1, descending=True, stable=True).indices
    return order[:, : min(k, scores.shape[0])]


class _TopMaps:
    """Streaming top-k of one layer: memory ``K x k x h x w`` whatever the probe size."""

    def __init__(self, k: int, note: str = "") -> None:
        self.k = k
        self.note = note
        self.scores: torch.Tensor | None = None
        self.indices: torch.Tensor | None = None
        self.maps: torch.Tensor | None = None
        self.wins: torch.Tensor | None = None
        self.seen = 0

    def update(self, scores: torch.Tensor, maps: torch.Tensor, wins: torch.Tensor | None) -> None:
        """Merge one batch: ``scores`` ``(B, K)``, ``maps`` ``(B, K, h, w)``."""
        batch = torch.arange(self.seen, self.seen + len(scores))
        self.seen += len(scores)
        cand_scores = scores.T.float()  # (K, B)
        cand_index = batch.expand_as(cand_scores)
        cand_maps = maps.transpose(0, 1).float()  # (K, B, h, w)
        cand_wins = wins.transpose(0, 1) if wins is not None else None
        if self.scores is not None:  # kept ones first: they hold the lower indices
            cand_scores = torch.cat([self.scores, cand_scores], dim=1)
            cand_index = torch.cat([self.indices, cand_index], dim=1)
            cand_maps = torch.cat([self.maps, cand_maps], dim=1)
            if cand_wins is not None and self.wins is not None:
                cand_wins = torch.cat([self.wins, cand_wins], dim=1)
        order = torch.sort(cand_scores, dim=1, descending=True, stable=True).indices[:, : self.k]
        self.scores = cand_scores.gather(1, order)
        self.indices = cand_index.gather(1, order)
        rows = torch.arange(len(order))[:, None]
        self.maps = cand_maps[rows, order].clone()
        self.wins = cand_wins[rows, order].clone() if cand_wins is not None else None

    def result(self) -> LayerMaps:
        assert self.indices is not None and self.maps is not None
        return LayerMaps(self.indices, self.maps, self.wins, self.note)


def _maps_note(output: torch.Tensor, maps: torch.Tensor, model: nn.Module) -> str:
    h, w = maps.shape[-2:]
    if output.dim() == 4:
        return f"conv map {h}x{w}"
    prefix = output.shape[1] - h * w
    return f"patch tokens on the {h}x{w} patch grid; {prefix} class/register token(s) left out"


@dataclass
class Recording:
    """Pooled activations ``(N, K)`` per layer, with what produced them, and the spatial maps
    of each unit's top images for layers with spatial extent."""

    activations: dict[str, torch.Tensor]
    wins: dict[str, torch.Tensor]  # LWTA layers: pooled winner mask (fraction of positions won)
    pooling: dict[str, str]
    meta: dict[str, Any] = field(default_factory=dict)
    maps: dict[str, LayerMaps] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        """Write atomically (temporary file, then rename; nothing is left on failure)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = dataclasses.asdict(self)
        data["maps"] = {n: {**m.to_tensors("m"), "note": m.note} for n, m in self.maps.items()}
        with atomic_path(path) as tmp:
            torch.save(data, tmp)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Recording:
        data = torch.load(path, map_location="cpu", weights_only=True)
        data["maps"] = {
            n: LayerMaps.from_tensors(t, "m", t.get("note", ""))
            for n, t in data.get("maps", {}).items()
        }
        return cls(**data)


# -- fingerprints for the cache key ------------------------------------------------------------
def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of every state-dict tensor (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def dataset_fingerprint(dataset: Dataset) -> str | None:
    """A content fingerprint of a probe set, or ``None`` when it cannot be had cheaply.

    Uses ``dataset.fingerprint()`` when the data set defines it; the Shapes world hashes its
    configuration and split; image folders hash every file's path, size and mtime; tensor
    data sets hash their tensors. Subsets add their indices.
    """
    digest = hashlib.sha256()
    if isinstance(dataset, torch.utils.data.Subset):
        inner = dataset_fingerprint(dataset.dataset)
        if inner is None:
            return None
        digest.update(inner.encode())
        digest.update(json.dumps(list(map(int, dataset.indices))).encode())
        return digest.hexdigest()
    if callable(getattr(dataset, "fingerprint", None)):
        return str(dataset.fingerprint())
    config = getattr(dataset, "config", None)
    if dataclasses.is_dataclass(config):  # e.g. ShapesWorld: images follow from config + split
        digest.update(type(dataset).__name__.encode())
        digest.update(
            json.dumps(
                [dataclasses.asdict(config), getattr(dataset, "split", None)],
                sort_keys=True,
                default=str,
            ).encode()
        )
        return digest.hexdigest()
    samples = getattr(dataset, "samples", None)
    if isinstance(samples, list) and samples and isinstance(samples[0], tuple):
        for path, target in samples:
            stat = os.stat(path)
            digest.update(f"{path}|{target}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()
    tensors = getattr(dataset, "tensors", None)
    if tensors:
        for t in tensors:
            digest.update(t.contiguous().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()
    return None


# -- recording --------------------------------------------------------------------------------
def _require_finite(activations: torch.Tensor, layer: str, first: int = 0) -> None:
    """Raise :class:`NonFiniteError` if ``activations`` (images x units) hold NaN or inf."""
    bad = ~torch.isfinite(activations.reshape(len(activations), -1))
    if bad.any():
        units = int(bad.any(dim=0).sum())
        image = first + int(bad.any(dim=1).nonzero()[0])
        raise NonFiniteError(
            f"layer {layer!r} produced NaN or infinite activations ({units} of its "
            f"{bad.shape[1]} units, first at probe image {image}): the model's numbers are "
            "broken (check its weights and inputs); to record anyway and leave those units "
            "unlabelled ('not finite'), pass allow_nonfinite=True"
        )


class _Rows:
    """One layer's recorded rows, chunk by chunk: kept in memory, or (with ``writer``, a
    :class:`~discover.dissection.streaming.RowWriter`) written out as they come."""

    def __init__(self, writer: Any = None) -> None:
        self.chunks: list[torch.Tensor] = []
        self.count = 0
        self.last: torch.Tensor | None = None
        self.writer = writer

    def append(self, rows: torch.Tensor) -> None:
        self.count += len(rows)
        self.last = rows
        if self.writer is not None:
            self.writer.append(rows)
        else:
            self.chunks.append(rows)

    def tensor(self) -> torch.Tensor:
        return torch.cat(self.chunks)


@contextlib.contextmanager
def _pooled_hooks(
    model: nn.Module,
    modules: dict[str, nn.Module],
    pooling: dict[str, str],
    sink: dict[str, _Rows],
    allow_nonfinite: bool = False,
    top_maps: dict[str, _TopMaps] | None = None,
    maps_k: int = GALLERY_SIZE,
) -> Iterator[None]:
    """Forward hooks that append each layer's pooled output (and LWTA wins) to ``sink``;
    a non-finite output stops the recording at the batch where it appears unless
    ``allow_nonfinite``. With ``top_maps``, each layer with spatial extent also streams the
    maps of its units' top images into it."""
    handles = []

    def make(name: str, module: nn.Module):
        def hook(_m, _inputs, output):
            if not isinstance(output, torch.Tensor):
                raise InputError(
                    f"layer {name!r} returned {type(output).__name__}, not a "
                    "tensor; choose a layer that outputs one (see `discover layers`)"
                )
            if pooling[name] == "auto":  # resolved on the first output, then recorded
                pooling[name] = suggested_pooling(tuple(output.shape[1:]), model) or "none"
            # Copy: a view (``cls`` pooling, or no pooling) would pin the whole layer output,
            # and a later in-place op could change the recorded values.
            pooled = pool(output.detach(), pooling[name], name)
            if not allow_nonfinite:
                _require_finite(pooled, name, first=sink[name].count)
            sink[name].append(pooled.to(device="cpu", dtype=torch.float32, copy=True))
            if isinstance(module, LWTA):
                wins = pool_mask(module.last_mask, pooling[name], name)
                sink[f"{name}#wins"].append(wins.cpu())
            if top_maps is not None and pooled.dim() == 2:
                maps = spatial_maps(output.detach(), model)
                if maps is not None and maps.shape[:2] == pooled.shape:
                    won = (
                        spatial_maps(module.last_mask, model) if isinstance(module, LWTA) else None
                    )
                    if name not in top_maps:
                        top_maps[name] = _TopMaps(maps_k, _maps_note(output, maps, model))
                    top_maps[name].update(
                        sink[name].last, maps.cpu(), won.cpu() if won is not None else None
                    )

        return hook

    try:
        for name, module in modules.items():
            handles.append(module.register_forward_hook(make(name, module)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _cache_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _read_cached(path: Path, key: str, layers: Sequence[str], n: int) -> Recording | None:
    """The cache entry at ``path`` if it holds this key's recording, else ``None`` (a miss).

    An entry that cannot be read (cut short, damaged) or holds another key, other layers or
    other shapes warns once, naming the file; the caller recomputes and replaces it.
    """
    try:
        cached = Recording.load(path)
        if cached.meta.get("cache_key") != key:
            problem = "it holds another key"
        elif sorted(cached.activations) != sorted(layers) or any(
            t.dim() != 2 or len(t) != n for t in cached.activations.values()
        ):
            problem = f"it does not hold {n} rows of layers {', '.join(layers)}"
        else:
            return cached
    except Exception as error:  # noqa: BLE001  (torch.load raises many types on damaged files)
        problem = f"{type(error).__name__}: {error}"
    cache_warning(f"activation cache entry {path} cannot be used ({problem}); recomputing it")
    return None


def _write_cached(recording: Recording, path: Path) -> bool:
    """Save a cache entry; a failed write (disk full, read-only) warns and returns False."""
    try:
        recording.save(path)
    except (OSError, RuntimeError) as error:  # torch.save reports a full disk as RuntimeError
        cache_warning(
            f"could not write activation cache entry {path} ({type(error).__name__}: {error}); "
            "carrying on without caching"
        )
        return False
    return True


@torch.no_grad()
def record(
    model: nn.Module,
    layers: Sequence[str],
    probe: Dataset,
    pooling: str | dict[str, str] = "auto",
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    policy: str = "argmax",
    seed: int = 0,
    workers: int = 0,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    allow_nonfinite: bool = False,
    maps: int = GALLERY_SIZE,
) -> Recording:
    """Pooled activations of ``layers`` over the probe set, streamed in batches.

    ``probe`` yields ``(image, label, ...)`` items already transformed for ``model``.
    ``pooling`` is one name for all layers, a ``{layer: pooling}`` dict, or ``"auto"`` (the
    suggestion of :func:`list_layers` for the layer's output rank; a token layer gets ``cls``
    when the model has a class token). The poolings used are in the result. LWTA layers use ``policy`` (``"argmax"`` is reproducible; ``"sample"`` is the
    reference's single stochastic pass, seeded with ``seed``) and also record their pooled
    winner masks. With ``cache_dir`` the result is cached under a content key. NaN or
    infinite activations raise :class:`~discover.errors.NonFiniteError` at the batch where
    they appear; ``allow_nonfinite=True`` records them with a warning instead (dissection
    then leaves those units unlabelled, "not finite"). For every layer with spatial extent
    (a conv map, or the patch tokens of a ViT/DeiT token layer) the result also keeps the
    maps of each unit's ``maps`` top images (:class:`LayerMaps`; LWTA layers also where the
    unit won its block), as a streaming top-k: their memory does not grow with the probe.

    Example:
        >>> rec = record(model, ["layer3.1.act2"], probe, pooling="avg")  # doctest: +SKIP
        >>> rec.activations["layer3.1.act2"].shape  # doctest: +SKIP
        torch.Size([1000, 128])
    """
    modules, pooling = _setup(model, layers, probe, pooling, batch_size, maps)

    # Fingerprints (hashing every weight, statting every file) only serve the cache.
    caching = cache_dir is not None
    probe_id = dataset_fingerprint(probe) if caching else None
    key_parts = {
        "model": model_fingerprint(model) if caching else None,
        "layers": list(modules),
        "pooling": pooling,
        "policy": policy,
        "seed": seed,
        "probe": probe_id,
        "n": len(probe),
        "transform": repr(getattr(probe, "transform", None)),
        "maps": maps,
        "version": 3,
    }
    cache_file = None
    key = _cache_key(key_parts)
    if caching and probe_id is not None:
        cache_file = Path(cache_dir).expanduser() / "activations" / f"{key}.pt"
        if cache_file.is_file():
            cached = _read_cached(cache_file, key, list(modules), len(probe))
            if cached is not None:
                cached.meta["cache"] = {"file": str(cache_file), "hit": True}
                _check_finite(cached, allow_nonfinite)
                return cached

    sink = {n: _Rows() for n in modules}
    sink.update({f"{n}#wins": _Rows() for n, m in modules.items() if isinstance(m, LWTA)})
    top_maps: dict[str, _TopMaps] | None = {} if maps else None
    _run_probe(
        model, modules, probe, pooling, sink, top_maps, batch_size=batch_size, device=device,
        policy=policy, seed=seed, workers=workers, progress=progress,
        allow_nonfinite=allow_nonfinite, maps=maps,
    )  # fmt: skip
    result = Recording(
        activations={n: sink[n].tensor() for n in modules},
        wins={n: sink[f"{n}#wins"].tensor() for n in modules if f"{n}#wins" in sink},
        pooling=dict(pooling),
        maps={n: t.result() for n, t in (top_maps or {}).items()},
        meta={
            **{k: v for k, v in key_parts.items() if k != "model" and v is not None},
            **({"model_sha256": key_parts["model"]} if caching else {}),
            "images": len(probe),
            **({"cache_key": key} if cache_file is not None else {}),
        },
    )
    if cache_file is not None:
        written = _write_cached(result, cache_file)
        result.meta["cache"] = {"file": str(cache_file) if written else None, "hit": False}
    if allow_nonfinite:  # otherwise the hooks refused every non-finite batch already
        _check_finite(result, allow_nonfinite)
    return result


def _setup(
    model: nn.Module,
    layers: Sequence[str],
    probe: Dataset,
    pooling: str | dict[str, str],
    batch_size: int,
    maps: int,
) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """The layers and their poolings, after checking a recording's options."""
    modules = resolve_layers(model, layers)
    if isinstance(pooling, str):
        pooling = {n: pooling for n in modules}
    pooling = dict(pooling)
    missing = [n for n in modules if n not in pooling]
    if missing:
        raise InputError(f"no pooling given for layer(s) {', '.join(missing)}")
    require_int(batch_size, "record: batch_size")
    require_int(maps, "record: maps", 0)
    if len(probe) == 0:
        raise InputError("the probe set is empty")
    return modules, pooling


@dataclass
class RowsRecording:
    """A recording written to a folder as it ran: each layer's pooled activations (and LWTA
    winner fractions) as row files (:class:`~discover.dissection.streaming.FileRows`), so its
    memory does not grow with the probe."""

    folder: Path
    activations: dict[str, Any]  # layer -> FileRows (N x K)
    wins: dict[str, Any]  # LWTA layer -> FileRows (N x K)
    pooling: dict[str, str]
    maps: dict[str, LayerMaps] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def record_rows(
    model: nn.Module,
    layers: Sequence[str],
    probe: Dataset,
    folder: str | Path,
    pooling: str | dict[str, str] = "auto",
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    policy: str = "argmax",
    seed: int = 0,
    workers: int = 0,
    progress: bool = True,
    allow_nonfinite: bool = False,
    maps: int = GALLERY_SIZE,
) -> RowsRecording:
    """:func:`record`, with every batch's rows written to ``folder`` as it comes (one
    sub-folder of row files per layer, ``layer-<i>`` in the order of ``layers``): the
    same values, and memory that does not grow with the probe.

    Example:
        >>> rec = record_rows(model, ["layer3.1.act2"], probe, "cache/rows")  # doctest: +SKIP
        >>> rec.activations["layer3.1.act2"].shape  # doctest: +SKIP
        (1000000, 128)
    """
    from discover.dissection.streaming import FileRows, RowWriter

    modules, pooling = _setup(model, layers, probe, pooling, batch_size, maps)
    folder = Path(folder)
    sink = {n: _Rows(RowWriter(folder / f"layer-{i}")) for i, n in enumerate(modules)}
    sink.update(
        {
            f"{n}#wins": _Rows(RowWriter(folder / f"layer-{i}-wins"))
            for i, (n, m) in enumerate(modules.items())
            if isinstance(m, LWTA)
        }
    )
    top_maps: dict[str, _TopMaps] | None = {} if maps else None
    _run_probe(
        model, modules, probe, pooling, sink, top_maps, batch_size=batch_size, device=device,
        policy=policy, seed=seed, workers=workers, progress=progress,
        allow_nonfinite=allow_nonfinite, maps=maps,
    )  # fmt: skip
    for rows in sink.values():
        rows.writer.close()
    return RowsRecording(
        folder=folder,
        activations={n: FileRows(sink[n].writer.folder) for n in modules},
        wins={n: FileRows(sink[f"{n}#wins"].writer.folder) for n in modules if f"{n}#wins" in sink},
        pooling=dict(pooling),
        maps={n: t.result() for n, t in (top_maps or {}).items()},
        meta={
            "layers": list(modules), "pooling": dict(pooling), "policy": policy, "seed": seed,
            "n": len(probe), "images": len(probe), "maps": maps, "streamed": True,
        },
    )  # fmt: skip


def _run_probe(
    model: nn.Module,
    modules: dict[str, nn.Module],
    probe: Dataset,
    pooling: dict[str, str],
    sink: dict[str, _Rows],
    top_maps: dict[str, _TopMaps] | None,
    *,
    batch_size: int,
    device: str | torch.device,
    policy: str,
    seed: int,
    workers: int,
    progress: bool,
    allow_nonfinite: bool,
    maps: int,
) -> None:
    """The forward passes of a recording: every probe batch through the model with the
    hooks feeding ``sink``, then the checks that each layer ran once per image."""
    device = torch.device(device)
    was_training = model.training
    model.to(device).eval()
    loader = DataLoader(probe, batch_size=batch_size, shuffle=False, num_workers=workers)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(probe), desc="record", unit="img", unit_scale=True, leave=False,
               dynamic_ncols=True, disable=not progress)  # fmt: skip
    torch.manual_seed(seed)
    try:
        with (
            eval_policy(model, policy),
            capture_winners(model),
            _pooled_hooks(model, modules, pooling, sink, allow_nonfinite, top_maps, maps),
        ):
            for batch in loader:
                images = batch[0] if isinstance(batch, (list, tuple)) else batch
                model(images.to(device))
                bar.update(len(images))  # images per second, whatever the batch size
    finally:
        bar.close()
        model.train(was_training)
    empty = [n for n in modules if not sink[n].count]
    if empty:
        raise InputError(
            f"layer(s) {', '.join(empty)} produced no output during the forward "
            "pass (not used by this model's forward?)"
        )
    repeated = [
        f"{n} ({sink[n].count // len(probe)} calls per forward)"
        for n in modules
        if sink[n].count != len(probe)
    ]
    if repeated:
        raise InputError(
            f"layer(s) {', '.join(repeated)} run more than once per forward pass; "
            "record one call site (e.g. a SharedActivation's numbered children)"
        )


def _check_finite(recording: Recording, allow: bool) -> None:
    """Raise (or, allowed, warn) when a recorded layer holds NaN or infinite values."""
    for layer, activations in recording.activations.items():
        if allow:
            units = int((~torch.isfinite(activations)).any(dim=0).sum())
            if units:
                warnings.warn(
                    f"layer {layer!r}: {units} unit(s) with NaN or infinite activations were "
                    "recorded (allow_nonfinite=True); they stay unlabelled ('not finite')",
                    stacklevel=3,
                )
        else:
            _require_finite(activations, layer)


class _ModelView(Dataset):
    """The raw probe set through the target model's evaluation transform."""

    def __init__(self, probe: Dataset, transform) -> None:
        self.probe, self.transform = probe, transform

    def __len__(self) -> int:
        return len(self.probe)

    def __getitem__(self, index: int):
        item = self.probe[index]
        image = item[0] if isinstance(item, (tuple, list)) else item
        return self.transform(image), 0

    def fingerprint(self) -> str | None:
        inner = dataset_fingerprint(self.probe)
        if inner is None:
            return None
        return hashlib.sha256(f"{inner}|{self.transform!r}".encode()).hexdigest()


def model_view(model: nn.Module, probe: Dataset, transform: Callable | None = None) -> Dataset:
    """``probe`` (raw images) as the model sees it: with its evaluation transform.

    The transform is ``transform`` when given, else it comes from ``model.data_config`` (set
    by training runs and kept in their checkpoints) or the model's ``pretrained_cfg``.
    """
    from discover.data.transforms import eval_transform

    return _ModelView(probe, transform or eval_transform(model))
