"""Record pooled activations of any layer of any model over a probe set.

* :func:`record` streams a probe set through the model and keeps, per layer, one pooled
  vector per image: an ``(N, K)`` matrix, never the raw feature maps. LWTA layers also keep
  the pooled winner mask (how often each unit won, per image). :func:`record_rows` writes the
  same rows to files as they come.
* Results are cached under a key that hashes everything they depend on (weights, layers,
  pooling, eval policy and seed, the probe set's content fingerprint and transform), so a
  changed input never reuses a stale entry. Writes are atomic; an entry that cannot be read
  (cut short, damaged, another key or shape) is a miss that warns, naming the file, and is
  recomputed and replaced; a write that fails (disk full, read-only) warns and carries on.

Layers are addressed and pooled as :mod:`discover.dissection.layers` says; the spatial maps
of each unit's top images are kept as :mod:`discover.dissection.spatial` says.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
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
from discover.dissection.layers import (
    pool,
    pool_mask,
    resolve_layers,
    suggested_pooling,
)
from discover.dissection.rows import FileRows, RowWriter
from discover.dissection.spatial import (
    GALLERY_SIZE,
    LayerMaps,
    TopMaps,
    maps_note,
    spatial_maps,
)
from discover.errors import InputError, NonFiniteError
from discover.nn.checkpoints import state_dict_sha256
from discover.nn.hooks import capture, training_mode
from discover.nn.lwta import LWTA, capture_winners, eval_policy

__all__ = [
    "model_view",
    "Recording",
    "RowsRecording",
    "record",
    "record_rows",
    "model_fingerprint",
    "dataset_fingerprint",
]


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
    """SHA-256 of every state-dict tensor (names, dtypes, shapes and bytes):
    :func:`~discover.nn.state_dict_sha256` with its default ``name:dtype:shape`` headers.

    Saved in every dissection and checked against the model it is used with, so its bytes
    never change. (``module_sha256``, behind embedder ids, hashes the same way but also the
    module's ``repr``, with ``|`` headers: also saved, so it keeps its own format.)
    """
    return state_dict_sha256(model.state_dict())


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
    :class:`~discover.dissection.rows.RowWriter`) written out as they come."""

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
    top_maps: dict[str, TopMaps] | None = None,
    maps_k: int = GALLERY_SIZE,
) -> Iterator[None]:
    """Forward hooks that append each layer's pooled output (and LWTA wins) to ``sink``;
    a non-finite output stops the recording at the batch where it appears unless
    ``allow_nonfinite``. With ``top_maps``, each layer with spatial extent also streams the
    maps of its units' top images into it."""

    def hook(name: str, module: nn.Module, _inputs: Any, output: Any) -> None:
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
                won = spatial_maps(module.last_mask, model) if isinstance(module, LWTA) else None
                if name not in top_maps:
                    top_maps[name] = TopMaps(maps_k, maps_note(output, maps, model))
                top_maps[name].update(
                    sink[name].last, maps.cpu(), won.cpu() if won is not None else None
                )

    with capture(model, modules, hook):
        yield


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
    caching = cache_dir is not None
    key_parts = _key_parts(model, list(modules), probe, pooling, policy, seed, maps, caching)
    key = _cache_key(key_parts)
    cache_file = None
    if caching and key_parts["probe"] is not None:
        cache_file = Path(cache_dir).expanduser() / "activations" / f"{key}.pt"
        cached = _cached(cache_file, key, list(modules), len(probe))
        if cached is not None:
            _check_finite(cached, allow_nonfinite)
            return cached
    sink = _sinks(modules)
    top_maps: dict[str, TopMaps] | None = {} if maps else None
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


def _key_parts(
    model: nn.Module, layers: list[str], probe: Dataset, pooling: dict[str, str], policy: str,
    seed: int, maps: int, caching: bool,
) -> dict[str, Any]:  # fmt: skip
    """Everything a recording depends on, hashed into its cache key. The fingerprints
    (hashing every weight, statting every file) only serve the cache: ``None`` without one."""
    probe_id = dataset_fingerprint(probe) if caching else None
    return {
        "model": model_fingerprint(model) if caching else None,
        "layers": layers,
        "pooling": pooling,
        "policy": policy,
        "seed": seed,
        "probe": probe_id,
        "n": len(probe),
        "transform": repr(getattr(probe, "transform", None)),
        "maps": maps,
        "version": 3,
    }


def _cached(path: Path, key: str, layers: Sequence[str], n: int) -> Recording | None:
    """The recording of the cache entry at ``path``, when there is one for this key."""
    if not path.is_file():
        return None
    cached = _read_cached(path, key, layers, n)
    if cached is not None:
        cached.meta["cache"] = {"file": str(path), "hit": True}
    return cached


def _sinks(modules: dict[str, nn.Module], folder: Path | None = None) -> dict[str, _Rows]:
    """The rows of each layer and of each LWTA layer's wins (``"<layer>#wins"``): kept in
    memory or, with ``folder``, written to its ``layer-<i>`` and ``layer-<i>-wins``."""

    def rows(name: str) -> _Rows:
        return _Rows(RowWriter(folder / name) if folder is not None else None)

    sink = {n: rows(f"layer-{i}") for i, n in enumerate(modules)}
    sink.update(
        {
            f"{n}#wins": rows(f"layer-{i}-wins")
            for i, (n, m) in enumerate(modules.items())
            if isinstance(m, LWTA)
        }
    )
    return sink


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
    winner fractions) as row files (:class:`~discover.dissection.rows.FileRows`), so its
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
    modules, pooling = _setup(model, layers, probe, pooling, batch_size, maps)
    folder = Path(folder)
    sink = _sinks(modules, folder)
    top_maps: dict[str, TopMaps] | None = {} if maps else None
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
    top_maps: dict[str, TopMaps] | None,
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
    model.to(device)
    loader = DataLoader(probe, batch_size=batch_size, shuffle=False, num_workers=workers)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(probe), desc="record", unit="img", unit_scale=True, leave=False,
               dynamic_ncols=True, disable=not progress)  # fmt: skip
    torch.manual_seed(seed)
    try:
        with (
            training_mode(model, False),
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
