"""Ground-truth scores for dissected units, and sanity tests for the similarity functions.

Where the probe images carry exact concept annotations (ShapesWorld's ``concepts_table()``,
or any binary ``N x C`` table ``A``), a unit's label can be checked against the truth
instead of against an image-text model. Two tools live here.

**A. Ground-truth scores** (:func:`groundtruth_scores`, :func:`groundtruth_dissection`, and
:func:`evaluate_groundtruth`, which takes a dissection and its annotated probe set). For
every unit ``k`` (a column of ``Q``, ``N x K``) and every ground-truth concept ``c`` (a
column of ``A``), the unit's activation is treated as a detector of the concept (higher
activation = more likely present; signed values are used as they are):

* **AUPRC** (average precision), as ``sklearn.metrics.average_precision_score``:
  ``AP = sum_t (R_t - R_{t-1}) P_t`` over the distinct activation values ``t`` in decreasing
  order, with ``P_t`` and ``R_t`` the precision and recall of "activation >= t". Tied
  activations form one threshold (no credit from the order inside a tie). A constant unit
  scores the concept's base rate; a unit equal to the concept column scores 1.
* **IoU and F1 at a fitted threshold.** The probe is split at random (seeded, see
  :func:`probe_split`) into a *fit* half and a *held-out* half. On the fit half the
  threshold ``t`` is the activation value (predict "present" when activation >= ``t``) that
  maximises F1; of equal F1 the highest ``t`` wins. IoU ``= TP / (TP + FP + FN)`` and F1
  ``= 2 TP / (2 TP + FP + FN)`` are then measured with that ``t`` on the held-out half only.
  They are NaN (``None`` in the saved files) when the concept has no positive image in the
  fit half or in the held-out half.
* **Best concept**: the concept of highest AUPRC (the first, in column order, of equal
  ones). ``label_is_best`` is true when the label's AUPRC equals the best AUPRC (a tie with
  the best counts as best).
* **Monosemanticity** of a layer: the fraction of units whose best AUPRC is above
  :data:`MONOSEMANTIC_BAR`, reported with the mean best AUPRC. The bar is 0.75: averaged
  over the concept's positive images, three quarters of the images that activate the unit
  at least as strongly carry the concept. It has to clear chance for every concept, since
  an unrelated unit scores about the concept's base rate and the best of ``C`` such scores
  is at least the largest base rate: ShapesWorld's base rates run from about 0.1 (one of
  ten shapes or colours) to about 0.5 (one of two sizes), so the 0.5 one might first
  think of would call a random unit monosemantic. Pass ``bar`` to choose another.

A unit's label is matched to a concept name exactly, else ignoring case and surrounding
space, else through ``label_map``. **A label that is no ground-truth concept** (e.g. a CLIP
concept outside the annotation vocabulary) cannot be checked: its ``label_concept`` is
``None``, ``label_known`` false, its AUPRC, IoU and F1 are 0 and it is never the best
concept, so layer means count it as a miss rather than dropping it (a labeller cannot gain
by answering outside the vocabulary). ``labels_known`` in the summary says how many labels
were checkable.

**B. Sanity tests for similarity functions** (:func:`similarity_sanity`), after Neuron_Eval
(Oikarinen, Yan & Weng, ICML 2025). For a unit that detects a binary concept column ``c``
(``N`` images, positives ``c = 1``) and a corruption fraction ``f`` in ``(0, 1)``:

* ``c_missing``: ``c`` with ``max(1, round(f * #positives))`` randomly chosen positive
  images set to 0 (missing labels);
* ``c_extra``: ``c`` with ``max(1, round(f * #negatives))`` randomly chosen negative images
  set to 1 (extra labels).

All units of one case are scored together: ``P'`` holds, for every unit, its columns
``[c, c_missing, c_extra]`` (each unit's corrupted columns are distractors for the others),
plus ``distractors`` independent binary columns for planted units, and ``S = sim(P', Q)``
with every similarity function in :data:`~discover.dissection.similarity.SIMILARITIES`. A
unit *passes* the missing-labels test when ``S[k, c] > S[k, c_missing]`` and the
extra-labels test when ``S[k, c] > S[k, c_extra]`` (strictly: a tie fails). Pass rates are
reported per function, source, test and ``f``, over all units and seeds. Sources:

* ``planted``: synthetic binary concepts (base rates drawn uniformly from
  ``base_rates``) and units that are noisy monotone functions of them
  (:func:`~discover.evaluation.planted.planted_neurons`, noise ``planted_noise``);
* an annotation table (e.g. ShapesWorld's): each ground-truth column is itself the unit
  (a perfect, binary detector with many tied activations).

A function *passes* a test on a source when its pass rate, over all ``f`` and seeds, is at
least ``pass_bar`` (0.95: "nearly all cases").

Example:
    >>> import torch
    >>> from discover.evaluation.groundtruth import groundtruth_scores
    >>> A = (torch.rand(1000, 4) < 0.3).float()
    >>> Q = torch.cat([A[:, :1], torch.randn(1000, 1)], dim=1)  # unit 0 is concept "a"
    >>> result = groundtruth_scores(Q, A, ["a", "b", "c", "d"], ["a", "b"])
    >>> result.units[0].label_auprc, result.units[0].label_iou, result.units[0].label_is_best
    (1.0, 1.0, True)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from discover._utils import check_options, csv_text, read_json, write_files
from discover.dissection.core import Dissection
from discover.dissection.embedders.annotations import probe_annotations
from discover.dissection.similarity import DEFAULT_SIMILARITY, SIMILARITIES, get_similarity
from discover.errors import InputError
from discover.evaluation.layered import LayeredReport
from discover.evaluation.planted import PlantedConfig, planted_neurons

__all__ = [
    "MONOSEMANTIC_BAR",
    "SANITY_PASS_BAR",
    "UnitGroundTruth",
    "LayerGroundTruth",
    "GroundTruthReport",
    "probe_split",
    "average_precision",
    "threshold_metrics",
    "groundtruth_scores",
    "groundtruth_dissection",
    "probe_annotations",
    "evaluate_groundtruth",
    "saved_groundtruth",
    "SanityConfig",
    "SanityResult",
    "corrupt_labels",
    "similarity_sanity",
]

MONOSEMANTIC_BAR = 0.75
"""A unit is monosemantic when the AUPRC of its best ground-truth concept is above this."""

SANITY_PASS_BAR = 0.95
"""A similarity function passes a sanity test when it passes in at least this share of cases."""

_ENTRIES = 2**23  # (unit, image) entries per chunk of the ranking computations
REPORT_JSON = "groundtruth.json"
REPORT_CSV = "groundtruth_units.csv"
SANITY_JSON = "similarity_sanity.json"
SANITY_CSV = "similarity_sanity.csv"


# --------------------------------------------------------------------------- validation


def _binary_table(name: str, x: Tensor) -> Tensor:
    """Check that ``x`` is a non-empty 2-D 0/1 (or bool) tensor; return it as float32."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 or 0 in x.shape:
        raise InputError(f"{name} must be a non-empty 2-D tensor, got shape {tuple(x.shape)}")
    A = x.to(torch.float32)
    odd = A[(A != 0) & (A != 1)]
    if odd.numel():
        raise InputError(f"{name} must be binary (0/1 or bool), found value {odd[0].item():g}")
    return A


