"""Similarity over a probe set streamed in row blocks, from statistics that merge across shards.

The similarity functions of :mod:`discover.dissection.similarity` take the whole ``P``
(``N x M``) and ``Q`` (``N x K``). Here the same scores are computed from *row sources*,
which hand out the rows of ``P`` or ``Q`` block by block in probe order and gather rows by
image index, so that neither matrix need be held whole (:mod:`discover.dissection.rows`): an
in-memory tensor (:class:`TensorRows`) or row blocks saved as safetensors files and read
memory-mapped (:class:`FileRows`, written by :class:`RowWriter`).

What each function needs, and how it is computed here (exactly, not approximated):

* ``cos``: per unit and concept the sum of products ``sum_n q p``, and the column sums of
  squares: one pass. When ``P = V T^T`` comes from image and concept vectors
  (:class:`ProductRows`), ``cos`` and ``corr`` never form ``P``: the sums are
  ``(sum_n q v^T) T^T`` and ``T (sum_n v v^T) T^T``, ``N (K + D) D + K D M`` operations instead
  of ``N K M`` (the null draws of the significance profit most).
* ``corr`` and ``cos3``: the same sums over centred (``corr``) or centred and cubed
  (``cos3``) columns. The column means come first (pass 1, :class:`Scan`), the centred sums
  second (pass 2, :class:`Products`); both add up over blocks and shards.
* ``wpmi`` and ``soft_wpmi``: each unit's ``top_k`` images (pass 1 keeps a running top-k per
  unit, ties to the lower image index as in the in-memory functions), then the function
  itself on the rows of those images only. It reads ``P`` nowhere else (its row
  normalisers and the prior need only those rows and all units), so the scores are the
  in-memory ones. Memory: ``O(K top_k (M + K))`` for the gathered rows, whatever ``N``.
* ``rank_reorder``: the same with each unit's top ``floor(top_fraction N)`` images: its
  memory grows with ``top_fraction N`` (by definition it reads 5 % of the probe per unit).
* ``jsd``: each column's mean and population standard deviation (pass 1, merged with Chan's
  formula), each unit's and each concept's ``support_k`` top images, then the function one
  chunk of concepts at a time on the rows of the units' and the chunk's concepts' top
  images, z-scored with the whole probe's statistics (a concept's scores depend on its own
  column only). Memory: ``O((K + chunk) support_k (chunk + K))``, whatever ``N``.

A shard of the probe (its own image offset) runs pass 1 on its rows; :meth:`Scan.merge`
joins the shards' scans in any order to the scan of the whole probe, and
:meth:`Products.merge` does the same for pass 2. :meth:`Scan.state` /
:meth:`Scan.from_state` (and the same on :class:`Products`) turn them into tensors and back,
for shard files.

Example:
    >>> P, Q = torch.rand(500, 7), torch.randn(500, 4)
    >>> S = streamed_similarity("corr", TensorRows(P), TensorRows(Q), block_rows=64)
    >>> torch.allclose(S, get_similarity("corr")(P, Q), atol=1e-6)
    True
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from discover.dissection.rows import (
    PermutedRows,
    ProductRows,
    RowSource,
)
from discover.dissection.significance import (
    Significance,
    null_permutations,
    significance_from_null,
)
from discover.dissection.similarity import get_similarity
from discover.errors import InputError

__all__ = [
    "Scan",
    "Products",
    "scan",
    "STREAMED",
    "BLOCK_ROWS",
    "streamed_similarity",
    "streamed_significance",
    "column_stats",
]

BLOCK_ROWS = 4096
# the in-memory functions' defaults that the streamed ones need before calling them
_TOP_DEFAULTS = {"wpmi": 28, "soft_wpmi": 100}
_TRANSFORMS = {"cos": "raw", "corr": "centred", "cos3": "cubed"}
STREAMED = ("cos", "corr", "cos3", "wpmi", "soft_wpmi", "rank_reorder", "jsd")


# -- pass 1 -----------------------------------------------------------------------------------
def _top_merge(values: Tensor, index: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` best of every row of ``values`` ``[c, n]`` (descending, ties to the lower
    ``index``), with their indices."""
    index, order = index.sort(dim=1, stable=True)
    values = values.gather(1, order)
    values, order = values.sort(dim=1, descending=True, stable=True)
    return values[:, :k], index.gather(1, order)[:, :k]


