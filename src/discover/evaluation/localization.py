"""Where units fire: Network-Dissection IoU against pixel masks (Bau et al., CVPR 2017).

For a layer with spatial extent (a conv map, or a ViT/DeiT token layer's patch grid; see
:func:`~discover.dissection.spatial.spatial_maps`) and a probe whose images carry a pixel
mask per concept (``probe.concept_masks(i)``, as :class:`~discover.data.ShapesWorld` has):

1. **Threshold.** Each unit's threshold ``T_k`` is its top :data:`TOP_QUANTILE` (0.5 %)
   quantile over every position of every probe image, taken on the layer's own map
   resolution (Network Dissection's rule), exactly: a streaming top-``m`` keeps the
   ``m = ceil(0.005 * N * h * w)`` largest values per unit, and ``T_k`` is the smallest of
   them.
2. **Masks.** Each map is upsampled to the probe image's size (bilinear, as Network
   Dissection) and thresholded: ``A_k(x) = up(map_k)(x) > T_k``. The model sees the
   probe through its own transform; the maps are aligned with the raw image assuming that
   transform resizes without cropping (true of Shapes probes at any size).
3. **IoU.** ``IoU_{k,c} = sum_i |A_ik & M_ic| / sum_i |A_ik | M_ic|`` over the probe, with
   ``M_ic`` concept ``c``'s pixels in image ``i`` (empty where ``c`` is absent).

A unit's **best-IoU concept** is the concept of highest IoU; it is a **detector** of that
concept when the IoU is above :data:`DETECTOR_IOU` (0.04, Network Dissection's criterion),
and a layer's **unique detectors** is the number of distinct concepts its detectors detect.
``label_is_best_iou`` is the fraction of a layer's labelled units whose text label (the
dissection's, from image-text similarity) is their best-IoU concept.

Baselines, computed in the same pass so that every figure has one next to it:

* **shuffled masks**: each image's maps are scored against another image's masks (a
  fixed derangement of the probe), which keeps every statistic of the maps and the masks
  but breaks where they are;
* **random units**: each unit's maps are replaced by uniform noise of the same size,
  thresholded at the same quantile (a unit that fires at 0.5 % of places at random).

Two passes over the probe run the model (thresholds, then IoU); memory is
``K x m`` for the thresholds and one batch of upsampled masks, whatever the probe size.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from discover._utils import require_int
from discover.dissection.layers import resolve_layers
from discover.dissection.recording import model_view
from discover.dissection.result import Dissection
from discover.dissection.spatial import spatial_maps
from discover.errors import InputError
from discover.evaluation.layered import LayeredReport
from discover.nn.hooks import capture
from discover.nn.lwta import capture_winners, eval_policy

__all__ = [
    "DETECTOR_IOU",
    "LOCALIZATION_CSV",
    "LOCALIZATION_JSON",
    "TOP_QUANTILE",
    "LayerLocalization",
    "LocalizationReport",
    "evaluate_localization",
    "iou_labelled",
    "localization_iou",
    "saved_localization",
]

DETECTOR_IOU = 0.04
"""A unit detects its best-IoU concept when the IoU is above this (Network Dissection)."""
TOP_QUANTILE = 0.005
"""The fraction of each unit's map values (over the probe) above its threshold."""
LOCALIZATION_JSON = "localization.json"
LOCALIZATION_CSV = "localization_units.csv"
_ENTRIES = 2**24  # upsampled map entries per chunk of units
BASELINES = ("shuffled_masks", "random_units")