def _check_inputs(
    activations: Tensor, annotations: Tensor, concepts: Sequence[str] | None = None
) -> tuple[Tensor, Tensor]:
    """Validate ``Q`` ``(N, K)`` and ``A`` ``(N, C)``; return them on the CPU, ``Q`` as
    float32 (float64 stays float64) and ``A`` as float32."""
    if not isinstance(activations, Tensor):
        raise TypeError(f"activations must be a torch.Tensor, got {type(activations).__name__}")
    if activations.dim() != 2 or 0 in activations.shape:
        raise InputError(
            f"activations must be a non-empty 2-D tensor (N, K), got shape "
            f"{tuple(activations.shape)}"
        )
    A = _binary_table("annotations", annotations)
    if activations.shape[0] != A.shape[0]:
        raise InputError(
            f"activations {tuple(activations.shape)} and annotations {tuple(A.shape)} "
            "must have one row per probe image (the same N)"
        )
    if activations.shape[0] < 2:
        raise InputError(f"activations: need at least 2 probe images, got {activations.shape[0]}")
    Q = activations.detach().cpu()
    if Q.dtype not in (torch.float32, torch.float64):
        Q = Q.float()
    if not torch.isfinite(Q).all():
        raise InputError("activations hold NaN or Inf values")
    names = list(concepts) if concepts is not None else [str(c) for c in range(A.shape[1])]
    if len(names) != A.shape[1]:
        raise InputError(f"concepts: {len(names)} names for {A.shape[1]} annotation columns")
    counts = A.sum(dim=0)
    for what, bad in (
        ("no positive image (an empty concept)", counts == 0),
        ("every image positive (nothing to detect)", counts == A.shape[0]),
    ):
        if bad.any():
            which = [names[i] for i in bad.nonzero().flatten().tolist()]
            raise InputError(
                f"annotations: concept(s) {', '.join(map(repr, which[:10]))} have {what} on "
                "the probe; drop those columns"
            )
    return Q, A


def _chunk(num_images: int, chunk_size: int | None) -> int:
    if chunk_size is None:
        return max(1, _ENTRIES // num_images)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InputError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return chunk_size


def _sorted_and_ranks(values: Tensor) -> tuple[Tensor, Tensor]:
    """For ``values`` ``(n, k)``: every unit's activations in ascending order ``(k, n)``,
    and ``R`` ``(k, n)`` (int32): ``R[j, i]`` = how many images activate unit ``j`` at least
    as strongly as image ``i`` does, i.e. the images predicted positive at the threshold
    ``values[i, j]`` (tied images share the rank of the end of their tie).

    numpy's sort does the work (several times faster than torch's on a CPU)."""
    rows = values.T.contiguous()
    k, n = rows.shape
    order = np.argsort(rows.numpy(), axis=1)
    ascending = np.take_along_axis(rows.numpy(), order, axis=1)
    starts = np.empty(ascending.shape, dtype=bool)  # where a run of equal values starts
    starts[:, 0] = True
    np.not_equal(ascending[:, 1:], ascending[:, :-1], out=starts[:, 1:])
    first = np.where(starts, np.arange(n, dtype=np.int32), np.int32(0))
    np.maximum.accumulate(first, axis=1, out=first)
    ranks = torch.empty(k, n, dtype=torch.int32)
    ranks.scatter_(1, torch.from_numpy(order), torch.from_numpy(n - first))
    return torch.from_numpy(ascending), ranks


def _positive_ranks(ranks: Tensor, positives: Tensor) -> tuple[Tensor, Tensor]:
    """The ranks ``R`` of the ``positives`` (image indices), per unit in ascending order
    ``(k, p)``, and the true positives at each: the positives ranked at or before it, ties
    included ``(k, p)``."""
    ordered = torch.index_select(ranks, 1, positives)
    ordered.numpy().sort(axis=1)
    p = ordered.shape[1]
    tp = torch.arange(1, p + 1, dtype=torch.int32).expand_as(ordered)
    tied = (ordered[:, 1:] == ordered[:, :-1]).any(dim=1)
    if tied.any():  # a tie counts all its positives
        rows = tied.nonzero().flatten()
        tp = tp.clone()
        tp[rows] = torch.searchsorted(ordered[rows], ordered[rows], side="right").int()
    return ordered, tp


# --------------------------------------------------------------------------- metrics


def probe_split(num_images: int, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """The seeded random split of ``num_images`` probe images into a fit and a held-out half.

    The fit half has ``num_images - num_images // 2`` images; both are sorted index tensors.

    Example:
        >>> fit, held_out = probe_split(5, seed=0)
        >>> len(fit), len(held_out), sorted(fit.tolist() + held_out.tolist())
        (3, 2, [0, 1, 2, 3, 4])
    """
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 2:
        raise InputError(f"num_images must be an integer >= 2, got {num_images!r}")
    perm = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed))
    fit = num_images - num_images // 2
    return perm[:fit].sort().values, perm[fit:].sort().values


@torch.no_grad()
def average_precision(
    activations: Tensor, annotations: Tensor, *, chunk_size: int | None = None
) -> Tensor:
    """AUPRC of every unit (column of ``activations``, ``(N, K)``) as a detector of every
    concept (column of the binary ``annotations``, ``(N, C)``): a ``(K, C)`` float64 tensor.

    Matches ``sklearn.metrics.average_precision_score`` (ties form one threshold):
    ``AP = mean over positives i of TP(i) / R(i)``, with ``R(i)`` the images that activate
    the unit at least as strongly as ``i`` and ``TP(i)`` the positives among them. One sort
    per unit, then one sort of the positives' ranks per concept: the cost grows with
    ``K x (N + positives in A)``, not ``K x N x C``. ``chunk_size`` units at a time (default:
    about ``2**23`` unit-image entries).

    Raises:
        ValueError: shapes that differ in ``N``, non-binary annotations, a concept with no
            positive image (or only positives), non-finite activations.

    Example:
        >>> A = torch.tensor([[1.0], [0.0], [1.0], [0.0]])
        >>> average_precision(torch.tensor([[0.9], [0.8], [0.7], [0.1]]), A)
        tensor([[0.8333]], dtype=torch.float64)
    """
    Q, A = _check_inputs(activations, annotations)
    (N, K), C = Q.shape, A.shape[1]
    positives = [A[:, c].nonzero().flatten() for c in range(C)]
    out = torch.empty(K, C, dtype=torch.float64)
    step = _chunk(N, chunk_size)
    for start in range(0, K, step):
        _, ranks = _sorted_and_ranks(Q[:, start : start + step])
        for c, pos in enumerate(positives):
            ordered, tp = _positive_ranks(ranks, pos)
            out[start : start + step, c] = (tp.double() / ordered).mean(dim=1)
    return out