@dataclass
class _Moments:
    """Count, mean and sum of squared deviations of every column (Chan's merge)."""

    n: int = 0
    mean: Tensor | None = None
    m2: Tensor | None = None

    def add(self, x: Tensor) -> None:
        x = x.double()
        b_n, b_mean = x.shape[0], x.mean(dim=0)
        b_m2 = (x - b_mean).square().sum(dim=0)
        self.join(_Moments(b_n, b_mean, b_m2))

    def join(self, other: _Moments) -> None:
        if other.n == 0:
            return
        if self.n == 0:
            self.n, self.mean, self.m2 = other.n, other.mean.clone(), other.m2.clone()
            return
        n = self.n + other.n
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.n / n)
        self.m2 = self.m2 + other.m2 + delta.square() * (self.n * other.n / n)
        self.n = n


@dataclass
class Scan:
    """Pass 1 over the probe: column moments of ``P`` and ``Q`` and running top images.

    ``top_units`` images are kept per unit (``0``: none), ``top_concepts`` per concept.
    """

    top_units: int = 0
    top_concepts: int = 0
    p: _Moments = field(default_factory=_Moments)
    q: _Moments = field(default_factory=_Moments)
    unit_values: Tensor | None = None  # [K, top] descending
    unit_index: Tensor | None = None
    concept_values: Tensor | None = None  # [M, top] descending
    concept_index: Tensor | None = None

    def update(self, start: int, P: Tensor | None, Q: Tensor) -> None:
        """Add the rows ``start ..`` of the probe (the same images in ``P`` and ``Q``;
        ``P`` ``None``: its moments and top images are not needed)."""
        if P is not None and P.shape[0] != Q.shape[0]:
            raise InputError(f"Scan: {P.shape[0]} rows of P with {Q.shape[0]} rows of Q")
        if P is None and self.top_concepts:
            raise InputError("Scan: the concepts' top images need the rows of P")
        if P is not None:
            self.p.add(P)
        self.q.add(Q)
        rows = torch.arange(start, start + Q.shape[0]).expand(Q.shape[1], -1)
        if self.top_units:
            self.unit_values, self.unit_index = self._keep(
                self.unit_values, self.unit_index, Q, rows, self.top_units
            )
        if self.top_concepts:
            rows = torch.arange(start, start + P.shape[0]).expand(P.shape[1], -1)
            self.concept_values, self.concept_index = self._keep(
                self.concept_values, self.concept_index, P, rows, self.top_concepts
            )

    @staticmethod
    def _keep(values: Tensor | None, index: Tensor | None, x: Tensor, rows: Tensor, k: int):
        new = x.T.add(0.0)  # -0.0 ranks as +0.0, as in the in-memory functions
        if values is not None:
            new = torch.cat([values, new], dim=1)
            rows = torch.cat([index, rows], dim=1)
        return _top_merge(new, rows, k)

    def merge(self, other: Scan) -> Scan:
        """The scan of both sets of rows (shards of one probe, any order)."""
        if (self.top_units, self.top_concepts) != (other.top_units, other.top_concepts):
            raise InputError("Scan.merge: scans of different settings (top images kept)")
        out = Scan(self.top_units, self.top_concepts)
        for mine, theirs, joined in ((self.p, other.p, out.p), (self.q, other.q, out.q)):
            joined.join(mine)
            joined.join(theirs)
        for attr, k in (("unit", self.top_units), ("concept", self.top_concepts)):
            parts = [
                (getattr(s, f"{attr}_values"), getattr(s, f"{attr}_index"))
                for s in (self, other)
                if getattr(s, f"{attr}_values") is not None
            ]
            if parts:
                values = torch.cat([v for v, _ in parts], dim=1)
                index = torch.cat([i for _, i in parts], dim=1)
                merged = _top_merge(values, index, k)
                setattr(out, f"{attr}_values", merged[0])
                setattr(out, f"{attr}_index", merged[1])
        return out

    @property
    def rows(self) -> int:
        return self.q.n

    def state(self) -> dict[str, Tensor]:
        """Tensors for a shard file (:meth:`from_state` reads them back)."""
        out = {"settings": torch.tensor([self.top_units, self.top_concepts, self.q.n, self.p.n])}
        for name, m in (("p", self.p), ("q", self.q)):
            if m.n:  # P is not read by every function
                out[f"{name}_mean"], out[f"{name}_m2"] = m.mean, m.m2
        for name in ("unit_values", "unit_index", "concept_values", "concept_index"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> Scan:
        top_units, top_concepts, n, n_p = (int(v) for v in state["settings"])
        scan = cls(top_units, top_concepts)
        scan.p = _Moments(n_p, state.get("p_mean"), state.get("p_m2"))
        scan.q = _Moments(n, state["q_mean"], state["q_m2"])
        for name in ("unit_values", "unit_index", "concept_values", "concept_index"):
            setattr(scan, name, state.get(name))
        return scan


# -- pass 2 -----------------------------------------------------------------------------------
def _transform(x: Tensor, kind: str, mean: Tensor) -> Tensor:
    x = x.double()
    if kind == "raw":
        return x
    x = x - mean
    return x.pow_(3) if kind == "cubed" else x


@dataclass
class Products:
    """Pass 2 of ``cos``, ``corr`` and ``cos3``: sums over images of products of the
    transformed columns (float64), given pass 1's means."""

    kind: str  # "raw" (cos), "centred" (corr) or "cubed" (cos3)
    qp: Tensor | None = None  # [K, M]
    qq: Tensor | None = None  # [K]
    pp: Tensor | None = None  # [M]

    def update(self, P: Tensor, Q: Tensor, scan: Scan) -> None:
        p = _transform(P, self.kind, scan.p.mean)
        q = _transform(Q, self.kind, scan.q.mean)
        qp, qq, pp = q.T @ p, q.square().sum(0), p.square().sum(0)
        if self.qp is None:
            self.qp, self.qq, self.pp = qp, qq, pp
        else:
            self.qp += qp
            self.qq += qq
            self.pp += pp

    def merge(self, other: Products) -> Products:
        if self.kind != other.kind:
            raise InputError(f"Products.merge: {self.kind!r} sums with {other.kind!r} sums")
        if self.qp is None or other.qp is None:
            return other if self.qp is None else self
        return Products(self.kind, self.qp + other.qp, self.qq + other.qq, self.pp + other.pp)

    def scores(self, min_norm: float, dtype: torch.dtype = torch.float32) -> Tensor:
        """``S[k, m] = qp / (max(|q|, min_norm) max(|p|, min_norm))``."""
        q_norm = self.qq.sqrt().clamp_min(min_norm)
        p_norm = self.pp.sqrt().clamp_min(min_norm)
        return (self.qp / q_norm[:, None] / p_norm[None, :]).to(dtype)

    def state(self) -> dict[str, Tensor]:
        return {"qp": self.qp, "qq": self.qq, "pp": self.pp}

    @classmethod
    def from_state(cls, kind: str, state: dict[str, Tensor]) -> Products:
        return cls(kind, state["qp"], state["qq"], state["pp"])


# -- the functions ------------------------------------------------------------------------------
def _paired_blocks(P: RowSource, Q: RowSource, rows: int) -> Iterator[tuple[int, Tensor, Tensor]]:
    """Blocks of the same images of ``P`` and ``Q``, cut where either source's blocks end
    (the sources may cut their blocks at different rows, e.g. shards)."""
    p_blocks, q_blocks = P.blocks(rows), Q.blocks(rows)
    p = q = None
    start = 0
    while True:
        if p is None or len(p) == 0:
            p = next((b for _, b in p_blocks), None)
        if q is None or len(q) == 0:
            q = next((b for _, b in q_blocks), None)
        if p is None or q is None:
            if p is not None or q is not None:
                raise InputError(f"P and Q have different numbers of rows (after row {start})")
            return
        n = min(len(p), len(q))
        yield start, p[:n], q[:n]
        start += n
        p, q = p[n:], q[n:]


def scan(
    P: RowSource, Q: RowSource, *, top_units: int = 0, top_concepts: int = 0,
    block_rows: int = BLOCK_ROWS, read_p: bool = True,
) -> Scan:  # fmt: skip
    """Pass 1 over every row of ``Q`` and (``read_p``, or the concepts' top images wanted)
    of ``P``."""
    if P.shape[0] != Q.shape[0]:
        raise InputError(f"P has {P.shape[0]} rows and Q {Q.shape[0]}: not the same images")
    result = Scan(min(top_units, P.shape[0]), min(top_concepts, P.shape[0]))
    if not read_p and not top_concepts:  # P's rows are not needed: Q alone
        for start, q in Q.blocks(block_rows):
            result.update(start, None, q)
        return result
    for start, p, q in _paired_blocks(P, Q, block_rows):
        result.update(start, p, q)
    return result


def _reads_p(name: str, P: RowSource) -> bool:
    """Whether pass 1 of ``name`` needs the rows of ``P`` (its column moments)."""
    return name in ("cos3", "jsd") or (name == "corr" and not isinstance(P, ProductRows))


def _top_count(name: str, params: dict[str, Any], n: int) -> tuple[int, int]:
    """(top images per unit, per concept) the function ``name`` reads."""
    if name in _TOP_DEFAULTS:
        return min(params.get("top_k", _TOP_DEFAULTS[name]), n), 0
    if name == "rank_reorder":
        return max(1, math.floor(params.get("top_fraction", 0.05) * n)), 0
    if name == "jsd":
        support, k = params.get("support", "union_topk"), min(params.get("support_k", 100), n)
        if support == "all":
            raise InputError("streamed jsd: support='all' reads every image; stream 'union_topk'")
        return k, (k if support == "union_topk" else 0)
    return 0, 0


def streamed_similarity(
    name: str,
    P: RowSource,
    Q: RowSource,
    *,
    block_rows: int = BLOCK_ROWS,
    scan_result: Scan | None = None,
    info: dict[str, Any] | None = None,
    **params: Any,
) -> Tensor:
    """``get_similarity(name)(P, Q, **params)`` from row sources, one row block at a time.

    ``scan_result``: pass 1 already done (e.g. merged from shards); it must keep at least the
    top images the function reads. Scores equal the in-memory function's: exactly for
    ``wpmi``, ``soft_wpmi`` and ``rank_reorder`` (the same arithmetic on the same rows),
    to float32 rounding for ``cos``, ``corr``, ``cos3`` (float64 sums) and ``jsd`` (the
    z-scores come from merged moments).

    Example:
        >>> S = streamed_similarity("soft_wpmi", TensorRows(P), TensorRows(Q))  # doctest: +SKIP
    """
    if name not in STREAMED:
        raise InputError(f"streamed_similarity: {name!r} is not streamed; streamed: {STREAMED}")
    top_units, top_concepts = _top_count(name, params, P.shape[0])
    result = _checked_scan(name, P, Q, scan_result, top_units, top_concepts, block_rows)
    if name in ("cos", "corr") and isinstance(P, ProductRows):
        min_norm = params.get("min_norm", 1e-12)
        S = _factored(name, P, Q, block_rows, min_norm)
        _summary(info, name, P, Q, result, compute_dtype="float32", min_norm=min_norm,
                 factored=True)  # fmt: skip
        return S
    if name in _TRANSFORMS:
        return _summed(name, P, Q, result, block_rows, params, info)
    # the functions that read only some images: their rows, then the function itself
    fn = get_similarity(name)
    if name == "jsd":
        return _streamed_jsd(fn, P, Q, result, top_units, top_concepts, info, params)
    rows = result.unit_index[:, :top_units].reshape(-1).unique()  # ascending: ties as before
    P_rows, Q_rows = P.gather(rows), Q.gather(rows)
    if name == "rank_reorder":  # the n of the whole probe, not of the gathered rows
        params = {**params, "top_n": top_units}
    S = fn(P_rows, Q_rows, **params, info=info)
    if info is not None:  # the function saw the gathered rows; the probe has N
        info.update(num_images=P.shape[0], rows_read=len(rows))
    return S


def _checked_scan(
    name: str, P: RowSource, Q: RowSource, scan_result: Scan | None, top_units: int,
    top_concepts: int, block_rows: int,
) -> Scan:  # fmt: skip
    """Pass 1 for ``name`` (or ``scan_result``, checked to cover what ``name`` reads)."""
    N = P.shape[0]
    result = scan_result or scan(
        P, Q, top_units=top_units, top_concepts=top_concepts, block_rows=block_rows,
        read_p=_reads_p(name, P),
    )  # fmt: skip
    if _reads_p(name, P) and result.p.n != N:
        raise InputError(f"streamed {name}: the scan did not read the rows of P")
    if result.rows != N:
        raise InputError(f"the scan covers {result.rows} images, the sources {N}")
    if result.top_units < top_units or result.top_concepts < top_concepts:
        raise InputError(
            f"streamed {name}: the scan kept {result.top_units} images per unit and "
            f"{result.top_concepts} per concept; it needs {top_units} and {top_concepts}"
        )
    return result


def _summary(
    info: dict[str, Any] | None, name: str, P: RowSource, Q: RowSource, result: Scan,
    **params: Any,
) -> None:  # fmt: skip
    """The in-memory functions' ``info`` of a streamed ``cos``, ``corr`` or ``cos3``."""
    if info is None:
        return
    dead = (result.q.mean == 0) & (result.q.m2 == 0)
    info.update(
        similarity=name, num_images=P.shape[0], num_concepts=P.shape[1], num_neurons=Q.shape[1],
        num_dead_neurons=int(dead.sum()), **params,
    )  # fmt: skip


def _summed(
    name: str, P: RowSource, Q: RowSource, result: Scan, block_rows: int,
    params: dict[str, Any], info: dict[str, Any] | None,
) -> Tensor:  # fmt: skip
    """``cos``, ``corr`` or ``cos3`` from pass 2's sums over every row block."""
    sums = Products(_TRANSFORMS[name])
    dtype = torch.float32
    for _, p, q in _paired_blocks(P, Q, block_rows):
        sums.update(p, q, result)
        if torch.float64 in (p.dtype, q.dtype):
            dtype = torch.float64
    min_norm = params.get("min_norm", 1e-3 if name == "cos3" else 1e-12)
    _summary(info, name, P, Q, result, compute_dtype=str(dtype).removeprefix("torch."),
             min_norm=min_norm)  # fmt: skip
    return sums.scores(min_norm, dtype)


def _factored(name: str, P: ProductRows, Q: RowSource, block_rows: int, min_norm: float) -> Tensor:
    """``cos`` or ``corr`` of ``Q`` with ``P = V T^T`` without forming ``P``: the sums over
    images of ``q v^T``, ``v v^T``, ``v`` and ``q`` (one pass, ``N (K + D) D``), then the
    concepts' ``T`` (``K D M``), all in float64."""
    qv = vv = sv = sq = sqq = None
    n = 0
    for _, v, q in _paired_blocks(P.left, Q, block_rows):
        v, q = v.double(), q.double()
        parts = (q.T @ v, v.T @ v, v.sum(0), q.sum(0), q.square().sum(0))
        if qv is None:
            qv, vv, sv, sq, sqq = parts
        else:
            for total, part in zip((qv, vv, sv, sq, sqq), parts, strict=True):
                total += part
        n += len(q)
    T = P.right.double()
    qp, sp = qv @ T.T, T @ sv
    spp = ((T @ vv) * T).sum(1)
    if name == "corr":  # centred sums: subtract the product of the means
        qp = qp - sq[:, None] * (sp[None, :] / n)
        sqq = sqq - sq.square() / n
        spp = spp - sp.square() / n
    q_norm = sqq.clamp_min(0).sqrt().clamp_min(min_norm)
    p_norm = spp.clamp_min(0).sqrt().clamp_min(min_norm)
    return (qp / q_norm[:, None] / p_norm[None, :]).float()


JSD_CONCEPTS = 256  # concepts per chunk of a streamed jsd


def _streamed_jsd(
    fn: Any, P: RowSource, Q: RowSource, result: Scan, top_units: int, top_concepts: int,
    info: dict[str, Any] | None, params: dict[str, Any],
) -> Tensor:  # fmt: skip
    """``jsd`` one chunk of concepts at a time, on the rows of the units' top images and of
    the chunk's concepts' top images, z-scored with the whole probe's moments: a concept's
    scores depend on its own column only, so each chunk's are the in-memory ones, and memory
    is ``O((K + chunk) support_k (chunk + K))`` whatever ``N``."""
    asked, params = params, dict(params)
    min_std = params.get("min_std", 1e-12)
    zscore = {key: params.get(key, "zscore") == "zscore" for key in ("transform_p", "transform_q")}
    params.update({key: "identity" for key, z in zscore.items() if z})

    def standard(x: Tensor, m: _Moments, columns: slice) -> Tensor:
        std = (m.m2[columns] / m.n).sqrt().clamp_min(min_std)
        return ((x.double() - m.mean[columns]) / std).to(x.dtype)

    unit_rows = result.unit_index[:, :top_units].reshape(-1)
    K, M = Q.shape[1], P.shape[1]
    out: Tensor | None = None
    read = 0
    for start in range(0, M, JSD_CONCEPTS):
        cs = slice(start, min(start + JSD_CONCEPTS, M))
        parts = [unit_rows]
        if top_concepts:
            parts.append(result.concept_index[cs, :top_concepts].reshape(-1))
        rows = torch.cat(parts).unique()  # ascending: ties still go to the lower image
        P_rows, Q_rows = P.gather(rows, cs), Q.gather(rows)
        if zscore["transform_p"]:
            P_rows = standard(P_rows, result.p, cs)
        if zscore["transform_q"]:
            Q_rows = standard(Q_rows, result.q, slice(None))
        chunk_info: dict[str, Any] | None = {} if info is not None and start == 0 else None
        S = fn(P_rows, Q_rows, **params, info=chunk_info)
        if out is None:
            out = torch.empty(K, M, dtype=S.dtype)
        out[:, cs] = S
        read = max(read, len(rows))
        if chunk_info is not None:
            info.update(chunk_info)
    assert out is not None
    if info is not None:  # the definition asked for: z-scored with all images' statistics
        info["definition"].update({key: asked.get(key, "zscore") for key in zscore})
        info.update(num_images=P.shape[0], num_concepts=M, rows_read=read)
    return out


def streamed_significance(
    name: str,
    P: RowSource,
    Q: RowSource,
    best: Tensor,
    *,
    repeats: int = 16,
    seed: int = 0,
    block_rows: int = BLOCK_ROWS,
    **params: Any,
) -> Significance:
    """:func:`~discover.dissection.significance.label_significance` from row sources: each
    null draw scores ``P`` against the images of ``Q`` shuffled by the same seeded
    permutations, with :func:`streamed_similarity`.

    Example:
        >>> sig = streamed_significance("corr", TensorRows(P), TensorRows(Q), best)  # doctest: +SKIP
    """
    if repeats < 2:
        raise InputError(f"repeats must be >= 2 (a spread needs two draws), got {repeats}")
    null = torch.empty(repeats, Q.shape[1], dtype=torch.float64)
    for r, perm in enumerate(null_permutations(Q.shape[0], repeats, seed)):
        S = streamed_similarity(name, P, PermutedRows(Q, perm), block_rows=block_rows, **params)
        null[r] = S.amax(dim=1).double()
    return significance_from_null(null, best)


def column_stats(source: RowSource, block_rows: int = BLOCK_ROWS) -> tuple[Tensor, Tensor]:
    """Mean and population standard deviation of every column, in one pass (float32); of
    ``P = V T^T`` (:class:`ProductRows`) from the mean and covariance of the rows of ``V``,
    without forming ``P``."""
    if isinstance(source, ProductRows):
        n, total, outer = 0, None, None
        for _, v in source.left.blocks(block_rows):
            v = v.double()
            parts = (v.sum(0), v.T @ v)
            total, outer = parts if total is None else (total + parts[0], outer + parts[1])
            n += len(v)
        if not n:
            raise InputError("column_stats: the source has no rows")
        mean_v = total / n
        cov = outer / n - torch.outer(mean_v, mean_v)
        T = source.right.double()
        var = ((T @ cov) * T).sum(1).clamp_min(0)
        return (T @ mean_v).float(), var.sqrt().float()
    moments = _Moments()
    for _, block in source.blocks(block_rows):
        moments.add(block)
    if moments.n == 0:
        raise InputError("column_stats: the source has no rows")
    return moments.mean.float(), (moments.m2 / moments.n).sqrt().float()
