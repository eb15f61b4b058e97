"""Similarity functions that match neuron activations to concept activations.

Notation follows ``method.md`` §6-7 of the project docs: ``P`` (``concept_acts``) is the
``N x M`` matrix of image-concept scores (CLIP cosines), ``Q`` (``neuron_acts``) the
``N x K`` matrix of unit activations on the same ``N`` probe images. Every function returns
``S``, a ``K x M`` matrix in which a higher value means a better match, and the description
of unit ``k`` is concept ``argmax_m S[k, m]``.

Conventions shared by all built-in functions:

* **dtype / device.** Inputs may be any floating dtype. The computation runs on the inputs'
  device in ``float64`` if either input is ``float64`` and in ``float32`` otherwise, and the
  result has that dtype. Inputs are never modified.
* **Memory.** Work is chunked over neurons (``chunk_size``) and concepts
  (``concept_chunk_size``); ``P`` is never copied or transformed as a whole. Each docstring
  states the size of the largest temporary. The result itself is ``K x M``.
* **Top-k images** of a unit are the rows with the largest *signed* activations (the
  reference behaviour), ties broken by the lower image index. A ``top_k`` larger than ``N``
  is clamped to ``N`` with a warning.
* **Dead units** (an all-zero column of ``Q``, e.g. an LWTA unit that never wins) never
  produce NaN or Inf: they get finite, uninformative scores. Count them with
  ``info["num_dead_neurons"]`` and mark them as inactive rather than trusting their label.
* **info.** Pass a dict as ``info`` to receive the effective parameters (after clamping) and
  input summary, for the run metadata.

Example:
    >>> import torch
    >>> from discover.dissection.similarity import get_similarity
    >>> P, Q = torch.rand(200, 5), torch.randn(200, 3)
    >>> info = {}
    >>> S = get_similarity("soft_wpmi")(P, Q, info=info)
    >>> S.shape, info["top_k"]
    (torch.Size([3, 5]), 100)
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from discover._utils import Registry, check_options
from discover.dissection import similarity_kernel
from discover.errors import InputError

__all__ = [
    "SIMILARITIES",
    "DEFAULT_SIMILARITY",
    "PAPER_SIMILARITY",
    "SimilarityFn",
    "register_similarity",
    "get_similarity",
    "nest_similarity_params",
    "cos",
    "cos3",
    "corr",
    "wpmi",
    "soft_wpmi",
    "rank_reorder",
    "jsd",
    "jsd_definition",
]

SimilarityFn = Callable[..., Tensor]
"""``(concept_acts [N, M], neuron_acts [N, K], **params) -> scores [K, M]``."""

SIMILARITIES: Registry[SimilarityFn] = Registry("similarity")
DEFAULT_SIMILARITY = "jsd"
"""The default for vision-language embedders (``LABEL_DEFAULTS["vlm"]``), chosen by
``benchmarks/label_quality.py`` on a validation split with the Shapes CLIP standing in for
CLIP; ground-truth annotations default to ``corr``
(:data:`discover.dissection.labels.LABEL_DEFAULTS`)."""
PAPER_SIMILARITY = "soft_wpmi"
"""The paper's (and CLIP-Dissect's) function: ``--similarity soft_wpmi``. It ties a unit's
true concept with corrupted copies of it (``benchmarks/results/similarity-sanity.md``) and
labelled about half as many units correctly as the defaults in ``label_quality.md``."""

Transform = Literal["identity", "zscore"]
Support = Literal["all", "neuron_topk", "union_topk"]

_LN2 = math.log(2.0)
_JSD_BLOCK = 2**20  # support entries per (neuron, concept, image) block in ``jsd``


def register_similarity(name: str) -> Callable[[SimilarityFn], SimilarityFn]:
    """Decorator adding a similarity function to :data:`SIMILARITIES` under ``name``.

    Raises:
        ValueError: if ``name`` is already registered.

    Example:
        >>> @register_similarity("neg_l2")  # doctest: +SKIP
        ... def neg_l2(concept_acts, neuron_acts, **params):
        ...     return -torch.cdist(neuron_acts.T, concept_acts.T)
    """

    return SIMILARITIES.register(name)


def get_similarity(name: str) -> SimilarityFn:
    """Look up a registered similarity function by name.

    Raises:
        ValueError: for an unknown name, listing close matches and all registered names.

    Example:
        >>> get_similarity("cos3").__name__
        'cos3'
    """
    return SIMILARITIES.get(name)


def nest_similarity_params(options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Options for several similarity functions, one flat mapping of ``SIMILARITY.OPTION``
    keys, grouped by similarity as ``similarity_params`` expects them (e.g.
    :class:`~discover.evaluation.planted.PlantedConfig`), and checked against each
    function's signature before anything runs.

    Raises:
        ValueError: naming ``similarity_params``: a key that is not ``SIMILARITY.OPTION``, an
            unknown similarity, an option the function does not take, or a value of the
            wrong type.

    Example:
        >>> nest_similarity_params({"soft_wpmi.top_k": 50, "cos3.min_norm": 1e-6})
        {'soft_wpmi': {'top_k': 50}, 'cos3': {'min_norm': 1e-06}}
        >>> nest_similarity_params({"top_k": 50})
        Traceback (most recent call last):
        ValueError: similarity_params: expected SIMILARITY.OPTION keys (e.g. soft_wpmi.top_k), got 'top_k'
    """
    nested: dict[str, dict[str, Any]] = {}
    for key, value in options.items():
        name, dot, option = str(key).partition(".")
        if not (name and dot and option):
            raise InputError(
                "similarity_params: expected SIMILARITY.OPTION keys (e.g. soft_wpmi.top_k), "
                f"got {key!r}"
            )
        nested.setdefault(name, {})[option] = value
    for name, params in nested.items():
        try:
            fn = get_similarity(name)
        except ValueError as error:
            raise InputError(f"similarity_params: {error}") from None
        check_options(fn, params, f"similarity_params: similarity {name!r}")
    return nested


# --------------------------------------------------------------------------- helpers