@dataclass
class LayerLocalization:
    """Network-Dissection IoU of one layer's units with every concept's pixel masks.

    ``iou`` ``(K, M)`` over ``concepts``; ``thresholds`` ``(K,)``; ``labels`` the units'
    text labels (``None``: unlabelled); ``baselines`` ``{name: (K, M) IoU}``.
    """

    layer: str
    concepts: list[str]
    iou: Tensor
    thresholds: Tensor
    labels: list[str | None]
    baselines: dict[str, Tensor] = field(default_factory=dict)
    map_size: tuple[int, int] = (0, 0)
    note: str = ""

    @property
    def best_iou(self) -> Tensor:
        """``(K,)`` each unit's highest IoU."""
        return self.iou.max(dim=1).values

    @property
    def best_concepts(self) -> list[str]:
        """Each unit's best-IoU concept (the first of equal ones, in concept order)."""
        return [self.concepts[j] for j in self.iou.argmax(dim=1).tolist()]

    @staticmethod
    def _detectors(iou: Tensor, concepts: Sequence[str]) -> tuple[int, list[str]]:
        best, which = iou.max(dim=1)
        detected = sorted(
            {
                concepts[j]
                for j, b in zip(which.tolist(), best.tolist(), strict=True)
                if b > DETECTOR_IOU
            }
        )
        return int((best > DETECTOR_IOU).sum()), detected

    def summary(self) -> dict[str, Any]:
        """Per-layer figures, each with its baselines.

        Example:
            >>> report.layers["layer2.0.act2"].summary()["unique_detectors"]  # doctest: +SKIP
            7
        """
        detectors, detected = self._detectors(self.iou, self.concepts)
        labelled = [
            (label, best)
            for label, best in zip(self.labels, self.best_concepts, strict=True)
            if label is not None
        ]
        row: dict[str, Any] = {
            "layer": self.layer,
            "units": len(self.labels),
            "map_size": list(self.map_size),
            "mean_best_iou": float(self.best_iou.mean()),
            "detectors": detectors,
            "unique_detectors": len(detected),
            "detected_concepts": detected,
            "labelled_units": len(labelled),
            "label_is_best_iou": (
                sum(label == best for label, best in labelled) / len(labelled) if labelled else None
            ),
        }
        for name, iou in self.baselines.items():
            n, found = self._detectors(iou, self.concepts)
            row[name] = {
                "mean_best_iou": float(iou.max(dim=1).values.mean()),
                "detectors": n,
                "unique_detectors": len(found),
            }
        return row

    def rows(self) -> list[dict[str, Any]]:
        """One row per unit: best concept and IoU, label, whether they agree, threshold."""
        best_iou = self.best_iou.tolist()
        return [
            {
                "layer": self.layer,
                "unit": k,
                "best_iou_concept": concept,
                "best_iou": round(best_iou[k], 6),
                "detector": best_iou[k] > DETECTOR_IOU,
                "label": label,
                "label_is_best_iou": None if label is None else label == concept,
                "threshold": float(self.thresholds[k]),
            }
            for k, (concept, label) in enumerate(zip(self.best_concepts, self.labels, strict=True))
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "concepts": self.concepts,
            "labels": self.labels,
            "map_size": list(self.map_size),
            "note": self.note,
            "thresholds": self.thresholds.tolist(),
            "iou": [[round(v, 6) for v in row] for row in self.iou.tolist()],
            "baselines": {
                name: [[round(v, 6) for v in row] for row in iou.tolist()]
                for name, iou in self.baselines.items()
            },
            "summary": self.summary(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerLocalization:
        return cls(
            layer=data["layer"],
            concepts=list(data["concepts"]),
            iou=torch.tensor(data["iou"], dtype=torch.float32),
            thresholds=torch.tensor(data["thresholds"], dtype=torch.float32),
            labels=list(data["labels"]),
            baselines={
                name: torch.tensor(v, dtype=torch.float32)
                for name, v in (data.get("baselines") or {}).items()
            },
            map_size=tuple(data.get("map_size") or (0, 0)),
            note=data.get("note", ""),
        )


@dataclass
class LocalizationReport(
    LayeredReport,
    files=(LOCALIZATION_JSON, LOCALIZATION_CSV),
    what="localization report",
    redo="discover eval-descriptions DISSECTION --localization --run RUN",
    layer_type=LayerLocalization,
):
    """Localization of several layers (``{layer: LayerLocalization}``), with provenance;
    saved as ``localization.json`` and ``localization_units.csv``."""

    layers: dict[str, LayerLocalization]

    def table(self) -> str:
        """One line per layer: the figures and, in brackets, the two baselines."""
        lines = []
        for s in self.summary():
            shuffled, rand = s["shuffled_masks"], s["random_units"]
            agree = "-" if s["label_is_best_iou"] is None else f"{s['label_is_best_iou']:.0%}"
            lines.append(
                f"{s['layer']}: {s['units']} units, map {s['map_size'][0]}x{s['map_size'][1]}; "
                f"mean best IoU {s['mean_best_iou']:.3f} (shuffled masks "
                f"{shuffled['mean_best_iou']:.3f}, random units {rand['mean_best_iou']:.3f}); "
                f"unique detectors {s['unique_detectors']} ({shuffled['unique_detectors']}, "
                f"{rand['unique_detectors']}); text label = best-IoU concept {agree} of "
                f"{s['labelled_units']} labelled units"
            )
        return "\n".join(lines)


def localization_iou(
    maps: Tensor, thresholds: Tensor, concepts: Tensor, masks: Tensor, num_concepts: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The IoU sums of one batch: ``(intersection (K, M), unit area (K,), concept area (M,))``.

    ``maps`` ``(B, K, h, w)``, ``thresholds`` ``(K,)``, ``concepts`` ``(B, G)`` concept
    indices of each image's masks ``(B, G, H, W)`` (bool). Maps are upsampled to ``H x W``
    bilinearly and thresholded; summing the three over batches gives
    ``IoU = I / (area_k + area_c - I)``.

    Example:
        >>> maps = torch.zeros(1, 1, 2, 2); maps[0, 0, 0, 0] = 1.0
        >>> masks = torch.zeros(1, 1, 4, 4, dtype=torch.bool); masks[0, 0, :2, :2] = True
        >>> inter, area_k, area_c = localization_iou(maps, torch.tensor([0.6]),
        ...                                          torch.tensor([[0]]), masks, 1)
        >>> (inter / (area_k + area_c - inter)).item()
        0.75
    """
    B, K = maps.shape[:2]
    size = masks.shape[-2:]
    flat_masks = masks.reshape(B, masks.shape[1], -1).float()  # (B, G, HW)
    intersection = torch.zeros(K, num_concepts, dtype=torch.float64)
    area_k = torch.zeros(K, dtype=torch.float64)
    chunk = max(1, _ENTRIES // max(1, B * math.prod(size)))
    index = concepts.reshape(-1)
    for start in range(0, K, chunk):
        part = maps[:, start : start + chunk].float()
        up = nn.functional.interpolate(part, size=size, mode="bilinear", align_corners=False)
        active = (up > thresholds[start : start + chunk, None, None]).reshape(B, part.shape[1], -1)
        area_k[start : start + chunk] = active.sum(dim=(0, 2), dtype=torch.float64)
        inter = torch.bmm(active.float(), flat_masks.transpose(1, 2))  # (B, k, G)
        flat = inter.permute(1, 0, 2).reshape(part.shape[1], -1).double()
        intersection[start : start + chunk].index_add_(1, index, flat)
    area_c = torch.zeros(num_concepts, dtype=torch.float64)
    area_c.index_add_(0, index, flat_masks.sum(dim=2).reshape(-1).double())
    return intersection, area_k, area_c


def _maps_hook(model: nn.Module, sae: Any, maps: dict[str, Tensor]):
    """A forward hook (for :func:`~discover.nn.capture`) that keeps each layer's spatial maps
    of the current batch in ``maps`` (an SAE's layer: its latents' maps)."""

    def hook(name: str, _m: nn.Module, _i: Any, out: Any) -> None:
        if isinstance(out, Tensor) and sae is not None and name == sae.layer:
            out = sae.latent_map(out.detach())
        layer_maps = spatial_maps(out.detach(), model) if isinstance(out, Tensor) else None
        if layer_maps is None:
            raise InputError(
                f"--localization: layer {name!r} has no spatial extent (output "
                f"{tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}); "
                "choose a conv layer or a ViT token layer"
            )
        maps[name] = layer_maps.float().cpu()

    return hook


def _mask_batch(probe: Dataset, indices: Sequence[int]) -> tuple[Tensor, Tensor]:
    pairs = [probe.concept_masks(i) for i in indices]  # type: ignore[attr-defined]
    return torch.stack([c for c, _ in pairs]), torch.stack([m for _, m in pairs])


def evaluate_localization(
    model: nn.Module,
    dissection: Dissection | str | os.PathLike[str],
    probe: Dataset,
    *,
    layers: Sequence[str] | None = None,
    quantile: float = TOP_QUANTILE,
    batch_size: int = 32,
    policy: str = "argmax",
    seed: int = 0,
    device: str = "cpu",
    allow_mismatch: bool = False,
    save: bool = True,
    progress: bool = False,
    sae: Any = None,
) -> LocalizationReport:
    """Network-Dissection IoU of a dissection's spatial layers on its annotated probe.

    ``probe`` is the raw probe set the dissection was made on, with pixel masks
    (``concept_masks(i)`` and ``concept_names``, like ShapesWorld). The model runs twice
    over it (thresholds, then IoU; see the module docstring). With ``dissection`` a folder
    and ``save``, ``localization.json`` and ``localization_units.csv`` are written into it.
    With ``sae`` (the :class:`~discover.dissection.sae.SAE` a dissection labelled), its
    latents' per-position maps on its layer are the units.

    Raises:
        InputError: a probe without masks or not the dissection's, a layer without spatial
            extent, a dissection of another model.

    Example:
        >>> report = evaluate_localization(run.model, "runs/u4/dissection", probe)  # doctest: +SKIP
        >>> print(report.table())  # doctest: +SKIP
    """
    folder = None
    if isinstance(dissection, (str, os.PathLike)):
        folder = Path(dissection)
        dissection = Dissection.load(folder)
    _check_probe_has_masks(probe)
    if not 0 < quantile < 1:
        raise InputError(f"quantile must be in (0, 1), got {quantile}")
    require_int(batch_size, "evaluate_localization: batch_size")
    dissection.check_model(model, allow_mismatch=allow_mismatch)
    fingerprint = dissection.check_probe(probe)
    if sae is not None:
        from discover.dissection.sae import as_sae

        sae = as_sae(sae)
    names = _localized_layers(dissection, layers, sae)
    modules = resolve_layers(model, names)
    concepts = list(probe.concept_names)  # type: ignore[attr-defined]
    _check_resizes_only(model)
    loader = DataLoader(model_view(model, probe), batch_size=batch_size, shuffle=False)
    model.to(device).eval()
    batches = functools.partial(
        _map_batches, model, loader, modules, sae,
        policy=policy, seed=seed, device=device, progress=progress,
    )  # fmt: skip
    thresholds = _thresholds(batches("localization thresholds"), quantile, len(probe))
    sums, map_size = _iou_sums(
        batches("localization IoU"), probe, thresholds, len(concepts), quantile, seed
    )
    result = {}
    for name in names:
        kinds = {kind: _iou_of(*acc) for kind, acc in sums[name].items()}
        result[name] = LayerLocalization(
            layer=name,
            concepts=concepts,
            iou=kinds.pop("model"),
            thresholds=thresholds[name],
            labels=[None if u.abstained else u.label for u in dissection.layer(name)],
            baselines=kinds,
            map_size=map_size[name],
            note=dissection.maps[name].note if name in dissection.maps else "",
        )
    meta = _provenance(dissection, probe, fingerprint, quantile=quantile, policy=policy, seed=seed)
    report = LocalizationReport(result, meta)
    if save and folder is not None:
        report.save(folder)
    return report


def _provenance(
    dissection: Dissection,
    probe: Dataset,
    fingerprint: str | None,
    *,
    quantile: float,
    policy: str,
    seed: int,
) -> dict[str, Any]:
    """How the localization was computed, saved with it."""
    return {
        "dissection": str(dissection.folder) if dissection.folder else None,
        "probe": {"type": type(probe).__name__, "images": len(probe), "fingerprint": fingerprint},
        "quantile": quantile,
        "detector_iou": DETECTOR_IOU,
        "policy": policy,
        "seed": seed,
        "upsampling": "bilinear to the probe image size, then thresholded",
    }


def _check_probe_has_masks(probe: Dataset) -> None:
    if not callable(getattr(probe, "concept_masks", None)) or not hasattr(probe, "concept_names"):
        raise InputError(
            f"--localization: the probe ({type(probe).__name__}) has no pixel masks; it needs "
            "concept_masks(i) and concept_names, as ShapesWorld has"
        )


def _localized_layers(dissection: Dissection, layers: Sequence[str] | None, sae: Any) -> list[str]:
    """The layers to localize (default: every layer with spatial maps, an SAE's included),
    each checked to have maps in the dissection."""
    with_maps = set(dissection.maps) | ({sae.layer} if sae is not None else set())
    names = (
        list(layers)
        if layers is not None
        else [name for name in dissection.layers if name in with_maps]
    )
    if not names:
        raise InputError(
            "--localization: the dissection has no layer with spatial maps (only conv and ViT "
            f"token layers have them; it has {', '.join(dissection.layers)})"
        )
    unknown = [n for n in names if n not in dissection.layers]
    if unknown:
        raise InputError(f"layers not in the dissection: {', '.join(unknown)}")
    flat = [n for n in names if n not in with_maps]
    if flat:
        raise InputError(
            f"--localization: layer(s) {', '.join(flat)} have no spatial maps in the "
            "dissection: no spatial extent (a fully connected layer), or dissected before "
            "maps were kept (dissect again)"
        )
    return names


def _check_resizes_only(model: nn.Module) -> None:
    """Maps align with the probe's masks only when the model's transform does not crop."""
    config = getattr(model, "data_config", None)
    if config is not None and getattr(config, "crop_pct", 1.0) < 1.0:
        raise InputError(
            f"--localization: the model's transform crops (crop_pct {config.crop_pct}), so its "
            "maps cannot be aligned with the probe's masks; use a model that resizes only"
        )


_Batches = Iterator[tuple[range, dict[str, Tensor]]]
"""``(probe indices of the batch, {layer: maps (B, K, h, w)})`` per batch."""


def _map_batches(
    model: nn.Module,
    loader: DataLoader,
    modules: dict[str, nn.Module],
    sae: Any,
    desc: str,
    *,
    policy: str,
    seed: int,
    device: str,
    progress: bool,
) -> _Batches:
    """One pass of the model over the probe, yielding each batch's spatial maps."""
    items = loader
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)
    start = 0
    maps: dict[str, Tensor] = {}
    torch.manual_seed(seed)
    with (
        torch.no_grad(),
        eval_policy(model, policy),
        capture_winners(model),
        capture(model, modules, _maps_hook(model, sae, maps)),
    ):
        for batch in items:
            images = batch[0] if isinstance(batch, (list, tuple)) else batch
            model(images.to(device))
            yield range(start, start + len(images)), maps
            start += len(images)


def _thresholds(batches: _Batches, quantile: float, n: int) -> dict[str, Tensor]:
    """Pass 1: each unit's top-``quantile`` threshold, exactly, by a streaming top-m."""
    top: dict[str, Tensor] = {}
    keep: dict[str, int] = {}
    for _, maps in batches:
        for name, m in maps.items():
            values = m.transpose(0, 1).reshape(m.shape[1], -1)  # (K, B*h*w)
            keep.setdefault(name, max(1, math.ceil(quantile * n * m.shape[2] * m.shape[3])))
            merged = values if name not in top else torch.cat([top[name], values], dim=1)
            top[name] = merged.topk(min(keep[name], merged.shape[1]), dim=1).values
    return {name: values[:, -1].clone() for name, values in top.items()}


def _iou_sums(
    batches: _Batches,
    probe: Dataset,
    thresholds: dict[str, Tensor],
    num_concepts: int,
    quantile: float,
    seed: int,
) -> tuple[dict[str, dict[str, list[Tensor]]], dict[str, tuple[int, int]]]:
    """Pass 2: the IoU sums of every layer, ``{layer: {kind: [intersection, unit area,
    concept area]}}`` for the model and both baselines, and each layer's map size."""
    n = len(probe)
    generator = torch.Generator().manual_seed(seed)
    sums: dict[str, dict[str, list[Tensor]]] = {}
    map_size: dict[str, tuple[int, int]] = {}
    for indices, maps in batches:
        concept_idx, masks = _mask_batch(probe, list(indices))
        # a fixed derangement of the probe: image i meets the masks of image i + n // 2
        shuffled = _mask_batch(probe, [(i + max(1, n // 2)) % n for i in indices])
        for name, m in maps.items():
            map_size[name] = (int(m.shape[2]), int(m.shape[3]))
            noise = torch.rand(m.shape, generator=generator)
            parts = {
                "model": localization_iou(m, thresholds[name], concept_idx, masks, num_concepts),
                "shuffled_masks": localization_iou(m, thresholds[name], *shuffled, num_concepts),
                "random_units": localization_iou(
                    noise, torch.full((m.shape[1],), 1 - quantile), concept_idx, masks, num_concepts
                ),
            }
            for kind, (inter, area_k, area_c) in parts.items():
                acc = sums.setdefault(name, {}).setdefault(
                    kind, [inter * 0, area_k * 0, area_c * 0]
                )
                acc[0] += inter
                acc[1] += area_k
                acc[2] += area_c
    return sums, map_size


def _iou_of(inter: Tensor, area_k: Tensor, area_c: Tensor) -> Tensor:
    union = area_k[:, None] + area_c[None, :] - inter
    return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter)).float()


def saved_localization(dissection: Dissection) -> LocalizationReport | None:
    """The localization saved in ``dissection``'s folder by :func:`evaluate_localization`, or
    ``None`` when there is none. One computed from another dissection (the labels or the
    number of units differ) or that cannot be read is ignored with a warning.

    Example:
        >>> report = saved_localization(Dissection.load("runs/u4/dissection"))  # doctest: +SKIP
    """
    import warnings

    if dissection.folder is None or not (Path(dissection.folder) / LOCALIZATION_JSON).is_file():
        return None
    try:
        report = LocalizationReport.load(dissection.folder)
    except ValueError as error:
        warnings.warn(f"{error}; ignoring it", UserWarning, stacklevel=2)
        return None
    for name, layer in report.layers.items():
        shown = (
            [None if u.abstained else u.label for u in dissection.layer(name)]
            if name in dissection.layers
            else None
        )
        if shown != layer.labels:
            warnings.warn(
                f"the localization in {dissection.folder} was computed from another dissection "
                f"(layer {name}: other labels or units); ignoring it. Compute it again: "
                f"`discover eval-descriptions {dissection.folder} --localization --run RUN`",
                UserWarning,
                stacklevel=2,
            )
            return None
    return report


def iou_labelled(dissection: Dissection, report: LocalizationReport | None = None) -> Dissection:
    """A copy of ``dissection`` whose localized layers are labelled the Network-Dissection way:
    each unit by its best-IoU concept (``score`` its IoU, ``top`` its five best concepts by
    IoU), shown unlabelled ("no detector") unless the IoU is above :data:`DETECTOR_IOU`; dead
    and non-finite units stay unlabelled as they were. Other layers keep their text labels.
    ``report`` defaults to the localization saved in the dissection's folder.

    Example:
        >>> relabelled = iou_labelled(Dissection.load("runs/u4/dissection"))  # doctest: +SKIP
        >>> relabelled.shown_labels("layer3.0.act2")[:3]  # doctest: +SKIP
        ['circle', None, 'red']
    """
    import dataclasses

    report = report if report is not None else saved_localization(dissection)
    if report is None:
        raise InputError(
            f"the dissection in {dissection.folder} has no localization to label units with; "
            f"compute it first: `discover eval-descriptions {dissection.folder or 'DISSECTION'} "
            "--localization --run RUN`"
        )
    units = []
    for unit in dissection.units:
        located = report.layers.get(unit.layer)
        if located is None:
            units.append(unit)
            continue
        iou = located.iou[unit.unit]
        order = iou.argsort(descending=True, stable=True)[:5].tolist()
        best = float(iou[order[0]])
        keep = unit.abstained in ("dead", "not finite")
        units.append(
            dataclasses.replace(
                unit,
                label=located.concepts[order[0]],
                score=best,
                top=[(located.concepts[j], float(iou[j])) for j in order],
                z=None,
                p_null=None,
                match=None,
                abstained=unit.abstained
                if keep
                else None
                if best > DETECTOR_IOU
                else "no detector",
            )
        )
    meta = {**dissection.meta, "labels": "best-IoU concept (Network Dissection)"}
    return dataclasses.replace(dissection, units=units, meta=meta)
