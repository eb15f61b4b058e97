"""Row sources: the rows of an ``N x C`` matrix handed out block by block in order, or
gathered by image index, so that the matrix need never be held whole.

* :class:`TensorRows`: a tensor in memory; :class:`ConcatRows`: several sources one after
  another (the shards of a probe); :class:`PermutedRows`: the rows of a source shuffled;
  :class:`ProductRows`: the rows of ``left @ right.T`` computed when read.
* :class:`RowWriter` saves row blocks as safetensors files, :class:`FileRows` reads them back
  memory-mapped.

The streamed similarity functions (:mod:`discover.dissection.streaming`) read them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import safe_open
from torch import Tensor

from discover._utils import write_atomic
from discover.errors import InputError

__all__ = [
    "RowSource",
    "TensorRows",
    "ConcatRows",
    "PermutedRows",
    "ProductRows",
    "RowWriter",
    "FileRows",
]


class RowSource(Protocol):
    """Rows of an ``N x C`` matrix: blocks in order, and rows gathered by index."""

    @property
    def shape(self) -> tuple[int, int]: ...

    def blocks(self, rows: int) -> Iterator[tuple[int, Tensor]]:
        """``(first row, block)`` pairs covering every row once, in order."""
        ...

    def gather(self, index: Tensor, columns: slice | None = None) -> Tensor:
        """The rows ``index`` (ascending, unique), ``len(index) x C`` (or only ``columns``)."""
        ...


@dataclass(frozen=True)
class TensorRows:
    """A row source over a tensor in memory."""

    data: Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.data.shape)  # type: ignore[return-value]

    def blocks(self, rows: int) -> Iterator[tuple[int, Tensor]]:
        for start in range(0, self.data.shape[0], rows):
            yield start, self.data[start : start + rows]

    def gather(self, index: Tensor, columns: slice | None = None) -> Tensor:
        data = self.data if columns is None else self.data[:, columns]
        return data.index_select(0, index)


@dataclass(frozen=True)
class ConcatRows:
    """The rows of several sources one after another (the shards of a probe, in order)."""

    parts: tuple[Any, ...]

    def __post_init__(self) -> None:
        if not self.parts:
            raise InputError("ConcatRows: no sources")
        widths = {part.shape[1] for part in self.parts}
        if len(widths) != 1:
            raise InputError(f"ConcatRows: sources of different widths {sorted(widths)}")

    @property
    def starts(self) -> list[int]:
        starts, total = [], 0
        for part in self.parts:
            starts.append(total)
            total += part.shape[0]
        return starts

    @property
    def shape(self) -> tuple[int, int]:
        return (sum(part.shape[0] for part in self.parts), self.parts[0].shape[1])

    def blocks(self, rows: int) -> Iterator[tuple[int, Tensor]]:
        for offset, part in zip(self.starts, self.parts, strict=True):
            for start, block in part.blocks(rows):
                yield offset + start, block

    def gather(self, index: Tensor, columns: slice | None = None) -> Tensor:
        starts = torch.tensor(self.starts)
        which = torch.searchsorted(starts, index, right=True) - 1
        pieces = [
            self.parts[i].gather(index[which == i] - int(starts[i]), columns)
            for i in which.unique().tolist()
        ]
        width = len(range(self.shape[1])[columns or slice(None)])
        return torch.cat(pieces) if pieces else torch.empty(0, width)


@dataclass(frozen=True)
class PermutedRows:
    """Row ``i`` of ``source`` is row ``perm[i]`` here (the shuffled images of a null draw)."""

    source: RowSource
    perm: Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return self.source.shape

    def gather(self, index: Tensor, columns: slice | None = None) -> Tensor:
        wanted = self.perm.index_select(0, index)
        rows, inverse = wanted.unique(return_inverse=True)  # sources gather ascending rows
        return self.source.gather(rows, columns).index_select(0, inverse)

    def blocks(self, rows: int) -> Iterator[tuple[int, Tensor]]:
        for start in range(0, self.shape[0], rows):
            index = torch.arange(start, min(start + rows, self.shape[0]))
            yield start, self.gather(index)


@dataclass(frozen=True)
class ProductRows:
    """Rows of ``left @ right.T`` (e.g. ``P`` from image embeddings ``N x D`` and concept
    embeddings ``M x D``), computed block by block, never held whole."""

    left: RowSource
    right: Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return (self.left.shape[0], self.right.shape[0])

    def blocks(self, rows: int) -> Iterator[tuple[int, Tensor]]:
        for start, block in self.left.blocks(rows):
            yield start, block.to(self.right.dtype) @ self.right.T

    def gather(self, index: Tensor, columns: slice | None = None) -> Tensor:
        right = self.right if columns is None else self.right[columns]
        return self.left.gather(index).to(right.dtype) @ right.T


class RowWriter:
    """Appends row blocks of one matrix to a folder (``rows-NNNNN.safetensors`` and
    ``rows.json``), each file written atomically, so an interrupted writer leaves whole files.

    Example:
        >>> with RowWriter("cache/Q-layer3") as writer:  # doctest: +SKIP
        ...     for block in blocks:
        ...         writer.append(block)
        >>> FileRows("cache/Q-layer3").shape  # doctest: +SKIP
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.files: list[dict[str, Any]] = []
        self.rows = 0
        self.columns: int | None = None

    def append(self, block: Tensor) -> None:
        from safetensors.torch import save

        if block.dim() != 2:
            raise InputError(f"RowWriter: a block must be 2-D, got shape {tuple(block.shape)}")
        if self.columns is not None and block.shape[1] != self.columns:
            raise InputError(
                f"RowWriter: a block of {block.shape[1]} columns after blocks of {self.columns}"
            )
        self.columns = block.shape[1]
        name = f"rows-{len(self.files):05d}.safetensors"
        write_atomic(self.folder / name, save({"rows": block.detach().contiguous().cpu()}))
        self.files.append({"file": name, "start": self.rows, "rows": block.shape[0]})
        self.rows += block.shape[0]

    def close(self) -> None:
        index = {"rows": self.rows, "columns": self.columns, "files": self.files}
        write_atomic(self.folder / "rows.json", json.dumps(index, indent=1))

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()


