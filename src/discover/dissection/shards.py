"""Sharded dissection: record a probe set in shards (processes, machines, Slurm array jobs)
and merge them into one dissection.

:func:`dissect_shard` records shard ``i`` of ``n`` (images ``i N // n`` up to
``(i + 1) N // n`` of the probe) into a folder: each layer's pooled activations and LWTA
winner fractions as row files, the images' embedder vectors (or annotation rows), the
concepts' vectors, the spatial maps of each unit's top images in the shard, and
``shard.json`` with everything that makes it: the dissection's configuration (the options
are checked and resolved as :func:`~discover.dissection.core.dissect` does), the concept
set, the embedder, and fingerprints of the model and of the whole probe.

:func:`merge_shards` checks that the shards belong together (the same configuration, concept
set, embedder, model and probe, and shard indices that cover the probe once) and labels every
unit from their rows, streamed (:mod:`discover.dissection.streaming`): the same labels as one
:func:`~discover.dissection.core.dissect` of the whole probe with ``stream=True``. Memory does
not grow with the probe; the merge needs neither the model nor the probe.

Example:
    >>> for i in range(4):  # e.g. one Slurm array task each
    ...     dissect_shard(model, ["layer4"], probe, f"shards/{i}", (i, 4))  # doctest: +SKIP
    >>> merged = merge_shards([f"shards/{i}" for i in range(4)], out="dissection")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import nn
from torch.utils.data import Dataset, Subset

from discover._utils import staged_dir, write_atomic
from discover.dissection.concepts import ConceptSet
from discover.dissection.core import dissect_config, label_layers, model_about, probe_about
from discover.dissection.probe_concepts import concept_rows
from discover.dissection.recording import RowsRecording, model_view, record_rows
from discover.dissection.records import DissectConfig
from discover.dissection.result import Dissection
from discover.dissection.rows import ConcatRows, FileRows, ProductRows, RowWriter
from discover.dissection.spatial import LayerMaps
from discover.dissection.streaming import BLOCK_ROWS
from discover.errors import InputError
from discover.nn.lwta import LWTA

__all__ = [
    "SHARD_FILE",
    "ShardMismatchError",
    "parse_shard",
    "dissect_shard",
    "merge_shards",
    "dissect_distributed",
]

SHARD_FILE = "shard.json"
VERSION = 1
# what every shard of one dissection must share (the keys of shard.json)
SHARED = ("config", "concept_set", "embedder", "model", "probe", "units_per_block",
          "recording", "keep_scores", "shards")  # fmt: skip


class ShardMismatchError(InputError):
    """Shards that do not belong to one dissection."""


def parse_shard(spec: str | Sequence[int]) -> tuple[int, int]:
    """``"2/8"`` or ``(2, 8)`` -> ``(2, 8)``: shard index ``i`` (from 0) of ``n``.

    Example:
        >>> parse_shard("2/8")
        (2, 8)
    """
    try:
        i, n = (int(x) for x in (spec.split("/") if isinstance(spec, str) else spec))
    except (TypeError, ValueError):
        raise InputError(f"a shard is written i/n (e.g. 0/4), got {spec!r}") from None
    if not 0 <= i < n:
        raise InputError(f"shard {i}/{n}: the index must be in 0 .. {n - 1}")
    return i, n


def dissect_shard(
    model: nn.Module,
    layers: Sequence[str],
    probe: Dataset,
    out: str | Path,
    shard: str | Sequence[int],
    concepts: str | ConceptSet = "20k",
    embedder: Any = "conse",
    similarity: str | None = None,
    *,
    batch_size: int = 64,
    device: str = "cpu",
    transform: Any = None,
    progress: bool = True,
    allow_nonfinite: bool = False,
    keep_scores: bool = False,
    **options: Any,
) -> Path:
    """Record shard ``i`` of ``n`` of the probe into the folder ``out`` (see the module
    docstring); ``options`` are :func:`~discover.dissection.core.dissect`'s scoring and
    recording options (``pooling``, ``policy``, ``seed``, ``top_k``, ``null_repeats``,
    ...), checked now and applied by :func:`merge_shards`.

    Example:
        >>> dissect_shard(model, ["fc"], probe, "shards/0", "0/2", "shapes", "annotations")  # doctest: +SKIP
    """
    i, n = parse_shard(shard)
    config, concept_set, emb, modules = dissect_config(
        model, layers, concepts, embedder, similarity, batch_size=batch_size, **options
    )
    N = len(probe)
    lo, hi = i * N // n, (i + 1) * N // n
    if hi <= lo:
        raise InputError(f"shard {i}/{n} of a probe of {N} images is empty; use fewer shards")
    identity = {
        "shard": [i, n], "rows": [lo, hi], "config": asdict(config),
        "concept_set": asdict(concept_set), "embedder": emb.metadata(),
        "model": model_about(model), "probe": probe_about(probe), "keep_scores": keep_scores,
    }  # fmt: skip
    if _finished(Path(out), identity):  # a resumed sharded dissection skips finished shards
        return Path(out)
    part = Subset(probe, range(lo, hi))
    view = model_view(model, part, transform)
    with staged_dir(out) as staging:
        recording = record_rows(
            model, list(modules), view, staging / "q", config.pooling, batch_size=batch_size,
            device=device, policy=config.policy, seed=config.seed, progress=progress,
            allow_nonfinite=allow_nonfinite,
        )  # fmt: skip
        kind = _write_concept_rows(emb, part, concept_set, staging, batch_size, progress)
        _write_maps(recording, lo, staging / "maps.safetensors")
        manifest = {
            "version": VERSION,
            **identity,
            "shards": n,
            "concept_rows": kind,
            "units_per_block": {
                name: module.U if isinstance(module, LWTA) else None
                for name, module in modules.items()
            },
            "recording": {k: v for k, v in recording.meta.items() if k not in ("n", "images")},
            "layers": {
                name: {"q": f"q/{Path(rows.folder).name}", "wins": _wins_folder(recording, name)}
                for name, rows in recording.activations.items()
            },
        }
        write_atomic(staging / SHARD_FILE, json.dumps(manifest, indent=1, default=str))
    return Path(out)


def _finished(folder: Path, identity: dict[str, Any]) -> bool:
    """Whether ``folder`` holds this very shard, finished (same inputs and options)."""
    path = folder / SHARD_FILE
    if not path.is_file():
        return False
    try:
        saved = json.loads(json.dumps(json.loads(path.read_text()), default=str))
    except ValueError:
        return False
    wanted = json.loads(json.dumps(identity, default=str))
    return saved.get("version") == VERSION and all(saved.get(k) == v for k, v in wanted.items())


def dissect_distributed(
    model: nn.Module, layers: Sequence[str], probe: Dataset, out: str | Path, *args: Any,
    device: str = "cpu", **kwargs: Any,
) -> Dissection | None:  # fmt: skip
    """The dissection of ``probe`` by every process of a ``torchrun`` job: each records its
    shard (rank ``r`` of ``w``) into ``OUT.shards/r`` (a folder all processes can read: one
    machine, or a shared file system across machines), then process 0 merges them into
    ``out`` and removes the shards. A job run again after an interruption skips the shards
    that were finished. Returns the dissection on process 0, ``None`` on the others.

    Example:
        >>> # torchrun --nproc_per_node=4 -m discover dissect ... --out runs/u8/dissection
    """
    import shutil

    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if str(device).startswith("cuda") else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    out = Path(out)
    folder = out.parent / f"{out.name}.shards"
    dissect_shard(
        model, layers, probe, folder / str(rank), (rank, world), *args, device=device,
        progress=kwargs.pop("progress", True) and rank == 0, **kwargs,
    )  # fmt: skip
    dist.barrier()
    result = None
    if rank == 0:
        result = merge_shards([folder / str(r) for r in range(world)], out=out)
        shutil.rmtree(folder, ignore_errors=True)
    dist.barrier()
    return result


def _wins_folder(recording: RowsRecording, name: str) -> str | None:
    wins = recording.wins.get(name)
    return f"q/{Path(wins.folder).name}" if wins is not None else None


def _write_concept_rows(
    emb: Any, part: Dataset, concept_set: ConceptSet, folder: Path, batch_size: int,
    progress: bool,
) -> str:  # fmt: skip
    """The shard's rows of ``P``: image vectors and the concepts' vectors, or the rows of
    ``P`` itself (annotations, or an embedder that computes ``P`` its own way)."""
    rows = concept_rows(part, concept_set, emb, folder / "images", batch_size=batch_size,
                        progress=progress)  # fmt: skip
    if isinstance(rows, ProductRows):
        write_atomic(folder / "texts.safetensors", save({"texts": rows.right.contiguous()}))
        return "product"
    with RowWriter(folder / "images") as writer:  # annotations: their columns
        for _, block in rows.blocks(BLOCK_ROWS):
            writer.append(block)
    return "rows"


def _write_maps(recording: RowsRecording, offset: int, path: Path) -> None:
    """Each layer's top-image maps, with probe-wide image indices and their activations
    (the score a merge ranks them by)."""
    tensors: dict[str, torch.Tensor] = {}
    for name, layer_maps in recording.maps.items():
        Q = recording.activations[name]
        index = layer_maps.indices
        rows, inverse = index.reshape(-1).unique(return_inverse=True)
        picked = Q.gather(rows).index_select(0, inverse).view(*index.shape, -1)
        units = torch.arange(index.shape[0])[:, None].expand_as(index)
        tensors.update(layer_maps.to_tensors(name))
        tensors[f"{name}.indices"] = index + offset
        tensors[f"{name}.scores"] = picked[units, torch.arange(index.shape[1]), units].float()
    notes = {name: m.note for name, m in recording.maps.items()}
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    write_atomic(path, save(tensors, metadata={"notes": json.dumps(notes)}))


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / SHARD_FILE
    if not path.is_file():
        raise InputError(f"{folder} is not a shard (no {SHARD_FILE}; `discover dissect --shard`)")
    data = json.loads(path.read_text())
    if data.get("version") != VERSION:
        raise InputError(f"{path}: shard format {data.get('version')}, expected {VERSION}")
    return data


def _check_together(folders: list[Path], manifests: list[dict[str, Any]]) -> None:
    first = manifests[0]
    for folder, manifest in zip(folders[1:], manifests[1:], strict=True):
        for key in SHARED:
            if manifest.get(key) != first.get(key):
                raise ShardMismatchError(
                    f"shards {folders[0]} and {folder} differ in {key} ({_difference(first.get(key), manifest.get(key))}): "
                    "they are not shards of one dissection"
                )
    n = first["shards"]
    indices = sorted(m["shard"][0] for m in manifests)
    if indices != list(range(n)):
        missing = sorted(set(range(n)) - set(indices))
        repeated = sorted({i for i in indices if indices.count(i) > 1})
        raise ShardMismatchError(
            f"shards of {n}: missing {missing or 'none'}, given twice {repeated or 'none'}"
        )


def _difference(a: Any, b: Any) -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        return ", ".join(f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in keys[:3])
    return f"{a!r} vs {b!r}"


def _merged_maps(folders: list[Path], layers: list[str], k: int) -> dict[str, LayerMaps]:
    """Each unit's top-``k`` maps over all shards (ties to the lower image index)."""
    with contextlib.ExitStack() as opened:
        files = [opened.enter_context(safe_open(f / "maps.safetensors", framework="pt"))
                 for f in folders]  # fmt: skip
        return _merge_layer_maps(files, layers, k)