def _indices(name: str, idx: Tensor, num_images: int) -> Tensor:
    idx = torch.as_tensor(idx)
    if idx.dim() != 1 or idx.numel() == 0 or idx.is_floating_point() or idx.dtype == torch.bool:
        raise InputError(
            f"{name} must be a non-empty 1-D integer index tensor, got {idx.dtype} of shape "
            f"{tuple(idx.shape)}"
        )
    if int(idx.min()) < 0 or int(idx.max()) >= num_images:
        raise InputError(f"{name} holds indices outside 0..{num_images - 1}")
    return idx.long()


@torch.no_grad()
def threshold_metrics(
    activations: Tensor,
    annotations: Tensor,
    *,
    fit: Tensor,
    held_out: Tensor,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per unit and concept: the F1-maximising threshold on the ``fit`` images, and the IoU
    and F1 of "activation >= threshold" on the ``held_out`` images. Each ``(K, C)``.

    ``fit`` and ``held_out`` are index tensors into the ``N`` probe images (e.g. from
    :func:`probe_split`). The threshold is the activation of a positive fit image (F1 is
    highest at one of those); of equal F1 the highest threshold wins. The threshold is NaN
    where the concept has no positive fit image, and IoU and F1 (float64) are NaN where it
    has no positive fit or held-out image.

    Example:
        >>> Q = torch.tensor([[3.0], [2.0], [1.0], [0.0]])
        >>> A = torch.tensor([[1.0], [1.0], [0.0], [0.0]])
        >>> t, iou, f1 = threshold_metrics(Q, A, fit=torch.tensor([0, 2]),
        ...                                held_out=torch.tensor([1, 3]))
        >>> t.item(), iou.item(), f1.item()
        (3.0, 0.0, 0.0)
    """
    Q, A = _check_inputs(activations, annotations)
    N = Q.shape[0]
    fit, held_out = _indices("fit", fit, N), _indices("held_out", held_out, N)
    K, C = Q.shape[1], A.shape[1]
    A_fit, A_held = A[fit], A[held_out]
    pos_fit = [A_fit[:, c].nonzero().flatten() for c in range(C)]
    pos_held = [A_held[:, c].nonzero().flatten() for c in range(C)]
    threshold = torch.full((K, C), math.nan, dtype=Q.dtype)
    tp_held = torch.zeros(K, C, dtype=torch.float64)
    predicted = torch.zeros(K, C, dtype=torch.float64)
    step = _chunk(max(len(fit), len(held_out)), chunk_size)
    for start in range(0, K, step):
        ks = slice(start, start + step)
        fit_ascending, ranks = _sorted_and_ranks(Q[fit, ks])
        for c, pos in enumerate(pos_fit):
            if len(pos) == 0:
                continue
            ordered, tp = _positive_ranks(ranks, pos)
            f1 = 2 * tp.double() / (ordered + len(pos))
            best = ordered.gather(1, f1.argmax(dim=1, keepdim=True))  # the first: fewest images
            # the images at or above the threshold are the top ``best`` of the fit half
            threshold[ks, c] = fit_ascending.gather(1, len(fit) - best.long()).squeeze(1)
        t = threshold[ks].contiguous()  # (k, C)
        Q_held = Q[held_out, ks].T.contiguous()  # (k, n_held)
        ascending = torch.from_numpy(np.sort(Q_held.numpy(), axis=1))
        predicted[ks] = (len(held_out) - torch.searchsorted(ascending, t, side="left")).double()
        for c, pos in enumerate(pos_held):
            if len(pos):
                values = torch.from_numpy(np.sort(Q_held[:, pos].numpy(), axis=1))
                above = len(pos) - torch.searchsorted(values, t[:, c : c + 1].contiguous())
                tp_held[ks, c] = above.squeeze(1).double()
    n_pos = torch.tensor([len(p) for p in pos_held], dtype=torch.float64)
    iou = tp_held / (predicted + n_pos - tp_held)
    f1 = 2 * tp_held / (predicted + n_pos)
    undefined = torch.tensor(
        [len(a) == 0 or len(b) == 0 for a, b in zip(pos_fit, pos_held, strict=True)]
    )
    iou[:, undefined] = math.nan
    f1[:, undefined] = math.nan
    return threshold, iou, f1


# --------------------------------------------------------------------------- results


def _number(x: float | None, digits: int | None = None) -> float | None:
    """A JSON-safe float: NaN and None become None, others kept (or rounded to ``digits``
    significant digits)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return None
    return float(f"{x:.{digits}g}") if digits else float(x)


def _float(x: Any) -> float:
    return math.nan if x is None or x == "" else float(x)


@dataclass
class UnitGroundTruth:
    """The ground-truth scores of one unit.

    Attributes:
        unit: the unit's column in ``Q``.
        label: its label as given.
        label_concept: the ground-truth concept the label names, ``None`` if it names none.
        label_auprc, label_iou, label_f1: the unit as a detector of ``label_concept``
            (0 when ``label_concept`` is ``None``; IoU and F1 NaN when undefined).
        threshold: the fitted threshold behind ``label_iou`` / ``label_f1`` (``None`` when
            ``label_concept`` is ``None``).
        label_base_rate: the share of probe images with ``label_concept`` (AUPRC of chance).
        best_concept, best_auprc, best_iou, best_f1: the concept of highest AUPRC.
        label_is_best: the label's AUPRC equals the best AUPRC.
    """

    unit: int
    label: str
    label_concept: str | None
    label_auprc: float
    label_iou: float
    label_f1: float
    threshold: float | None
    label_base_rate: float | None
    best_concept: str
    best_auprc: float
    best_iou: float
    best_f1: float
    label_is_best: bool

    @property
    def label_known(self) -> bool:
        """Whether the label names a ground-truth concept."""
        return self.label_concept is not None

    def row(self) -> dict[str, Any]:
        """A flat, JSON-safe dict (NaN as ``None``)."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, float):
                out[key] = _number(value)
        return out

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> UnitGroundTruth:
        """Inverse of :meth:`row`, also from CSV strings."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            v = row[f.name]
            if f.name == "unit":
                values[f.name] = int(v)
            elif f.name in ("label", "best_concept"):
                values[f.name] = str(v)
            elif f.name == "label_concept":
                values[f.name] = None if v in (None, "") else str(v)
            elif f.name in ("threshold", "label_base_rate"):
                values[f.name] = None if v in (None, "") else float(v)
            elif f.name == "label_is_best":
                values[f.name] = v if isinstance(v, bool) else str(v) == "True"
            else:
                values[f.name] = _float(v)
        return cls(**values)


def _nanmean(xs: Sequence[float]) -> float | None:
    kept = [x for x in xs if not math.isnan(x)]
    return sum(kept) / len(kept) if kept else None


@dataclass
class LayerGroundTruth:
    """Ground-truth scores of one layer's units; see the module docstring for definitions.

    Attributes:
        layer: the layer's name.
        units: one :class:`UnitGroundTruth` per unit, in unit order.
        concepts: the ground-truth concept names (columns of ``auprc``).
        base_rates: the share of probe images with each concept.
        auprc: ``(K, C)`` AUPRC of every unit for every concept.
        bar: the monosemanticity bar on the best AUPRC.
        seed: the seed of the fit / held-out split.
        images: probe images, ``(all, fit, held_out)``.
    """

    layer: str
    units: list[UnitGroundTruth]
    concepts: list[str]
    base_rates: list[float]
    auprc: Tensor = field(repr=False)
    bar: float = MONOSEMANTIC_BAR
    seed: int = 0
    images: tuple[int, int, int] = (0, 0, 0)

    def summary(self) -> dict[str, Any]:
        """Layer figures: ``units``, ``labels_known``, ``label_is_best`` (share of units),
        the mean label ``auprc`` / ``iou`` / ``f1`` and ``base_rate`` (unknown labels count
        as 0, NaN IoU/F1 are skipped), ``monosemantic`` (share of units whose best AUPRC is
        above ``bar``), ``mean_best_auprc`` and ``bar``.

        Example:
            >>> result.summary()["monosemantic"]  # doctest: +SKIP
            0.75
        """
        units = self.units
        n = len(units)
        known = [u for u in units if u.label_known]
        return {
            "layer": self.layer,
            "units": n,
            "labels_known": len(known),
            "label_is_best": sum(u.label_is_best for u in units) / n,
            "mean_label_auprc": sum(u.label_auprc for u in units) / n,
            "mean_label_iou": _nanmean([u.label_iou for u in units]),
            "mean_label_f1": _nanmean([u.label_f1 for u in units]),
            "mean_label_base_rate": _nanmean([u.label_base_rate or 0.0 for u in known]),
            "monosemantic": sum(u.best_auprc > self.bar for u in units) / n,
            "mean_best_auprc": sum(u.best_auprc for u in units) / n,
            "bar": self.bar,
        }

    def rows(self) -> list[dict[str, Any]]:
        """One JSON-safe dict per unit, with the layer name first."""
        return [{"layer": self.layer, **u.row()} for u in self.units]

    def table(self, limit: int | None = 20) -> str:
        """The summary line and the first ``limit`` units (all when ``None``) as text."""
        s = self.summary()
        lines = [_summary_line(s)]
        lines.append(
            f"{'unit':>5}  {'label':<24} {'AUPRC':>6} {'IoU':>6} {'F1':>6}  "
            f"{'best concept':<24} {'AUPRC':>6}"
        )
        for u in self.units[: limit if limit is not None else len(self.units)]:
            mark = "" if u.label_is_best else " *"
            label = u.label if u.label_known else f"{u.label} (not a concept)"
            lines.append(
                f"{u.unit:>5}  {label[:24]:<24} {u.label_auprc:>6.3f} {_fmt(u.label_iou):>6} "
                f"{_fmt(u.label_f1):>6}  {u.best_concept[:24]:<24} {u.best_auprc:>6.3f}{mark}"
            )
        if limit is not None and len(self.units) > limit:
            lines.append(f"... {len(self.units) - limit} more units")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: settings, summary, units (full precision) and the AUPRC matrix (6
        significant digits)."""
        return {
            "layer": self.layer,
            "bar": self.bar,
            "seed": self.seed,
            "images": list(self.images),
            "concepts": self.concepts,
            "base_rates": [_number(x) for x in self.base_rates],
            "summary": {
                k: _number(v) if isinstance(v, float) else v for k, v in self.summary().items()
            },
            "units": [u.row() for u in self.units],
            "auprc": [[_number(x, 6) for x in row] for row in self.auprc.tolist()],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerGroundTruth:
        """Inverse of :meth:`to_dict`."""
        return cls(
            layer=data["layer"],
            units=[UnitGroundTruth.from_row(r) for r in data["units"]],
            concepts=list(data["concepts"]),
            base_rates=[float(x) for x in data["base_rates"]],
            auprc=torch.tensor(data["auprc"], dtype=torch.float64).reshape(
                len(data["units"]), len(data["concepts"])
            ),
            bar=float(data["bar"]),
            seed=int(data["seed"]),
            images=tuple(int(x) for x in data["images"]),  # type: ignore[arg-type]
        )

    def save(self, out: str | Path) -> Path:
        """Write this layer as a one-layer :class:`GroundTruthReport` into folder ``out``."""
        return GroundTruthReport({self.layer: self}).save(out)

    @classmethod
    def load(cls, out: str | Path, layer: str | None = None) -> LayerGroundTruth:
        """Read one layer (the only one, or ``layer``) from a saved report folder."""
        report = GroundTruthReport.load(out)
        if layer is None:
            if len(report.layers) != 1:
                raise InputError(
                    f"{out} holds layers {', '.join(report.layers)}; pass layer= to pick one"
                )
            return next(iter(report.layers.values()))
        return report.layer(layer)


def _fmt(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.3f}"


def _summary_line(s: Mapping[str, Any]) -> str:
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}%"

    def num(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    return (
        f"{s['layer']}: {s['units']} units, {s['labels_known']} labels are ground-truth "
        f"concepts; label is best concept {pct(s['label_is_best'])}; label AUPRC "
        f"{num(s['mean_label_auprc'])} (base rate {num(s['mean_label_base_rate'])}), IoU "
        f"{num(s['mean_label_iou'])}, F1 {num(s['mean_label_f1'])}; monosemantic (best AUPRC > "
        f"{s['bar']:g}) {pct(s['monosemantic'])}, mean best AUPRC {num(s['mean_best_auprc'])}"
    )


@dataclass
class GroundTruthReport(
    LayeredReport,
    files=(REPORT_JSON, REPORT_CSV),
    what="ground-truth report",
    redo="discover eval-descriptions DISSECTION --ground-truth",
    layer_type=LayerGroundTruth,
):
    """Ground-truth scores of several layers, with how they were computed; saved as
    ``groundtruth.json`` (everything) and ``groundtruth_units.csv`` (one row per unit).

    Attributes:
        layers: ``{layer: LayerGroundTruth}`` in layer order.
        meta: provenance: the dissection folder, similarity and concept set, the digest of
            the dissection it scores (``dissection_digest``) and, from
            :func:`evaluate_groundtruth`, the probe and the concepts it dropped.
        folder: the folder it was saved to or loaded from, if any (not saved).

    Example:
        >>> GroundTruthReport.load(report.save("out")).table()  # doctest: +SKIP
    """

    layers: dict[str, LayerGroundTruth]

    def table(self) -> str:
        """One summary line per layer."""
        return "\n".join(_summary_line(s) for s in self.summary())


# --------------------------------------------------------------------------- scoring


def _match_labels(
    labels: Sequence[str], concepts: Sequence[str], label_map: Mapping[str, str] | None
) -> list[int]:
    """The concept column each label names, or -1."""
    exact = {c: i for i, c in enumerate(concepts)}
    loose: dict[str, int] = {}
    for i, c in enumerate(concepts):
        loose.setdefault(c.strip().lower(), i)
    if label_map:
        unknown = sorted(set(label_map.values()) - set(exact))
        if unknown:
            raise InputError(
                f"label_map maps to names that are not concepts: {', '.join(map(repr, unknown[:5]))}"
            )
    out = []
    for label in labels:
        if label_map and label in label_map:
            out.append(exact[label_map[label]])
        elif label in exact:
            out.append(exact[label])
        else:
            out.append(loose.get(str(label).strip().lower(), -1))
    return out


@torch.no_grad()
def groundtruth_scores(
    activations: Tensor,
    annotations: Tensor,
    concepts: Sequence[str],
    labels: Sequence[str],
    *,
    layer: str = "layer",
    bar: float = MONOSEMANTIC_BAR,
    seed: int = 0,
    label_map: Mapping[str, str] | None = None,
    chunk_size: int | None = None,
) -> LayerGroundTruth:
    """Score every unit's label against ground-truth annotations (module docstring, part A).

    Args:
        activations: ``Q``, ``(N, K)``: one column per unit (or any unit-like column).
        annotations: ``A``, ``(N, C)``, binary: ground-truth concepts of the same images.
        concepts: the ``C`` concept names.
        labels: the ``K`` unit labels.
        layer: the layer's name, for the report.
        bar: the monosemanticity bar on the best AUPRC, in ``[0, 1)``.
        seed: seeds the fit / held-out split of the probe.
        label_map: ``{label: concept name}`` for labels that name a concept differently.
        chunk_size: units per chunk (default: about ``2**23`` unit-image entries).

    Raises:
        ValueError: shapes that do not match (naming the parameter), non-binary annotations,
            an empty (or all-positive) concept, a bad ``bar``.

    Example:
        >>> A = (torch.rand(500, 3) < 0.3).float()
        >>> r = groundtruth_scores(A[:, [2, 0]], A, ["x", "y", "z"], ["z", "y"])
        >>> [u.label_is_best for u in r.units], r.summary()["monosemantic"]
        ([True, False], 1.0)
    """
    Q, A = _check_inputs(activations, annotations, concepts)
    N, K = Q.shape
    concepts = [str(c) for c in concepts]
    labels = [str(label) for label in labels]
    if len(labels) != K:
        raise InputError(f"labels: {len(labels)} labels for {K} units (columns of activations)")
    if not 0.0 <= bar < 1.0:
        raise InputError(f"bar must be in [0, 1), got {bar!r}")
    column = torch.tensor(_match_labels(labels, concepts, label_map), dtype=torch.long)
    ap = average_precision(Q, A, chunk_size=chunk_size)
    fit, held_out = probe_split(N, seed=seed)
    threshold, iou, f1 = threshold_metrics(Q, A, fit=fit, held_out=held_out, chunk_size=chunk_size)
    base = (A.sum(dim=0).double() / N).tolist()
    best = ap.argmax(dim=1)
    units = []
    for k in range(K):
        b, c = int(best[k]), int(column[k])
        known = c >= 0
        units.append(
            UnitGroundTruth(
                unit=k,
                label=labels[k],
                label_concept=concepts[c] if known else None,
                label_auprc=float(ap[k, c]) if known else 0.0,
                label_iou=float(iou[k, c]) if known else 0.0,
                label_f1=float(f1[k, c]) if known else 0.0,
                threshold=float(threshold[k, c]) if known else None,
                label_base_rate=base[c] if known else None,
                best_concept=concepts[b],
                best_auprc=float(ap[k, b]),
                best_iou=float(iou[k, b]),
                best_f1=float(f1[k, b]),
                label_is_best=known and bool(ap[k, c] >= ap[k, b]),
            )
        )
    return LayerGroundTruth(
        layer=layer,
        units=units,
        concepts=concepts,
        base_rates=base,
        auprc=ap,
        bar=float(bar),
        seed=seed,
        images=(N, len(fit), len(held_out)),
    )


def groundtruth_dissection(
    dissection: Dissection,
    annotations: Tensor,
    concepts: Sequence[str],
    *,
    layers: Sequence[str] | None = None,
    bar: float = MONOSEMANTIC_BAR,
    seed: int = 0,
    label_map: Mapping[str, str] | None = None,
) -> GroundTruthReport:
    """:func:`groundtruth_scores` for every layer (or ``layers``) of a dissection, from the
    ``Q`` it carries and its labels. ``annotations`` must describe the dissection's probe
    images, in probe order.

    Example:
        >>> probe = ShapesWorld(n=2000, split="val")  # doctest: +SKIP
        >>> dissection = discover.dissect(model, probe=probe, ...)  # doctest: +SKIP
        >>> report = groundtruth_dissection(dissection, probe.concepts_table(),
        ...                                 probe.concept_names)  # doctest: +SKIP
        >>> print(report.table())  # doctest: +SKIP
    """
    names = list(layers) if layers is not None else dissection.layers
    out = {}
    for name in names:
        Q = dissection.probe_activations(name)
        if Q.shape[0] != annotations.shape[0]:
            raise InputError(
                f"annotations has {annotations.shape[0]} rows but the dissection's probe has "
                f"{Q.shape[0]} images (layer {name!r}); annotate the same probe, in order"
            )
        out[name] = groundtruth_scores(
            Q,
            annotations,
            concepts,
            dissection.labels(name),
            layer=name,
            bar=bar,
            seed=seed,
            label_map=label_map,
        )
    meta = {
        "dissection": str(dissection.folder) if dissection.folder else None,
        "similarity": dissection.config.similarity,
        "concepts": dissection.config.concepts,
        "dissection_digest": _dissection_digest(dissection, names),
    }
    return GroundTruthReport(out, meta)


def _dissection_digest(dissection: Dissection, layers: Sequence[str]) -> str:
    """SHA-256 of what ground-truth scores depend on: each layer's name, labels and probe
    activations ``Q`` (as float32, the way a dissection saves them)."""
    digest = hashlib.sha256()
    for name in layers:
        Q = dissection.probe_activations(name).detach().float().cpu().contiguous()
        digest.update(json.dumps([name, dissection.labels(name), list(Q.shape)]).encode())
        digest.update(Q.numpy().tobytes())
    return digest.hexdigest()


def evaluate_groundtruth(
    dissection: Dissection | str | os.PathLike[str],
    probe: Dataset,
    *,
    layers: Sequence[str] | None = None,
    bar: float = MONOSEMANTIC_BAR,
    seed: int = 0,
    label_map: Mapping[str, str] | None = None,
    save: bool = True,
) -> GroundTruthReport:
    """Ground-truth scores of a dissection's labels on its own annotated probe set.

    Checks that ``probe`` is the set the dissection was made on (its content fingerprint, or
    its size), takes its annotation table (:func:`probe_annotations`), drops the concepts
    with no positive image (or only positives) on it, which cannot be scored (listed in
    ``meta["dropped_concepts"]``; a label naming one counts as not a concept), and runs
    :func:`groundtruth_dissection`. Nothing runs the model: ``Q`` comes from the dissection.

    Args:
        dissection: a :class:`~discover.dissection.core.Dissection` or its saved folder.
        probe: the raw probe set the dissection was made on, with annotations
            (``concepts_table()`` and ``concept_names``, like ShapesWorld).
        layers: the layers to score (default: all of the dissection's).
        bar: the monosemanticity bar on the best AUPRC.
        seed: seeds the fit / held-out split of the probe.
        label_map: ``{label: concept name}`` for labels that name a concept differently.
        save: when ``dissection`` is a folder, write the report into it
            (``groundtruth.json``, ``groundtruth_units.csv``), where the HTML report reads it.

    Raises:
        ValueError: a probe without annotations, a probe that is not the dissection's, an
            unknown layer, no scorable concept.

    Example:
        >>> probe = ShapesWorld(n=2000, image_size=32, split="val")  # doctest: +SKIP
        >>> report = evaluate_groundtruth("runs/shapes-u8/dissection", probe)  # doctest: +SKIP
        >>> print(report.table())  # doctest: +SKIP
    """
    folder = None
    if isinstance(dissection, (str, os.PathLike)):
        folder = Path(dissection)
        dissection = Dissection.load(folder)
    elif not isinstance(dissection, Dissection):
        raise InputError(
            f"dissection: expected a Dissection or its saved folder, got "
            f"{type(dissection).__name__}"
        )
    table, names = probe_annotations(probe)
    table = _binary_table("probe.concepts_table()", table)
    fingerprint = dissection.check_probe(probe)
    counts = table.sum(dim=0)
    keep = (counts > 0) & (counts < table.shape[0])
    if not keep.any():
        raise InputError(
            f"probe: none of its {len(names)} annotated concepts has both positive and "
            f"negative images among its {table.shape[0]} images; nothing can be scored"
        )
    kept = [name for name, k in zip(names, keep.tolist(), strict=True) if k]
    dropped = [name for name, k in zip(names, keep.tolist(), strict=True) if not k]
    report = groundtruth_dissection(
        dissection,
        table[:, keep],
        kept,
        layers=layers,
        bar=bar,
        seed=seed,
        label_map=label_map,
    )
    about = dissection.about
    report.meta.update(
        probe={
            "type": type(probe).__name__,
            "images": len(probe),
            "fingerprint": fingerprint or about.probe_fingerprint,
            "concepts": len(names),
        },
        dropped_concepts=dropped,
    )
    if save and folder is not None:
        report.save(folder)
    return report


def saved_groundtruth(dissection: Dissection) -> GroundTruthReport | None:
    """The ground-truth report saved in ``dissection``'s folder by :func:`evaluate_groundtruth`,
    or ``None`` when there is none. A report that no longer describes the dissection (its
    labels or probe activations changed since) or cannot be read is ignored with a warning.

    Example:
        >>> report = saved_groundtruth(Dissection.load("runs/shapes-u8/dissection"))  # doctest: +SKIP
    """
    if dissection.folder is None or not (Path(dissection.folder) / REPORT_JSON).is_file():
        return None
    rerun = f"`discover eval-descriptions {dissection.folder} --ground-truth` with its probe"
    try:
        report = GroundTruthReport.load(dissection.folder)
    except ValueError as error:
        warnings.warn(f"{error}; ignoring it", UserWarning, stacklevel=2)
        return None
    layers = list(report.layers)
    stale = any(name not in dissection.layers for name in layers)
    if not stale:
        digest = report.meta.get("dissection_digest")
        if digest:
            try:
                stale = digest != _dissection_digest(dissection, layers)
            except ValueError:  # the dissection holds no activations: compare the labels
                digest = None
        if not digest:
            stale = any(
                [u.label for u in report.layers[name].units] != dissection.labels(name)
                for name in layers
            )
    if stale:
        warnings.warn(
            f"the ground-truth report in {dissection.folder} was computed from another "
            f"dissection (labels or activations differ); ignoring it. Compute it again: {rerun}",
            UserWarning,
            stacklevel=2,
        )
        return None
    return report


# --------------------------------------------------------------------------- sanity tests


def corrupt_labels(
    columns: Tensor, fraction: float, *, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """The missing-labels and extra-labels versions of binary concept ``columns`` ``(N, K)``.

    ``missing``: in each column, ``max(1, round(fraction * #positives))`` random positives set
    to 0; ``extra``: ``max(1, round(fraction * #negatives))`` random negatives set to 1.

    Example:
        >>> c = torch.tensor([[1.0], [1.0], [1.0], [1.0], [0.0], [0.0], [0.0], [0.0]])
        >>> missing, extra = corrupt_labels(c, 0.5)
        >>> int(missing.sum()), int(extra.sum())
        (2, 6)
    """
    if not 0.0 < fraction < 1.0:
        raise InputError(f"fraction must be in (0, 1), got {fraction!r}")
    A = _binary_table("columns", columns)
    generator = generator or torch.Generator().manual_seed(0)
    noise = torch.rand(A.shape, generator=generator)
    out = []
    for value, pool in ((1.0, A == 1), (0.0, A == 0)):
        count = pool.sum(dim=0)
        flip = (fraction * count.double()).round().clamp_min(1).long()
        # the ``flip`` members of ``pool`` with the smallest random keys, per column
        keys = torch.where(pool, noise, 2.0)
        rank = keys.argsort(dim=0).argsort(dim=0)
        chosen = (rank < flip) & pool
        out.append(torch.where(chosen, 1.0 - value, A))
    return out[0], out[1]


@dataclass
class SanityConfig:
    """Every setting of :func:`similarity_sanity`; saved with its results.

    Attributes:
        fractions: corruption fractions ``f``.
        seeds: one case per seed and ``f`` (new planted data, new corruptions).
        similarities: functions to test (default: all registered).
        similarity_params: ``{similarity: {param: value}}``.
        planted_units: planted units (and concepts) per case; 0 skips the planted source.
        planted_images: probe images of the planted source.
        planted_noise: noise of the planted units (concept-column standard deviations).
        planted_variant: activation variant, a name in ``planted.VARIANTS``.
        base_rates: the range of the planted concepts' base rates.
        distractors: extra random binary columns in the planted ``P'``.
        pass_bar: the pass rate a function needs to pass a test.
    """

    fractions: tuple[float, ...] = (0.1, 0.25, 0.5)
    seeds: tuple[int, ...] = (0, 1, 2)
    similarities: tuple[str, ...] = ()
    similarity_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    planted_units: int = 50
    planted_images: int = 2000
    planted_noise: float = 1.0
    planted_variant: str = "dense"
    base_rates: tuple[float, float] = (0.05, 0.3)
    distractors: int = 50
    pass_bar: float = SANITY_PASS_BAR

    def __post_init__(self) -> None:
        self.fractions = tuple(float(f) for f in self.fractions)
        self.seeds = tuple(int(s) for s in self.seeds)
        self.similarities = tuple(self.similarities) or tuple(SIMILARITIES)
        self.base_rates = (float(self.base_rates[0]), float(self.base_rates[1]))
        for name in self.similarities:
            get_similarity(name)  # raises with suggestions
        for name, params in self.similarity_params.items():
            if name not in self.similarities:
                raise InputError(f"similarity_params names {name!r}, which is not tested")
            check_options(get_similarity(name), params, f"similarity {name!r}")
        if not self.fractions or any(not 0 < f < 1 for f in self.fractions):
            raise InputError(f"fractions must be in (0, 1), got {self.fractions}")
        if not self.seeds:
            raise InputError("seeds: need at least one seed")
        lo, hi = self.base_rates
        if not 0 < lo <= hi < 1:
            raise InputError(f"base_rates must satisfy 0 < low <= high < 1, got {self.base_rates}")
        if self.planted_units < 0 or self.distractors < 0 or self.planted_images < 10:
            raise InputError(
                "need planted_units >= 0, distractors >= 0 and planted_images >= 10, got "
                f"{self.planted_units}, {self.distractors}, {self.planted_images}"
            )
        if not 0 < self.pass_bar <= 1:
            raise InputError(f"pass_bar must be in (0, 1], got {self.pass_bar}")
        PlantedConfig(variants=(self.planted_variant,))  # checks the variant name

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SanityResult:
    """Pass rates of the missing- and extra-labels tests.

    Attributes:
        rows: ``similarity, source, test ("missing" / "extra"), fraction, cases, passed,
            tied, rate`` for every combination (cases = units x seeds; ``tied``: the true
            and the corrupted concept scored exactly equal, a failure).
        config: the :class:`SanityConfig` as a dict.
        meta: per source: images, units; the definition; timing.
    """

    rows: list[dict[str, Any]]
    config: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def sources(self) -> list[str]:
        return list(dict.fromkeys(r["source"] for r in self.rows))

    @property
    def similarities(self) -> list[str]:
        return list(dict.fromkeys(r["similarity"] for r in self.rows))

    def rate(
        self,
        similarity: str,
        source: str,
        test: str,
        fraction: float | None = None,
        *,
        count: str = "passed",
    ) -> float:
        """The pass rate (``count="tied"``: the tie rate) over all fractions (or one) and
        seeds."""
        rows = [
            r
            for r in self.rows
            if (r["similarity"], r["source"], r["test"]) == (similarity, source, test)
            and (fraction is None or r["fraction"] == fraction)
        ]
        if not rows:
            raise InputError(f"no rows for {similarity!r}, {source!r}, {test!r}, {fraction!r}")
        return sum(r[count] for r in rows) / sum(r["cases"] for r in rows)

    def summary(self) -> list[dict[str, Any]]:
        """Per similarity: the pass rate of each (source, test) over all fractions and seeds,
        and ``passes``: every rate is at least ``pass_bar``."""
        bar = self.config["pass_bar"]
        out = []
        for name in self.similarities:
            entry: dict[str, Any] = {"similarity": name}
            for source in self.sources:
                for test in ("missing", "extra"):
                    entry[f"{source} {test}"] = self.rate(name, source, test)
            entry["passes"] = all(v >= bar for k, v in entry.items() if k != "similarity")
            out.append(entry)
        return out

    def verdicts(self) -> dict[str, bool]:
        """``{similarity: passes both tests on every source}``."""
        return {s["similarity"]: s["passes"] for s in self.summary()}

    def table(self, by_fraction: bool = False, count: str = "passed") -> str:
        """A Markdown table of pass rates (%; ``count="tied"``: tie rates): one row per
        similarity (``by_fraction``: per similarity and fraction), one column per source and
        test, and (pass rates over all fractions) whether the function passes."""
        bar = self.config["pass_bar"]
        default = self.meta.get("default_similarity")
        header = ["similarity"] + (["f"] if by_fraction else [])
        header += [f"{s} {t}" for s in self.sources for t in ("missing", "extra")]
        verdict = not by_fraction and count == "passed"
        header += [f"passes (>= {100 * bar:g}%)"] if verdict else []
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name in self.similarities:
            shown = f"{name} (default)" if name == default else name
            fractions = self.config["fractions"] if by_fraction else [None]
            for f in fractions:
                cells = [shown] + ([f"{f:g}"] if by_fraction else [])
                cells += [
                    f"{100 * self.rate(name, s, t, f, count=count):.1f}"
                    for s in self.sources
                    for t in ("missing", "extra")
                ]
                if verdict:
                    cells.append("yes" if self.verdicts()[name] else "no")
                lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "summary": self.summary(),
            "config": self.config,
            "meta": self.meta,
        }

    def save(self, out: str | Path) -> Path:
        """Write ``similarity_sanity.json`` and ``similarity_sanity.csv`` into folder ``out``;
        returns the JSON path."""
        folder = write_files(
            out,
            {
                SANITY_JSON: json.dumps(self.to_dict(), indent=1) + "\n",
                SANITY_CSV: csv_text(self.rows),
            },
        )
        return folder / SANITY_JSON

    @classmethod
    def load(cls, out: str | Path) -> SanityResult:
        """Read a folder written by :meth:`save` (or the JSON file itself)."""
        data = read_json(out, "similarity sanity result", name=SANITY_JSON)
        return cls(list(data["rows"]), dict(data["config"]), dict(data.get("meta") or {}))


def _planted_case(config: SanityConfig, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Planted concepts ``(N, K)``, their units ``(N, K)`` and distractors ``(N, D)``."""
    g = torch.Generator().manual_seed(seed)
    N, K, D = config.planted_images, config.planted_units, config.distractors
    lo, hi = config.base_rates

    def binary(n: int) -> Tensor:
        rates = lo + (hi - lo) * torch.rand(n, generator=g)
        cols = (torch.rand(N, n, generator=g) < rates).float()
        cols[torch.randint(0, N, (n,), generator=g), torch.arange(n)] = 1.0  # never empty
        return cols

    concepts, distractors = binary(K), binary(D)
    planted = PlantedConfig(variants=(config.planted_variant,), seed=seed)
    units = planted_neurons(
        concepts,
        torch.arange(K),
        config.planted_variant,
        config.planted_noise,
        config=planted,
        generator=g,
    )
    return concepts, units, distractors


@torch.no_grad()
def similarity_sanity(
    annotations: Tensor | None = None,
    config: SanityConfig | None = None,
    *,
    source: str = "annotations",
    progress: bool = False,
    **overrides: Any,
) -> SanityResult:
    """Missing- and extra-labels sanity tests of the similarity functions (module docstring,
    part B), on planted units and, when given, on ``annotations`` columns as their own units.

    Args:
        annotations: an optional binary ``(N, C)`` ground-truth table (e.g. ShapesWorld's
            ``concepts_table()``); columns with fewer than 2 positives or negatives are
            skipped (a corruption would empty them).
        config: settings; keyword ``overrides`` replace its fields.
        source: the name of the annotation source in the results (e.g. ``"shapes"``).
        progress: print one line per similarity function.

    Example:
        >>> r = similarity_sanity(planted_units=10, planted_images=300, seeds=(0,),
        ...                       fractions=(0.5,), similarities=("cos",))
        >>> r.verdicts()
        {'cos': True}
    """
    if config is None:
        config = SanityConfig(**overrides)
    elif overrides:
        config = SanityConfig(**{**config.to_dict(), **overrides})
    if source == "planted":
        raise InputError("source: 'planted' is the name of the built-in source; pick another")
    cases: list[tuple[str, int, float, Tensor, Tensor]] = []  # source, seed, f, Q, P'
    meta: dict[str, Any] = {"sources": {}}
    for seed in config.seeds:
        if config.planted_units:
            concepts, units, distractors = _planted_case(config, seed)
            for i, f in enumerate(config.fractions):
                g = torch.Generator().manual_seed(1000 * seed + i)
                missing, extra = corrupt_labels(concepts, f, generator=g)
                P = torch.stack([concepts, missing, extra], dim=2).flatten(1)
                cases.append(("planted", seed, f, units, torch.cat([P, distractors], dim=1)))
            meta["sources"]["planted"] = {
                "images": config.planted_images,
                "units": config.planted_units,
                "distractors": config.distractors,
            }
    if annotations is not None:
        A = _binary_table("annotations", annotations)
        positives = A.sum(dim=0)
        keep = (positives >= 2) & (positives <= A.shape[0] - 2)
        if not keep.any():
            raise InputError("annotations: no column has at least 2 positives and 2 negatives")
        A = A[:, keep]
        for seed in config.seeds:
            for i, f in enumerate(config.fractions):
                g = torch.Generator().manual_seed(1000 * seed + i + 500)
                missing, extra = corrupt_labels(A, f, generator=g)
                P = torch.stack([A, missing, extra], dim=2).flatten(1)
                cases.append((source, seed, f, A, P))
        meta["sources"][source] = {
            "images": A.shape[0],
            "units": int(keep.sum()),
            "skipped_columns": int((~keep).sum()),
        }
    if not cases:
        raise InputError("nothing to test: planted_units is 0 and no annotations were given")
    tally: dict[tuple[str, str, str, float], list[int]] = {}
    seconds: dict[str, float] = {}
    for name in config.similarities:
        fn = get_similarity(name)
        params = config.similarity_params.get(name, {})
        t0 = time.perf_counter()
        for src, _, f, Q, P in cases:
            S = fn(P, Q, **params).double()
            K = Q.shape[1]
            own = S[torch.arange(K)[:, None], 3 * torch.arange(K)[:, None] + torch.arange(3)]
            for test, col in (("missing", 1), ("extra", 2)):
                entry = tally.setdefault((name, src, test, f), [0, 0, 0])
                entry[0] += K
                entry[1] += int((own[:, 0] > own[:, col]).sum())
                entry[2] += int((own[:, 0] == own[:, col]).sum())
        seconds[name] = round(time.perf_counter() - t0, 3)
        if progress:
            print(f"similarity_sanity: {name} done in {seconds[name]:.1f} s", flush=True)
    rows = [
        {
            "similarity": name,
            "source": src,
            "test": test,
            "fraction": f,
            "cases": total,
            "passed": passed,
            "tied": tied,
            "rate": passed / total,
        }
        for (name, src, test, f), (total, passed, tied) in tally.items()
    ]
    meta.update(
        default_similarity=DEFAULT_SIMILARITY,
        seconds=seconds,
        definition=(
            "unit k detects binary concept c; c_missing = c with max(1, round(f*#pos)) random "
            "positives set to 0; c_extra = c with max(1, round(f*#neg)) random negatives set "
            "to 1; P' = [c, c_missing, c_extra] for every unit of the case (+ random binary "
            "distractors for planted units); pass when S[k,c] > S[k,c_missing] (missing) / "
            "S[k,c] > S[k,c_extra] (extra), strictly"
        ),
    )
    return SanityResult(rows, config.to_dict(), meta)