def _prepare(concept_acts: Tensor, neuron_acts: Tensor) -> torch.dtype:
    """Validate ``P`` and ``Q``; return the compute dtype."""
    for arg, x in (("concept_acts", concept_acts), ("neuron_acts", neuron_acts)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{arg} must be a torch.Tensor, got {type(x).__name__}")
    P, Q = concept_acts, neuron_acts
    if P.dim() != 2 or Q.dim() != 2 or P.shape[0] != Q.shape[0]:
        raise InputError(
            "expected concept_acts [N, M] and neuron_acts [N, K] with the same N, got "
            f"concept_acts {tuple(P.shape)} and neuron_acts {tuple(Q.shape)}"
        )
    if 0 in P.shape or 0 in Q.shape:
        raise InputError(
            "need at least one image, concept and neuron, got "
            f"concept_acts {tuple(P.shape)} and neuron_acts {tuple(Q.shape)}"
        )
    if P.device != Q.device:
        raise InputError(f"inputs are on different devices: {P.device} and {Q.device}")
    return torch.float64 if torch.float64 in (P.dtype, Q.dtype) else torch.float32


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    return value


def _clamped(name: str, value: int, num_images: int) -> int:
    """Clamp a number of top images to ``num_images``, warning when it changes."""
    if value > num_images:
        warnings.warn(
            f"{name}={value} exceeds the number of probe images N={num_images}; "
            f"using {name}={num_images}",
            stacklevel=4,
        )
        return num_images
    return value


def _slices(total: int, size: int) -> Iterator[slice]:
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def _packed_sort(rows: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Sort every row of a contiguous CPU ``float32`` ``[r, N]`` tensor (ascending) as 64-bit
    integer keys.

    Each key packs the order-preserving integer image of a float (``-0.0`` as ``+0.0``)
    above the column index, so ties keep index order (a
    stable sort) and numpy's SIMD integer sort does the work, several times faster than a
    float argsort. Returns the sorted integer images and the column order, each ``[r, N]``.
    """
    shift = max(1, (rows.shape[1] - 1).bit_length())
    keys = np.add(rows.numpy(), np.float32(0.0)).view(np.int32).astype(np.int64)  # -0.0 -> 0.0
    flip = keys >> 63  # all ones where negative: flip the magnitude bits there
    flip &= 0x7FFFFFFF
    keys ^= flip
    keys <<= shift
    keys |= np.arange(rows.shape[1], dtype=np.int64)
    keys.sort(axis=1)
    order = keys & ((1 << shift) - 1)
    keys >>= shift
    return keys, order


def _packable(x: Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.float32 and x.shape[-1] < 2**31


def _top_images(x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-``k`` rows of every column of ``x`` ``[N, c]``: values and indices, each ``[c, k]``.

    Descending order, ties broken by the lower row index (the order of a stable sort, with
    ``-0.0`` equal to ``+0.0``). ``torch.topk`` finds each column's ``k + 1`` largest in one
    pass; only the columns whose ``k``-th value also occurs outside the top ``k`` (ties at the
    boundary, such as the zeros of a rarely active ReLU unit) are sorted whole.
    """
    rows = torch.empty(x.shape[::-1], dtype=x.dtype, device=x.device).copy_(x.T).add_(0.0)
    values, indices = torch.topk(rows, min(k + 1, rows.shape[1]), dim=1)
    # a tie at the boundary: the (k+1)-th largest equals the k-th (none when k = N)
    spill = (values[:, k] == values[:, k - 1]) if values.shape[1] > k else None
    values, indices = values[:, :k], indices[:, :k]
    indices, perm = indices.sort(dim=1)  # by index, then stably by value: a stable sort's order
    values, perm = values.gather(1, perm).sort(dim=1, descending=True, stable=True)
    indices = indices.gather(1, perm)
    if spill is not None and bool(spill.any()):
        which = spill.nonzero()[:, 0]
        full, order = torch.sort(rows[which], dim=1, descending=True, stable=True)
        values[which], indices[which] = full[:, :k], order[:, :k]
    return values, indices


def _fill_info(
    info: dict[str, Any] | None,
    name: str,
    P: Tensor,
    Q: Tensor,
    dtype: torch.dtype,
    **params: Any,
) -> None:
    if info is None:
        return
    info.update(
        similarity=name,
        num_images=P.shape[0],
        num_concepts=P.shape[1],
        num_neurons=Q.shape[1],
        num_dead_neurons=int((Q.count_nonzero(dim=0) == 0).sum()),
        compute_dtype=str(dtype).removeprefix("torch."),
        **params,
    )


def _column_norms(x: Tensor, rows: int | None = None) -> Tensor:
    """L2 norm of every column of ``x`` ``[N, c]``, accumulated over blocks of ``rows`` rows.

    Much faster than ``vector_norm(x, dim=0)``, which reduces across rows one column at a time.
    Default blocks hold about ``2**23`` entries: few parallel regions, one reused buffer.
    """
    rows = rows or max(1, _BLOCK // max(1, x.shape[1]))
    total = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
    square = torch.empty(min(rows, x.shape[0]), x.shape[1], dtype=x.dtype, device=x.device)
    for rs in _slices(x.shape[0], rows):
        total += torch.mul(x[rs], x[rs], out=square[: rs.stop - rs.start]).sum(dim=0)
    return total.sqrt_()


# --------------------------------------------------------------------------- cosine


@register_similarity("cos")
@torch.no_grad()
def cos(
    concept_acts: Tensor,
    neuron_acts: Tensor,
    *,
    min_norm: float = 1e-12,
    chunk_size: int = 1024,
    concept_chunk_size: int = 1024,
    info: dict[str, Any] | None = None,
) -> Tensor:
    """Cosine similarity of uncentred columns (CLIP-Dissect ``cos``), ``method.md`` §7.1.

    ``S[k, m] = <Q[:, k], P[:, m]> / (max(||Q[:, k]||, min_norm) * max(||P[:, m]||, min_norm))``

    The reference has no ``min_norm`` and returns NaN for an all-zero column; here such a
    unit scores 0 against every concept. ``min_norm`` is tiny so that it changes nothing else.
    ``P`` is read one chunk of ``concept_chunk_size`` concepts at a time (no copy when it has
    the compute dtype, else a cast of the chunk): the chunk's norms, then one GEMM per
    ``chunk_size`` units straight into the output, divided by those norms while the block is
    in cache (``benchmarks/dissect_speed.py`` times it against a bare matmul). Largest
    temporaries: ``N x K`` (the normalised ``Q``) and, for a
    cast, ``N x concept_chunk_size``.

    Example:
        >>> P = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> cos(P, torch.tensor([[2.0], [2.0]]))
        tensor([[0.7071, 0.7071]])
    """
    dtype = _prepare(concept_acts, neuron_acts)
    P, Q = concept_acts, neuron_acts
    chunk_size = _positive_int("chunk_size", chunk_size)
    concept_chunk_size = _positive_int("concept_chunk_size", concept_chunk_size)
    (_, M), K = P.shape, Q.shape[1]
    q = Q.to(dtype)
    q = q / _column_norms(q).clamp_min_(min_norm)
    out = torch.empty(K, M, dtype=dtype, device=P.device)
    for cs in _slices(M, concept_chunk_size):
        p = P[:, cs].to(dtype)  # a view when P has the compute dtype
        p_norm = _column_norms(p).clamp_min_(min_norm)
        for ks in _slices(K, chunk_size):
            block = out[ks, cs]  # BLAS writes the slice in place (beta 0 ignores its contents)
            torch.addmm(block, q[:, ks].T, p, beta=0.0, out=block).div_(p_norm)
    _fill_info(info, "cos", P, Q, dtype, min_norm=min_norm)
    return out


def _centred_cubed_unit(x: Tensor, min_norm: float) -> Tensor:
    """``(x - mean)^3`` per column, divided by ``max(||.||_2, min_norm)``; a new tensor."""
    x = x - x.mean(dim=0, keepdim=True)
    x.pow_(3)
    return x.div_(_column_norms(x).clamp_min_(min_norm))


@register_similarity("cos3")
@torch.no_grad()
def cos3(
    concept_acts: Tensor,
    neuron_acts: Tensor,
    *,
    min_norm: float = 1e-3,
    chunk_size: int = 1024,
    concept_chunk_size: int = 1024,
    info: dict[str, Any] | None = None,
) -> Tensor:
    """Cosine of centred, cubed columns (CLIP-Dissect ``cos_similarity_cubed``), §7.2.

    ``X' = (X - mean_n X)^3`` column-wise for ``X`` in ``P, Q``;
    ``S[k, m] = <Q'[:, k], P'[:, m]> / (max(||Q'[:, k]||, min_norm) * max(||P'[:, m]||, min_norm))``

    Cubing emphasises the most activating images. A constant (e.g. dead) unit scores 0.
    ``Q'`` is computed once; each chunk of ``P'`` is written into one reused
    ``N x concept_chunk_size`` buffer (on a CPU in float32 by the C kernel of
    :mod:`discover.dissection.similarity_kernel`: two passes over the chunk instead of four;
    1,024 concepts at a time by default, which timed faster than 2,048 at N = 10k on a
    2-core EPYC with 32 MB of L3), multiplied by ``chunk_size`` units at a time straight
    into the output, and divided by the chunk's norms. Largest temporaries: that buffer and ``N x K``.

    Example:
        >>> P = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
        >>> cos3(P, P[:, :1]).argmax(dim=1)
        tensor([0])
    """
    dtype = _prepare(concept_acts, neuron_acts)
    P, Q = concept_acts, neuron_acts
    chunk_size = _positive_int("chunk_size", chunk_size)
    concept_chunk_size = _positive_int("concept_chunk_size", concept_chunk_size)
    (_, M), K = P.shape, Q.shape[1]
    q = _centred_cubed_unit(Q.to(dtype), min_norm)
    out = torch.empty(K, M, dtype=dtype, device=P.device)
    width = min(M, concept_chunk_size)
    buffer = torch.empty(P.shape[0] * width, dtype=dtype, device=P.device)
    fused = P.dtype == dtype == torch.float32 and P.device.type == "cpu"
    fused = fused and P.stride(1) == 1 and similarity_kernel.available()
    for cs in _slices(M, concept_chunk_size):
        p = buffer[: P.shape[0] * (cs.stop - cs.start)].view(P.shape[0], -1)
        if fused:  # two passes: column means, then centre, cube and square together
            p_norm = similarity_kernel.centred_cubes(P[:, cs], p).sqrt_().clamp_min_(min_norm)
        else:
            x = P[:, cs].to(dtype)
            p = torch.sub(x, x.mean(dim=0), out=p).pow_(3)
            p_norm = _column_norms(p).clamp_min_(min_norm)
        for ks in _slices(K, chunk_size):
            block = out[ks, cs]  # BLAS writes the slice in place (beta 0 ignores its contents)
            torch.addmm(block, q[:, ks].T, p, beta=0.0, out=block).div_(p_norm)
    _fill_info(info, "cos3", P, Q, dtype, min_norm=min_norm)
    return out


@register_similarity("corr")
@torch.no_grad()
def corr(
    concept_acts: Tensor,
    neuron_acts: Tensor,
    *,
    min_norm: float = 1e-12,
    chunk_size: int = 1024,
    concept_chunk_size: int = 1024,
    info: dict[str, Any] | None = None,
) -> Tensor:
    """Pearson correlation over the probe images: the cosine of centred columns.

    ``X' = X - mean_n X`` column-wise for ``X`` in ``P, Q``;
    ``S[k, m] = <Q'[:, k], P'[:, m]> / (max(||Q'[:, k]||, min_norm) * max(||P'[:, m]||, min_norm))``

    Not one of CLIP-Dissect's functions. It is ``cos`` after removing each column's mean.
    A vision-language model's cosines share a large offset (every image scores about 0.2-0.3
    with every phrase), so uncentred ``cos`` mostly measures that offset. Pearson correlation
    passes both label sanity tests (Neuron_Eval, ICML 2025). Values lie in ``[-1, 1]``. A
    constant (e.g. dead) unit or concept scores 0. ``Q'`` is computed once, and each chunk
    of ``P'`` is centred into one reused ``N x concept_chunk_size`` buffer. Largest
    temporaries: that buffer and ``N x K``.

    Example:
        >>> P = torch.tensor([[0.3, 0.2], [0.2, 0.3], [0.3, 0.2]])
        >>> corr(P, torch.tensor([[1.0], [0.0], [1.0]]))
        tensor([[ 1., -1.]])
    """
    dtype = _prepare(concept_acts, neuron_acts)
    P, Q = concept_acts, neuron_acts
    chunk_size = _positive_int("chunk_size", chunk_size)
    concept_chunk_size = _positive_int("concept_chunk_size", concept_chunk_size)
    (N, M), K = P.shape, Q.shape[1]
    q = Q.to(dtype)
    q = q - q.mean(dim=0, keepdim=True)
    q.div_(_column_norms(q).clamp_min_(min_norm))
    out = torch.empty(K, M, dtype=dtype, device=P.device)
    buffer = torch.empty(N * min(M, concept_chunk_size), dtype=dtype, device=P.device)
    for cs in _slices(M, concept_chunk_size):
        x = P[:, cs].to(dtype)
        p = torch.sub(x, x.mean(dim=0), out=buffer[: x.numel()].view(x.shape))
        p_norm = _column_norms(p).clamp_min_(min_norm)
        for ks in _slices(K, chunk_size):
            block = out[ks, cs]  # BLAS writes the slice in place (beta 0 ignores its contents)
            torch.addmm(block, q[:, ks].T, p, beta=0.0, out=block).div_(p_norm)
    _fill_info(info, "corr", P, Q, dtype, min_norm=min_norm)
    return out


# --------------------------------------------------------------------------- WPMI


_SOFT_CONCEPT_BLOCK = 1024  # concepts per gathered block in soft WPMI
_SOFT_MAX_GROUP = 8  # soft-WPMI evidence terms multiplied together before one log
_RANK_ROWS = 16  # rows per block in _min_ranks
_BLOCK = 2**23  # entries per row block of column norms and WPMI row normalisers


def _product_group(inclusion: Tensor, min_prob: float, dtype: torch.dtype) -> int:
    """How many soft-WPMI terms can be multiplied before taking one log, without underflow.

    Each term is ``p_j x + (1 - p_j) + min_prob`` with ``x`` in ``[0, 1]``, so it lies in
    ``[1 - p_j + min_prob, 1 + min_prob]`` when ``0 <= p_j <= 1``; the product of ``g`` terms
    stays a normal float when the smallest term to the power ``g`` does. Other ``p_j`` get 1.
    """
    p_min, p_max = float(inclusion.min()), float(inclusion.max())
    floor = 1.0 - p_max + min_prob
    if p_min < 0.0 or p_max > 1.0 or floor <= 0.0:
        return 1
    if floor >= 1.0:
        return _SOFT_MAX_GROUP
    safe = math.log(torch.finfo(dtype).tiny) + 20 * _LN2  # 2**20 above the smallest normal
    return max(1, min(_SOFT_MAX_GROUP, int(safe / math.log(floor))))


def _rows_of(P: Tensor, rows: Tensor, dtype: torch.dtype, out: Tensor) -> Tensor:
    """``P[rows]`` in ``dtype``, written into ``out`` (contiguous)."""
    if P.dtype == dtype:
        return torch.index_select(P, 0, rows, out=out)
    return out.copy_(P.index_select(0, rows))


def _row_logsumexp(P: Tensor, rows: Tensor, a: float, dtype: torch.dtype) -> Tensor:
    """``logsumexp_m(a P[n, m])`` for the images ``rows``, in cache-sized row blocks."""
    lse = torch.empty(len(rows), dtype=dtype, device=P.device)
    block = max(1, min(len(rows), _BLOCK // P.shape[1]))
    buffer = torch.empty(block * P.shape[1], dtype=dtype, device=P.device)
    for rs in _slices(len(rows), block):
        x = _rows_of(
            P, rows[rs], dtype, buffer[: (rs.stop - rs.start) * P.shape[1]].view(-1, P.shape[1])
        )
        x.mul_(a)
        top = x.amax(dim=1, keepdim=True)
        lse[rs] = x.sub_(top).exp_().sum(dim=1).log_().add_(top[:, 0])
    return lse


def _pmi(
    P: Tensor,
    Q: Tensor,
    dtype: torch.dtype,
    *,
    top_k: int,
    a: float,
    lam: float,
    min_prob: float,
    inclusion: Tensor | None,
    chunk_size: int,
    concept_chunk_size: int,
) -> Tensor:
    """Shared WPMI core: ``L[k, m]`` from the top-k rows of ``softmax(a P)``, minus the prior.

    ``softmax(a P)`` is only ever computed on the *union* of the units' top images (units
    share many): row normalisers ``logsumexp_m(a P[n, m])`` first, in cache-sized row
    blocks, then ``P~`` one concept chunk at a time in one reused buffer. Soft WPMI's terms
    depend on the rank ``j`` through ``inclusion`` (its ``p_j``; ``None`` for WPMI, which is
    the case ``p_j = 1``). On a CPU in float32 the C kernel
    (:mod:`discover.dissection.similarity_kernel`) sums the terms of both in one pass per
    unit, multiplying a few terms before each log (see :func:`_product_group`): for WPMI's
    28 terms 7 logs instead of 28. Elsewhere soft WPMI gathers its terms per unit chunk in
    the same groups, and WPMI sums ``log(P~ + min_prob)`` with one ``embedding_bag``. The
    prior of a concept chunk is taken as soon as its ``L`` is
    complete.
    """
    (_, M), K = P.shape, Q.shape[1]
    top = torch.cat([_top_images(Q[:, ks], top_k)[1] for ks in _slices(K, chunk_size)])
    rows, local = torch.unique(top, return_inverse=True)  # local: [K, top_k] into rows
    lse = _row_logsumexp(P, rows, a, dtype).unsqueeze(1)
    kernel = dtype == torch.float32 and P.device.type == "cpu" and similarity_kernel.available()
    if inclusion is None and kernel:  # WPMI is soft WPMI with every p_j = 1: the kernel sums it
        inclusion = torch.ones(1, top_k, 1, dtype=dtype, device=P.device)
    fused = inclusion is not None and kernel
    if inclusion is not None:
        group = _product_group(inclusion, min_prob, dtype)
        pad = -top_k % group  # padded terms are 0 * x + 1 = 1
        scale = torch.nn.functional.pad(inclusion.view(top_k, 1), (0, 0, 0, pad))
        shift = torch.nn.functional.pad(
            (1.0 - inclusion + min_prob).view(top_k, 1), (0, 0, 0, pad), value=1.0
        )
    if fused:  # the kernel takes the unpadded ranks and forms the same groups
        local_k = local.contiguous()
        scale_k, shift_k = scale[:top_k, 0].contiguous(), shift[:top_k, 0].contiguous()
    elif inclusion is not None:
        concept_chunk_size = min(concept_chunk_size, _SOFT_CONCEPT_BLOCK)
        local = torch.nn.functional.pad(local, (0, pad))
        size = min(K, chunk_size) * (top_k + pad) * min(M, concept_chunk_size)
        scratch = torch.empty(size, dtype=dtype, device=P.device)  # gathered terms
    width = min(M, concept_chunk_size)
    buffer = torch.empty(len(rows) * width, dtype=dtype, device=P.device)
    out = torch.empty(K, M, dtype=dtype, device=P.device)
    for cs in _slices(M, width):
        mc = cs.stop - cs.start
        prob = _rows_of(P[:, cs], rows, dtype, buffer[: len(rows) * mc].view(-1, mc))
        prob.mul_(a).sub_(lse).exp_()  # P~ on the union rows
        if inclusion is None:
            L = torch.nn.functional.embedding_bag(local, prob.add_(min_prob).log_(), mode="sum")
        elif fused:  # one pass per unit over its rows, products and logs in registers
            L = torch.empty(K, mc, dtype=dtype, device=P.device)
            similarity_kernel.soft_wpmi_sums(prob, local_k, scale_k, shift_k, group, L)
        else:
            L = torch.empty(K, mc, dtype=dtype, device=P.device)
            for ks in _slices(K, chunk_size):
                used = (ks.stop - ks.start) * (top_k + pad) * mc
                terms = torch.index_select(
                    prob, 0, local[ks].reshape(-1), out=scratch[:used].view(-1, mc)
                ).view(-1, top_k + pad, mc)
                terms = terms.mul_(scale).add_(shift)  # p_j x + 1 - p_j + min_prob
                terms = terms.view(terms.shape[0], -1, group, mc).prod(dim=2)
                L[ks] = terms.log_().sum(dim=1)
        prior = torch.logsumexp(L, dim=0).sub_(math.log(K))
        out[:, cs] = L.sub_(lam * prior)
    return out


def _wpmi_scores(
    name: str,
    concept_acts: Tensor,
    neuron_acts: Tensor,
    info: dict[str, Any] | None,
    *,
    top_k: int,
    a: float,
    lam: float,
    min_prob: float,
    chunk_size: int,
    concept_chunk_size: int,
    inclusion_range: tuple[float, float] | None = None,
) -> Tensor:
    """The checks, :func:`_pmi` and ``info`` of :func:`wpmi` and (with ``inclusion_range`` =
    ``(p_start, p_end)``, the evidence weights ``p_j``) :func:`soft_wpmi`."""
    dtype = _prepare(concept_acts, neuron_acts)
    P, Q = concept_acts, neuron_acts
    requested = _positive_int("top_k", top_k)
    top_k = _clamped("top_k", requested, P.shape[0])
    inclusion, extra = None, {}
    if inclusion_range is not None:
        p_start, p_end = inclusion_range
        j = torch.arange(top_k, dtype=dtype, device=P.device)
        inclusion = (p_start - j / top_k * (p_start - p_end)).view(1, top_k, 1)
        extra = {"p_start": p_start, "p_end": p_end}
    S = _pmi(
        P,
        Q,
        dtype,
        top_k=top_k,
        a=a,
        lam=lam,
        min_prob=min_prob,
        inclusion=inclusion,
        chunk_size=_positive_int("chunk_size", chunk_size),
        concept_chunk_size=_positive_int("concept_chunk_size", concept_chunk_size),
    )
    _fill_info(
        info,
        name,
        P,
        Q,
        dtype,
        top_k=top_k,
        top_k_requested=requested,
        top_k_clamped=top_k != requested,
        a=a,
        lam=lam,
        **extra,
        min_prob=min_prob,
        prior_over_neurons=Q.shape[1],
    )
    return S


@register_similarity("wpmi")
@torch.no_grad()
def wpmi(
    concept_acts: Tensor,
    neuron_acts: Tensor,
    *,
    top_k: int = 28,
    a: float = 2.0,
    lam: float = 0.6,
    min_prob: float = 1e-7,
    chunk_size: int = 64,
    concept_chunk_size: int = 4096,
    info: dict[str, Any] | None = None,
) -> Tensor:
    """Weighted pointwise mutual information (CLIP-Dissect ``wpmi``), ``method.md`` §7.3.

    ``P~ = softmax(a P)`` over concepts (row-wise), ``A_k`` = top-k images of unit ``k``::

        L[k, m]  = sum_{i in A_k} log(P~[i, m] + min_prob)
        prior[m] = logsumexp_k L[k, m] - log K
        S[k, m]  = L[k, m] - lam * prior[m]

    The prior runs over all ``K`` columns passed in: score a whole layer at once
    (``info["prior_over_neurons"]`` records ``K``). Scores are unbounded log-ratios; compare
    them only within one setup. Largest temporary: ``N x concept_chunk_size`` (``P~`` on
    the union of the units' top images); ``chunk_size`` only batches the top-image search.

    Example:
        >>> P, Q = torch.rand(50, 4), torch.randn(50, 3)
        >>> wpmi(P, Q, top_k=5).shape
        torch.Size([3, 4])
    """
    return _wpmi_scores(
        "wpmi",
        concept_acts,
        neuron_acts,
        info,
        top_k=top_k,
        a=a,
        lam=lam,
        min_prob=min_prob,
        chunk_size=chunk_size,
        concept_chunk_size=concept_chunk_size,
    )


@register_similarity("soft_wpmi")
@torch.no_grad()
def soft_wpmi(
    concept_acts: Tensor,
    neuron_acts: Tensor,
    *,
    top_k: int = 100,
    a: float = 10.0,
    lam: float = 1.0,
    p_start: float = 0.998,
    p_end: float = 0.97,
    min_prob: float = 1e-7,
    chunk_size: int = 64,
    concept_chunk_size: int = 4096,
    info: dict[str, Any] | None = None,
) -> Tensor:
    """Soft WPMI (CLIP-Dissect ``soft_wpmi``; :data:`PAPER_SIMILARITY`), ``method.md`` §7.4.

    ``P~ = softmax(a P)`` over concepts; ``i_0, ..., i_{top_k-1}`` are the top images of unit
    ``k`` in descending activation order; image ``i_j`` counts as evidence with probability
    ``p_j = p_start - (j / top_k) (p_start - p_end)``::

        L[k, m]  = sum_j log(p_j P~[i_j, m] + (1 - p_j) + min_prob)
        prior[m] = logsumexp_k L[k, m] - log K
        S[k, m]  = L[k, m] - lam * prior[m]

    ``top_k`` in ``p_j`` is the effective (clamped) value. Prior and units as in
    :func:`wpmi`. Largest temporaries: ``N x concept_chunk_size`` and
    ``chunk_size * top_k * 1024`` (the terms of one unit chunk and concept block).

    Example:
        >>> P, Q = torch.rand(300, 4), torch.randn(300, 3)
        >>> soft_wpmi(P, Q).shape
        torch.Size([3, 4])
    """
    return _wpmi_scores(
        "soft_wpmi",
        concept_acts,
        neuron_acts,
        info,
        top_k=top_k,
        a=a,
        lam=lam,
        min_prob=min_prob,
        chunk_size=chunk_size,
        concept_chunk_size=concept_chunk_size,
        inclusion_range=(p_start, p_end),
    )


# --------------------------------------------------------------------------- rank reorder


def _min_ranks(x: Tensor, packed: bool | None = None) -> Tensor:
    """Rank of every entry of each row of ``x`` ``[r, N]`` in its row, as ``int32``.

    The rank is the number of strictly smaller entries, so equal values share the lowest
    rank and the order of ranks is the order of values. ``packed``: sort with
    :func:`_packed_sort` (default: wherever it applies, CPU ``float32``).
    """
    r, N = x.shape
    if packed is None:
        packed = _packable(x)
    if packed:  # in blocks of rows: small temporaries are reused, not paged in afresh
        ranks = torch.empty(r, N, dtype=torch.int32)
        ranks_np = ranks.numpy()
        positions = np.arange(N, dtype=np.int32)
        for rs in _slices(r, _RANK_ROWS):
            keys, order = _packed_sort(x[rs])
            new = keys[:, 1:] != keys[:, :-1]
            if new.all():  # no ties: the rank is the sorted position
                first = np.broadcast_to(positions, keys.shape)
            else:  # ties take the position of the first of their run
                run = positions * np.concatenate([np.ones_like(new[:, :1]), new], axis=1)
                first = np.maximum.accumulate(run, axis=1)
            # Scatter with numpy: this runs on pool threads, where torch ops would start
            # parallel regions of their own.
            order += (np.arange(rs.stop - rs.start) * N)[:, None]
            ranks_np[rs].reshape(-1)[order.reshape(-1)] = first.reshape(-1)
        return ranks
    values, order = torch.sort(x, dim=1)
    new = torch.ones(r, N, dtype=torch.bool, device=x.device)
    torch.ne(values[:, 1:], values[:, :-1], out=new[:, 1:])
    first = torch.arange(N, device=x.device).mul(new).cummax(dim=1).values
    ranks = torch.empty(r, N, dtype=torch.int32, device=x.device)
    return ranks.scatter_(1, order, first.to(torch.int32))


def _reorder_errors(
    ranks: Tensor,
    top: Tensor,
    acts: Tensor,
    p: float,
    chunk_size: int,
    pool: ThreadPoolExecutor | None = None,
) -> Tensor:
    """``err[k, m] = mean_j |acts[k, order_j] - asc[k, j]|^p`` for the concepts of ``ranks``.

    ``ranks`` ``[mc, N]`` are the concepts' :func:`_min_ranks` over all images, ``top``
    ``[K, n]`` each unit's top images and ``acts`` ``[K, n]`` their activations, descending.
    ``order`` sorts a unit's images by concept score, ties kept in activation order (a
    stable argsort): each image's key packs its concept rank above its index in ``top``, so
    sorting small integers replaces the float argsort. With a ``pool`` (CPU tensors) the
    work is numpy's (a SIMD sort for 32-bit keys), unit chunks running on the pool's threads
    (numpy releases the GIL); without, torch's. Returns ``[K, mc]`` in the dtype of ``acts``.
    """
    (mc, N), (K, n) = ranks.shape, top.shape
    local_bits = max(1, (n - 1).bit_length())
    wide = (N - 1).bit_length() + local_bits > 31
    if pool is None:
        key_dtype = torch.int64 if wide else torch.int32
        local = torch.arange(n, dtype=key_dtype, device=ranks.device)
        out = torch.empty(K, mc, dtype=acts.dtype, device=ranks.device)
        for ks in _slices(K, chunk_size):
            keys = ranks.index_select(1, top[ks].reshape(-1)).to(key_dtype).view(mc, -1, n)
            keys = keys.bitwise_left_shift_(local_bits).bitwise_or_(local)
            order = torch.sort(keys, dim=-1).values.bitwise_and_((1 << local_bits) - 1)
            moved = acts[ks].expand(mc, -1, -1).gather(-1, order.long())
            err = moved.sub_(acts[ks].flip(1)).abs_().pow_(p).mean(dim=-1)
            out[ks] = err.T
        return out

    R, top_np, acts_np = ranks.numpy(), top.cpu().numpy(), acts.numpy()
    asc_np = np.ascontiguousarray(acts_np[:, ::-1])
    key_dtype = np.int64 if wide else np.int32
    local = np.arange(n, dtype=key_dtype)
    out_np = np.empty((K, mc), dtype=acts_np.dtype)
    size = mc * min(chunk_size, K) * n
    scratch = threading.local()  # per-thread buffers: fresh pages cost more than the work

    fused = (
        not wide
        and acts_np.dtype == np.float32
        and R.dtype == np.int32
        and similarity_kernel.available()
    )
    if fused:  # the C kernel builds the keys and computes the errors in one pass each
        acts_c = np.ascontiguousarray(acts_np)
        top_c = np.ascontiguousarray(top_np, dtype=np.int32)  # < N < 2**31 (not wide)
        R_c = np.ascontiguousarray(R)

    def fused_chunk(ks: slice) -> None:
        if not hasattr(scratch, "keys"):
            scratch.keys = np.empty(size, dtype=np.int32)
        kc = ks.stop - ks.start
        keys = scratch.keys[: mc * kc * n].reshape(mc, kc, n)
        similarity_kernel.reorder_keys(R_c, top_c[ks], local_bits, keys)
        keys.sort(axis=-1)
        similarity_kernel.reorder_errors(keys, local_bits, acts_c[ks], asc_np[ks], p, out_np[ks])

    def unit_chunk(ks: slice) -> None:
        if not hasattr(scratch, "keys"):
            scratch.keys = np.empty(size, dtype=key_dtype)
            scratch.index = np.empty(size, dtype=np.intp)
            scratch.moved = np.empty(size, dtype=acts_np.dtype)
            scratch.power = np.empty(size, dtype=acts_np.dtype)
        kc = ks.stop - ks.start
        shape, used = (mc, kc, n), mc * kc * n
        keys = scratch.keys[:used].reshape(shape)
        np.take(R, top_np[ks].reshape(-1), axis=1, out=keys.reshape(mc, -1), mode="clip")
        keys <<= local_bits
        keys |= local
        keys.sort(axis=-1)
        index = scratch.index[:used].reshape(shape)
        np.bitwise_and(keys, (1 << local_bits) - 1, out=index)
        index += (np.arange(kc) * n)[:, None]
        moved = scratch.moved[:used].reshape(shape)
        np.take(acts_np[ks].reshape(-1), index, out=moved, mode="clip")
        moved -= asc_np[ks]
        np.abs(moved, out=moved)
        power = scratch.power[:used].reshape(shape)
        if p == 3.0:
            np.multiply(moved, moved, out=power)
            power *= moved
        else:
            np.power(moved, p, out=power)
        out_np[ks] = power.mean(axis=-1).T

    list(pool.map(fused_chunk if fused else unit_chunk, _slices(K, chunk_size)))
    return torch.from_numpy(out_np)


@register_similarity("rank_reorder")
@torch.no_grad()
def rank_reorder(
    concept_acts: Tensor,
    neuron_acts: Tensor,
    *,
    top_fraction: float = 0.05,
    p: float = 3.0,
    scale_p: float = 0.5,
    num_permutations: int = 5,
    seed: int = 0,
    min_avg: float = 1e-6,
    chunk_size: int = 8,
    concept_chunk_size: int = 256,
    top_n: int | None = None,
    info: dict[str, Any] | None = None,
) -> Tensor:
    """Rank-reorder score (CLIP-Dissect ``rank_reorder``), ``method.md`` §7.5.

    With ``n = clamp(floor(top_fraction N), 1, N)``, the top-n activations
    ``a_1 >= ... >= a_n`` of unit ``k`` on images ``A_k`` and ``c_i = P[A_k[i], m]``::

        rho_i    = ascending rank of c_i among c_1..c_n (stable: ties keep activation order)
        r_i      = (a sorted ascending)[rho_i]
        err[m]   = mean_i |a_i - r_i|^p
        baseline = mean over permutations pi of mean_i |a_asc,i - a_asc,pi(i)|^p
        S[k, m]  = -(err[m] / baseline) / max(mean_i c_i, min_avg)^scale_p

    The ``num_permutations`` permutations of ``0..n-1`` are drawn once, as
    ``torch.randperm(n, generator=g)`` in turn from a local ``torch.Generator`` seeded with
    ``seed``, and shared by all units (the reference draws new ones per unit; the baseline is
    a per-unit constant, so this never changes a unit's ranking of concepts). The global RNG
    is untouched. Guards absent from the reference: ``min_avg`` keeps concepts with a
    non-positive mean score finite (they rank last), and a zero baseline (a unit whose top-n
    activations are all equal, e.g. a dead unit) gives ``S = 0``.

    ``top_n`` sets ``n`` directly (clamped to ``N``) instead of ``top_fraction``: a streamed
    dissection (:mod:`discover.dissection.streaming`) scores the rows of the units' top
    images only, with the ``n`` of the whole probe.

    How: every concept column is ranked once over all ``N`` images (one sort per concept);
    a unit's ordering of its ``n`` images is then a sort of small integer keys (concept rank,
    then position in the unit's top list), done for ``chunk_size`` units at a time on all
    threads. Largest temporaries: about ``3 * N * concept_chunk_size`` 8-byte values for the
    ranks and ``3 * chunk_size * n * concept_chunk_size`` values per thread.

    Example:
        >>> P, Q = torch.rand(200, 4), torch.randn(200, 3)
        >>> torch.equal(rank_reorder(P, Q, seed=1), rank_reorder(P, Q, seed=1))
        True
    """
    dtype = _prepare(concept_acts, neuron_acts)
    P, Q = concept_acts, neuron_acts
    if not 0.0 < top_fraction <= 1.0:
        raise InputError(f"top_fraction must be in (0, 1], got {top_fraction!r}")
    num_permutations = _positive_int("num_permutations", num_permutations)
    chunk_size = _positive_int("chunk_size", chunk_size)
    concept_chunk_size = _positive_int("concept_chunk_size", concept_chunk_size)
    (N, M), K = P.shape, Q.shape[1]
    requested = math.floor(top_fraction * N) if top_n is None else _positive_int("top_n", top_n)
    n = min(N, max(1, requested))
    if n != requested and top_n is None:
        warnings.warn(
            f"top_fraction={top_fraction} of N={N} images is {requested}; using 1 image",
            stacklevel=3,
        )
    generator = torch.Generator().manual_seed(seed)
    perms = torch.stack(
        [torch.randperm(n, generator=generator) for _ in range(num_permutations)]
    ).to(P.device)
    top = [_top_images(Q[:, ks].to(dtype), n) for ks in _slices(K, 64)]
    acts = torch.cat([values for values, _ in top])  # [K, n], descending
    idx = torch.cat([indices for _, indices in top])
    asc = acts.flip(1)
    baseline = (asc[:, None, :] - asc[:, perms]).abs_().pow_(p).mean(dim=(1, 2))
    baseline.clamp_min_(torch.finfo(dtype).tiny)
    out = torch.empty(K, M, dtype=dtype, device=P.device)
    threads = max(1, torch.get_num_threads()) if P.device.type == "cpu" else 0
    with ThreadPoolExecutor(threads or 1) as pool:
        for cs in _slices(M, concept_chunk_size):
            c = P[:, cs].to(dtype).contiguous()
            avg = torch.nn.functional.embedding_bag(idx, c, mode="mean")  # [K, mc]
            parts = c.T.contiguous().chunk(threads or 1)  # ranks: one sort per concept
            ranks = torch.cat(list(pool.map(_min_ranks, parts)))
            err = _reorder_errors(ranks, idx, acts, p, chunk_size, pool if threads else None)
            scale = avg.clamp_min_(min_avg).pow_(scale_p)
            out[:, cs] = err.div_(baseline[:, None]).div_(scale).neg_()
    _fill_info(
        info,
        "rank_reorder",
        P,
        Q,
        dtype,
        top_fraction=top_fraction,
        top_n=n,
        top_n_requested=requested,
        top_n_clamped=n != requested,
        p=p,
        scale_p=scale_p,
        num_permutations=num_permutations,
        seed=seed,
        min_avg=min_avg,
    )
    return out


# --------------------------------------------------------------------------- JSD

_TRANSFORMS = ("identity", "zscore")
_SUPPORTS = ("all", "neuron_topk", "union_topk")

_SUPPORT_TEXT = {
    "all": "all N probe images (exact, O(K M N))",
    "neuron_topk": (
        "the support_k images with the largest activation of unit k; both distributions "
        "are renormalised on that set (not symmetric in the roles of P and Q)"
    ),
    "union_topk": (
        "the union of the support_k images with the largest activation of unit k and the "
        "support_k images with the largest score of concept m (each image once); both "
        "distributions are renormalised on that set"
    ),
}


def jsd_definition(
    *,
    tau_q: float = 1.0,
    tau_p: float = 1.0,
    transform_q: Transform = "zscore",
    transform_p: Transform = "zscore",
    support: Support = "union_topk",
    support_k: int = 100,
    min_std: float = 1e-12,
) -> dict[str, Any]:
    """The exact definition :func:`jsd` computes with these parameters, as plain data.

    Save it with every result (``jsd(..., info=info)`` stores it as ``info["definition"]``,
    with the effective ``support_k``). Defaults are those of :func:`jsd`.

    Example:
        >>> jsd_definition()["support"]
        'union_topk'
    """
    if transform_q not in _TRANSFORMS or transform_p not in _TRANSFORMS:
        raise InputError(
            f"transforms must be one of {_TRANSFORMS}, got {transform_q!r}, {transform_p!r}"
        )
    if support not in _SUPPORTS:
        raise InputError(f"support must be one of {_SUPPORTS}, got {support!r}")
    if not (tau_q > 0 and tau_p > 0):
        raise InputError(f"temperatures must be positive, got tau_q={tau_q}, tau_p={tau_p}")
    _positive_int("support_k", support_k)
    return {
        "name": "jsd",
        "status": (
            "project reconstruction (method.md 7.6): the DISCOVER paper's JSD formula and "
            "code are not available; not validated against the paper"
        ),
        "formula": (
            "S[k,m] = -JSD(p_k || r_m) = -(KL(p_k || mu) + KL(r_m || mu)) / 2, mu = (p_k + r_m) / 2"
        ),
        "p_k": "softmax over the support of f(Q[:, k]) / tau_q",
        "r_m": "softmax over the support of g(P[:, m]) / tau_p",
        "transform_q": transform_q,
        "transform_p": transform_p,
        "transforms": {
            "identity": "x",
            "zscore": (
                "(x - mean) / max(std, min_std), mean and population std of the column "
                "over all N probe images, before restricting to the support"
            ),
        },
        "tau_q": tau_q,
        "tau_p": tau_p,
        "min_std": min_std,
        "support": support,
        "support_k": support_k if support != "all" else None,
        "support_description": _SUPPORT_TEXT[support],
        "top_k_order": "descending raw value (signed), ties broken by the lower image index",
        "log_base": "e",
        "range": [-_LN2, 0.0],
        "higher_is_better": True,
    }


def _affine(x: Tensor, transform: str, tau: float, min_std: float) -> tuple[Tensor, Tensor]:
    """Per-column ``(shift, scale)`` with ``logits = (x - shift) / scale`` for ``x`` ``[N, c]``."""
    if transform == "zscore":
        std, mean = torch.std_mean(x, dim=0, correction=0)
        return mean, std.clamp_min_(min_std).mul_(tau)
    return torch.zeros_like(x[0]), torch.full_like(x[0], tau)


def _top_sets(x: Tensor, k: int) -> Tensor:
    """Indices ``[c, k]`` of the ``k`` largest rows of every column of ``x`` ``[N, c]``.

    The same sets as :func:`_top_images` (ties to the lower index) without a full sort, in
    ascending index order.
    """
    threshold = torch.topk(x, k, dim=0).values[-1]
    above, tied = x > threshold, x == threshold
    keep = above | (tied & (tied.cumsum(dim=0) <= k - above.sum(dim=0)))
    return keep.T.nonzero()[:, 1].view(-1, k)


def _kl_to_mid(p: Tensor, log_p: Tensor, r: Tensor, log_r: Tensor) -> Tensor:
    """``sum_i p_i log(p_i / mu_i) + r_i log(r_i / mu_i)`` over the last dim, ``mu = (p + r) / 2``.

    Entries with ``p_i = r_i = 0`` contribute 0; ``log_p``, ``log_r`` must be finite.
    """
    log_mid = (p + r).mul_(0.5).clamp_min_(torch.finfo(p.dtype).tiny).log_()
    return (log_p - log_mid).mul_(p).add_((log_r - log_mid).mul_(r)).sum(dim=-1)


def _jsd_log_probs(log_p: Tensor, log_r: Tensor) -> Tensor:
    """JSD (nats) of distributions over the last dim, as broadcastable log-probabilities."""
    return _kl_to_mid(log_p.exp(), log_p, log_r.exp(), log_r).mul_(0.5).clamp_(0.0, _LN2)


def _jsd_union(x_a: Tensor, y_a: Tensor, x_b: Tensor, y_b: Tensor, fresh: Tensor) -> Tensor:
    """JSD (nats) of ``softmax(x)`` and ``softmax(y)`` on the union of image sets ``A`` and ``B``.

    ``A`` holds the unit's top images (its largest logit ``x``), ``B`` the concept's (its
    largest ``y``). Logits on ``A``: ``x_a [kc, 1, k]``, ``y_a [kc, mc, k]``; on ``B``:
    ``x_b [kc, mc, k]``, ``y_b [1, mc, k]``. ``fresh [kc, mc, k]`` is 0 for the images of ``B``
    already in ``A``, so each image of the union counts once.
    """
    x_max, y_max = x_a.amax(dim=-1, keepdim=True), y_b.amax(dim=-1, keepdim=True)
    e_xa, e_xb = (x_a - x_max).exp_(), (x_b - x_max).exp_().mul_(fresh)
    e_ya, e_yb = (y_a - y_max).exp_(), (y_b - y_max).exp_().mul(fresh)
    z_p = e_xa.sum(dim=-1, keepdim=True) + e_xb.sum(dim=-1, keepdim=True)  # >= 1
    z_r = e_ya.sum(dim=-1, keepdim=True) + e_yb.sum(dim=-1, keepdim=True)  # >= 1
    log_zp, log_zr = z_p.log().add_(x_max), z_r.log().add_(y_max)
    js = _kl_to_mid(e_xa / z_p, x_a - log_zp, e_ya / z_r, y_a - log_zr)
    js += _kl_to_mid(e_xb / z_p, x_b - log_zp, e_yb / z_r, y_b - log_zr)
    return js.mul_(0.5).clamp_(0.0, _LN2)


@register_similarity("jsd")
@torch.no_grad()
def jsd(
    concept_acts: Tensor,
    neuron_acts: Tensor,
    *,
    tau_q: float = 1.0,
    tau_p: float = 1.0,
    transform_q: Transform = "zscore",
    transform_p: Transform = "zscore",
    support: Support = "union_topk",
    support_k: int = 100,
    min_std: float = 1e-12,
    chunk_size: int | None = None,
    concept_chunk_size: int | None = None,
    info: dict[str, Any] | None = None,
) -> Tensor:
    """Jensen-Shannon similarity: the project's reconstruction of DISCOVER's measure, §7.6.

    No reference implementation exists; this is the recommended definition of ``method.md``
    §7.6, with defaults chosen here, not validated against the paper. For unit ``k`` and
    concept ``m``, on a support set ``T`` of images::

        p_k[i] = softmax_{i in T}(f(Q[:, k])[i] / tau_q)
        r_m[i] = softmax_{i in T}(g(P[:, m])[i] / tau_p)
        S[k, m] = -JSD(p_k || r_m) = -(KL(p_k || mu) + KL(r_m || mu)) / 2,  mu = (p_k + r_m) / 2

    in nats, so ``S`` lies in ``[-ln 2, 0]`` and 0 means identical distributions. ``f``, ``g``
    are ``"identity"`` or ``"zscore"`` (``(x - mean) / max(std, min_std)`` over all ``N``
    images, population std). ``support`` selects ``T``:

    * ``"union_topk"`` (default): the unit's ``support_k`` top images united with the
      concept's ``support_k`` top images. Cost ``O(K M support_k)``.
    * ``"neuron_topk"``: the unit's top images only. Half the cost, but blind to images where
      the concept is strong and the unit silent, and not symmetric in ``P`` and ``Q``.
    * ``"all"``: all ``N`` images, exact. Cost ``O(K M N)``.

    Defaults and why: z-scoring makes ``tau`` a unitless sharpness in units of each column's
    standard deviation, so one value serves every layer, model and image-text model (raw
    activation scales vary by orders of magnitude, and a concept's raw CLIP cosines vary by
    only a few hundredths across images, which would make ``r_m`` almost uniform).
    ``tau_q = tau_p = 1`` and equal transforms treat unit and concept alike; with
    ``"union_topk"`` the score is then symmetric (``jsd(P, Q) == jsd(Q, P).T``) and a concept
    whose top images differ from the unit's is penalised, which ``"neuron_topk"`` cannot see.
    ``support_k = 100`` matches soft-WPMI's ``top_k``. A dead unit (constant column) gives a
    uniform ``p_k``: finite scores.

    ``info["definition"]`` receives :func:`jsd_definition` of the effective parameters.
    ``chunk_size`` / ``concept_chunk_size`` default to blocks of at most ``2**20`` support
    entries (about ten such float temporaries are alive at once).

    Example:
        >>> Q = torch.randn(500, 2)
        >>> P = torch.cat([torch.randn(500, 3), 3 * Q[:, :1] + 1], dim=1)  # planted concept
        >>> S = jsd(P, Q)
        >>> S.argmax(dim=1)[0].item(), abs(S[0, 3].item()) < 1e-6
        (3, True)
    """
    dtype = _prepare(concept_acts, neuron_acts)
    P, Q = concept_acts, neuron_acts
    (N, M), K = P.shape, Q.shape[1]
    requested = support_k
    definition = jsd_definition(  # validates the parameters
        tau_q=tau_q,
        tau_p=tau_p,
        transform_q=transform_q,
        transform_p=transform_p,
        support=support,
        support_k=requested,
        min_std=min_std,
    )
    k = requested
    if support != "all":
        k = definition["support_k"] = _clamped("support_k", requested, N)
    width = {"all": N, "neuron_topk": k, "union_topk": 2 * k}[support]
    if chunk_size is None:
        chunk_size = max(1, min(K, 64, _JSD_BLOCK // width))
    kc = _positive_int("chunk_size", chunk_size)
    if concept_chunk_size is None:
        concept_chunk_size = max(1, min(M, _JSD_BLOCK // (kc * width)))
    mc = _positive_int("concept_chunk_size", concept_chunk_size)

    # Per-unit logit transform (and top images with their logits), computed once.
    stats = [_affine(Q[:, ks].to(dtype), transform_q, tau_q, min_std) for ks in _slices(K, kc)]
    shift_q = torch.cat([shift for shift, _ in stats])
    scale_q = torch.cat([scale for _, scale in stats])
    if support != "all":
        top = [_top_images(Q[:, ks].to(dtype), k) for ks in _slices(K, kc)]
        top_q = torch.cat([idx for _, idx in top])  # [K, k]
        logit_top_q = (torch.cat([v for v, _ in top]) - shift_q[:, None]) / scale_q[:, None]

    out = torch.empty(K, M, dtype=dtype, device=P.device)
    for cs in _slices(M, mc):
        p = P[:, cs].to(dtype)
        shift, scale = _affine(p, transform_p, tau_p, min_std)
        logit_p = (p - shift) / scale  # [N, mcc]
        if support == "all":
            log_r = torch.log_softmax(logit_p.T, dim=-1)[None]  # [1, mcc, N]
        elif support == "union_topk":
            top_p = _top_sets(p, k)  # [mcc, k]
            y_b = logit_p.T.gather(1, top_p)[None]  # [1, mcc, k]
        for ks in _slices(K, kc):
            if support == "all":
                logit_q = (Q[:, ks].to(dtype) - shift_q[ks]) / scale_q[ks]
                log_p = torch.log_softmax(logit_q.T, dim=-1)[:, None]  # [kc, 1, N]
                out[ks, cs] = _jsd_log_probs(log_p, log_r).neg_()
                continue
            kcc = ks.stop - ks.start
            x_a = logit_top_q[ks, None]  # [kc, 1, k]
            y_a = logit_p.index_select(0, top_q[ks].reshape(-1)).view(kcc, k, -1).transpose(1, 2)
            if support == "neuron_topk":
                log_p = torch.log_softmax(x_a, dim=-1)
                out[ks, cs] = _jsd_log_probs(log_p, torch.log_softmax(y_a, dim=-1)).neg_()
                continue
            cols = top_p.reshape(-1)
            x_b = Q[:, ks].index_select(0, cols).to(dtype).sub_(shift_q[ks]).div_(scale_q[ks])
            x_b = x_b.T.reshape(kcc, -1, k)  # [kc, mcc, k]
            seen = torch.zeros(kcc, N, dtype=torch.bool, device=P.device)
            fresh = ~seen.scatter_(1, top_q[ks], True)[:, cols].view(kcc, -1, k)
            out[ks, cs] = _jsd_union(x_a, y_a, x_b, y_b, fresh.to(dtype)).neg_()
    _fill_info(
        info,
        "jsd",
        P,
        Q,
        dtype,
        tau_q=tau_q,
        tau_p=tau_p,
        transform_q=transform_q,
        transform_p=transform_p,
        support=support,
        support_k=definition["support_k"],
        support_k_requested=requested,
        support_k_clamped=k != requested,
        min_std=min_std,
        definition=definition,
    )
    return out