def _merge_layer_maps(files: list[Any], layers: list[str], k: int) -> dict[str, LayerMaps]:
    out = {}
    notes = json.loads((files[0].metadata() or {}).get("notes") or "{}")
    for name in layers:
        if f"{name}.indices" not in files[0].keys():  # noqa: SIM118
            continue
        wanted = [f"{name}.{part}" for part in ("indices", "maps", "wins")]
        parts = [  # this layer's tensors only
            LayerMaps.from_tensors(
                {key: f.get_tensor(key) for key in wanted if key in f.keys()}, name
            )  # noqa: SIM118
            for f in files
        ]
        scores = torch.cat([f.get_tensor(f"{name}.scores") for f in files], dim=1)
        index = torch.cat([p.indices for p in parts], dim=1)
        order = index.sort(dim=1, stable=True).indices
        scores, index = scores.gather(1, order), index.gather(1, order)
        best = scores.sort(dim=1, descending=True, stable=True).indices[:, :k]
        pick = order.gather(1, best)
        units = torch.arange(index.shape[0])[:, None]
        maps = torch.cat([p.maps for p in parts], dim=1)[units, pick]
        wins = None
        if all(p.wins is not None for p in parts):
            wins = torch.cat([p.wins for p in parts], dim=1)[units, pick]
        out[name] = LayerMaps(index.gather(1, best), maps, wins, notes.get(name, ""))
    return out