class FileRows:
    """A row source over the files of a :class:`RowWriter`, read memory-mapped."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        index_file = self.folder / "rows.json"
        if not index_file.is_file():
            raise InputError(f"{self.folder}: no rows.json (not a finished RowWriter folder)")
        index = json.loads(index_file.read_text())
        self.files = index["files"]
        self._shape = (int(index["rows"]), int(index["columns"] or 0))
        self.starts = torch.tensor([f["start"] for f in self.files], dtype=torch.long)

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    def _read(self, i: int, lo: int, hi: int, columns: slice | None = None) -> Tensor:
        with safe_open(self.folder / self.files[i]["file"], framework="pt") as f:
            rows = f.get_slice("rows")
            return rows[lo:hi] if columns is None else rows[lo:hi, columns]

    def blocks(self, rows: int) -> Iterator[tuple[int, Tensor]]:
        for i, entry in enumerate(self.files):
            for lo in range(0, entry["rows"], rows):
                hi = min(lo + rows, entry["rows"])
                yield entry["start"] + lo, self._read(i, lo, hi)

    def gather(self, index: Tensor, columns: slice | None = None) -> Tensor:
        out: Tensor | None = None
        width = len(range(self.shape[1])[columns or slice(None)])
        which = torch.searchsorted(self.starts, index, right=True) - 1
        for i in which.unique().tolist():
            pick = (which == i).nonzero()[:, 0]
            local = index[pick] - self.files[i]["start"]
            lo, hi = int(local.min()), int(local.max()) + 1
            rows = self._read(i, lo, hi, columns).index_select(0, local - lo)
            if out is None:
                out = torch.empty(len(index), width, dtype=rows.dtype)
            out[pick] = rows
        return out if out is not None else torch.empty(0, width)