def merge_shards(
    shards: Sequence[str | Path], out: str | Path | None = None, *, progress: bool = True
) -> Dissection:
    """One dissection from the shards of :func:`dissect_shard` (any order), saved to ``out``
    if given.

    Raises:
        ShardMismatchError: shards of different models, probes, concept sets, embedders or
            options, or shards missing or given twice; nothing is written.

    Example:
        >>> merge_shards(["shards/0", "shards/1"], out="runs/u8/dissection")  # doctest: +SKIP
    """
    t0 = time.time()
    folders = [Path(s) for s in shards]
    if not folders:
        raise InputError("merge_shards: no shards given")
    manifests = [_read_manifest(f) for f in folders]
    _check_together(folders, manifests)
    ordered = sorted(zip(manifests, folders, strict=True), key=lambda mf: mf[0]["shard"][0])
    manifests, folders = [m for m, _ in ordered], [f for _, f in ordered]
    first = manifests[0]
    config = DissectConfig(**first["config"])
    concept_set = ConceptSet(**{**first["concept_set"],
                                "duplicates": tuple(first["concept_set"]["duplicates"])})  # fmt: skip
    layers = list(config.layers)

    def rows(key: str, name: str) -> Any:
        return ConcatRows(tuple(FileRows(f / m["layers"][name][key]) for m, f in ordered))

    recording = RowsRecording(
        folder=None,  # type: ignore[arg-type]
        activations={name: rows("q", name) for name in layers},
        wins={name: rows("wins", name) for name in layers if first["layers"][name]["wins"]},
        pooling=first["recording"]["pooling"],
        maps=_merged_maps(folders, layers, first["recording"].get("maps") or 0),
        meta={**first["recording"], "images": first["probe"]["images"], "shards": len(folders)},
    )
    images = ConcatRows(tuple(FileRows(f / "images") for f in folders))
    P: Any = images
    if first["concept_rows"] == "product":
        with safe_open(folders[0] / "texts.safetensors", framework="pt") as f:
            P = ProductRows(images, f.get_tensor("texts"))
    result = label_layers(
        recording, P, concept_set, first["embedder"], config, first["units_per_block"],
        first["model"], first["probe"], keep_scores=first["keep_scores"],
        p_cache={"streamed": True, "shards": len(folders)}, t0=t0,
    )  # fmt: skip
    if out is not None:
        result.save(out)
    return result
