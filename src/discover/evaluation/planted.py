"""Planted-concept recovery: can a similarity function find a concept we put into a neuron?

This isolates the similarity functions (``cos``, ``cos3``, ``wpmi``, ``soft_wpmi``,
``rank_reorder``, ``jsd``, and any registered later) from the embedder. Take any concept
matrix ``P`` (``N x M``, from CLIP, ConSE or ground-truth annotations), pick a concept ``m``
for each synthetic unit, and make the unit's activation a noisy, monotone function of
``P[:, m]``::

    y = f(z_m + sigma * eps),   z_m = zscore(P[:, m]),   eps ~ N(0, 1)

with ``f`` drawn per unit from increasing transfer functions (``linear``, ``exp``,
``tanh``) and ``sigma`` the noise level, in units of the concept column's standard
deviation. The activation variants (a registry, :data:`VARIANTS`):

* ``dense``: ``a = y``, non-zero on every image;
* ``sparse``: ReLU with a high threshold, ``a = max(0, y - q)`` with ``q`` the
  ``1 - active_fraction`` quantile of ``y``: positive on the top ``active_fraction`` images;
* ``signed_sparse``: an LWTA block of ``U`` units: the planted unit's pre-activation is
  ``h = zscore(y)``, its ``U - 1`` competitors draw ``N(0, 1)``, the winner is sampled from
  ``softmax`` over the block (Gumbel-max, as the stochastic LWTA layer does); the unit outputs
  ``h`` when it wins, possibly negative, and 0 otherwise (it wins about ``1/U`` of the time).

A similarity function *recovers* a unit's concept at ``k`` when the planted concept is among
its ``k`` highest scores (ties count against it). Each ``(variant, noise)`` cell is scored as
one layer of ``units`` units (WPMI's prior is taken over the units scored together).

Example:
    >>> import torch
    >>> from discover.evaluation.planted import PlantedConfig, planted_recovery
    >>> P = (torch.rand(500, 20) < 0.2).float()
    >>> result = planted_recovery(P, config=PlantedConfig(units=10, noise=(0.5,)),
    ...                           progress=False)
    >>> result.ranking[0]["similarity"] in result.config["similarities"]
    True
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm

from discover._utils import Registry, check_options, csv_text, write_atomic
from discover.dissection.concepts import ConceptSet, load_concepts
from discover.dissection.embedders import Embedder, build_embedder
from discover.dissection.probe_concepts import concept_matrix
from discover.dissection.similarity import SIMILARITIES, get_similarity
from discover.errors import InputError
from discover.evaluation.ranks import ranks_from_scores

__all__ = [
    "PlantedConfig",
    "PlantedResult",
    "VARIANTS",
    "TRANSFERS",
    "register_variant",
    "planted_neurons",
    "planted_recovery",
    "planted_recovery_on_probe",
]

TRANSFERS: Registry[Callable[[Tensor], Tensor]] = Registry("transfer function")
"""Increasing transfer functions ``f``; each synthetic unit draws one, by its position in
registration order (``TRANSFERS.register(name, fn)`` adds one and so changes the draws)."""
TRANSFERS.register("linear", lambda x: x)
TRANSFERS.register("exp", torch.exp)
TRANSFERS.register("tanh", torch.tanh)

VariantFn = Callable[[Tensor, "PlantedConfig", torch.Generator], Tensor]
"""``(y [N, n], config, generator) -> activations [N, n]``, ``y`` the noisy monotone signal."""

VARIANTS: Registry[VariantFn] = Registry("planted variant")

_Cell = tuple[str, float, Tensor, Tensor]
"""``(variant, noise, planted concept ids, synthetic activations Q)``: one scored layer."""


def register_variant(name: str) -> Callable[[VariantFn], VariantFn]:
    """Register an activation variant ``fn(y, config, generator) -> activations``.

    Example:
        >>> @register_variant("relu")  # doctest: +SKIP
        ... def relu(y, config, generator):
        ...     return y.clamp_min(0)
    """

    return VARIANTS.register(name)


@register_variant("dense")
def _dense(y: Tensor, config: PlantedConfig, generator: torch.Generator) -> Tensor:
    return y


@register_variant("sparse")
def _sparse(y: Tensor, config: PlantedConfig, generator: torch.Generator) -> Tensor:
    # Active on the top ``active_fraction`` of images by rank, ties broken at random (a
    # value threshold would silence every image of a binary concept present more often);
    # there the activation is ``y`` above the column's minimum, elsewhere 0.
    N = y.shape[0]
    active = max(1, round(config.active_fraction * N))
    shuffle = torch.randperm(N, generator=generator)
    order = torch.argsort(y[shuffle], dim=0, descending=True, stable=True)[:active]
    mask = torch.zeros_like(y, dtype=torch.bool).scatter_(0, shuffle[order], True)
    return torch.where(mask, y - y.amin(dim=0, keepdim=True), torch.zeros_like(y))


@register_variant("signed_sparse")
def _signed_sparse(y: Tensor, config: PlantedConfig, generator: torch.Generator) -> Tensor:
    std, mean = torch.std_mean(y, dim=0, keepdim=True)
    h = (y - mean) / std.clamp_min(1e-12)
    N, n = h.shape
    rivals = torch.randn(N, n, config.U - 1, generator=generator, dtype=h.dtype)
    logits = torch.cat([h[..., None], rivals], dim=-1)
    uniform = torch.rand(logits.shape, generator=generator, dtype=h.dtype).clamp_(1e-12, 1 - 1e-12)
    gumbel = -torch.log(-torch.log(uniform))
    wins = (logits + gumbel).argmax(dim=-1) == 0
    return torch.where(wins, h, torch.zeros_like(h))


@dataclass
class PlantedConfig:
    """Every setting of a planted-recovery run; saved with its results.

    Attributes:
        noise: noise levels ``sigma`` (in concept-column standard deviations).
        variants: activation variants, names in :data:`VARIANTS`.
        units: synthetic units per ``(variant, noise)`` cell.
        active_fraction: ``sparse``: the share of images where a unit is non-zero.
        U: ``signed_sparse``: competitors per LWTA block (the unit wins about ``1/U``).
        similarities: similarity functions to compare (default: all registered).
        similarity_params: ``{similarity: {param: value}}``.
        top_k: the second recovery cut-off (the first is 1).
        seed: seeds concepts, transfers, noise and the LWTA draws.
    """

    noise: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)
    variants: tuple[str, ...] = ("dense", "sparse", "signed_sparse")
    units: int = 50
    active_fraction: float = 0.125
    U: int = 8
    similarities: tuple[str, ...] = ()
    similarity_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    top_k: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        self.noise = tuple(float(s) for s in self.noise)
        self.variants = tuple(self.variants)
        self.similarities = tuple(self.similarities) or tuple(SIMILARITIES)
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise InputError(
                f"unknown planted variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}"
            )
        for name in self.similarities:
            get_similarity(name)  # raises with suggestions
        for name, params in self.similarity_params.items():
            if name not in self.similarities:
                raise InputError(
                    f"similarity_params: {name!r} is not among the similarities scored "
                    f"({', '.join(self.similarities)})"
                )
            check_options(get_similarity(name), params, f"similarity_params: similarity {name!r}")
        if not self.variants:
            raise InputError(f"no planted variants given; known: {', '.join(VARIANTS)}")
        if any(s < 0 or not math.isfinite(s) for s in self.noise) or not self.noise:
            raise InputError(f"noise levels must be finite and >= 0, got {self.noise}")
        if self.units < 1 or self.top_k < 1 or self.U < 2:
            raise InputError(
                f"need units >= 1, top_k >= 1 and U >= 2, got {self.units}, {self.top_k}, {self.U}"
            )
        if not 0 < self.active_fraction < 1:
            raise InputError(f"active_fraction must be in (0, 1), got {self.active_fraction}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def planted_neurons(
    concept_acts: Tensor,
    concept_ids: Tensor,
    variant: str = "dense",
    noise: float = 0.0,
    *,
    config: PlantedConfig | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Synthetic activations ``(N, n)``: unit ``i`` is a noisy monotone function of
    ``concept_acts[:, concept_ids[i]]`` (see the module docstring).

    Example:
        >>> P = torch.rand(100, 5)
        >>> planted_neurons(P, torch.tensor([0, 3]), "signed_sparse", 0.5).shape
        torch.Size([100, 2])
    """
    config = config or PlantedConfig()
    generator = generator or torch.Generator().manual_seed(config.seed)
    if variant not in VARIANTS:
        raise InputError(f"unknown planted variant {variant!r}; known: {', '.join(VARIANTS)}")
    columns = concept_acts[:, concept_ids].double()
    std, mean = torch.std_mean(columns, dim=0, correction=0)
    if (std <= 0).any():
        raise InputError("planted_neurons: a chosen concept column is constant over the probe")
    z = (columns - mean) / std
    y = z + noise * torch.randn(z.shape, generator=generator, dtype=z.dtype)
    names = list(TRANSFERS)
    choice = torch.randint(0, len(names), (z.shape[1],), generator=generator)
    for t, name in enumerate(names):
        selected = choice == t
        if selected.any():
            y[:, selected] = TRANSFERS[name](y[:, selected])
    return VARIANTS[variant](y, config, generator).float()


@dataclass
class PlantedResult:
    """Recovery rates per similarity function and ``(variant, noise)`` cell.

    Attributes:
        rows: ``similarity, variant, noise, units, top1, topk, mean_rank, seconds``.
        ranking: similarity functions sorted by mean top-1 (then top-k) over all cells.
        config: the :class:`PlantedConfig` as a dict.
        meta: probe size, concept count, chance levels, concept source.
    """

    rows: list[dict[str, Any]]
    ranking: list[dict[str, Any]]
    config: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_csv(self) -> str:
        """One row per (similarity, variant, noise)."""
        return csv_text(self.rows)

    def table(self) -> str:
        """Top-1 / top-k recovery (%) per similarity (rows, best first) and cell (columns)."""
        k = self.config["top_k"]
        cells = list(dict.fromkeys((r["variant"], r["noise"]) for r in self.rows))
        lookup = {(r["similarity"], r["variant"], r["noise"]): r for r in self.rows}
        header = ["similarity", *[f"{v} σ={s:g}" for v, s in cells], "mean"]
        width = max(14, *(len(h) for h in header[1:]))
        lines = [
            f"planted-concept recovery, top-1 / top-{k} (%), {self.meta.get('units_per_cell')} "
            f"units per cell, N={self.meta.get('images')}, M={self.meta.get('concepts')} "
            f"(chance {100 * self.meta['chance_top1']:.1f} / {100 * self.meta['chance_topk']:.1f})",
            f"{header[0]:<13}" + "".join(f"{h:>{width + 1}}" for h in header[1:]),
        ]
        for entry in self.ranking:
            name = entry["similarity"]
            cols = [
                f"{100 * lookup[name, v, s]['top1']:.0f} / {100 * lookup[name, v, s]['topk']:.0f}"
                for v, s in cells
            ]
            cols.append(f"{100 * entry['top1']:.1f} / {100 * entry['topk']:.1f}")
            lines.append(f"{name:<13}" + "".join(f"{c:>{width + 1}}" for c in cols))
        return "\n".join(lines)

    def save(self, out: str | Path) -> Path:
        """Write ``planted.csv`` (cells), ``planted_ranking.csv`` and ``planted.json``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "planted.csv", self.to_csv())
        write_atomic(out / "planted_ranking.csv", csv_text(self.ranking))
        path = out / "planted.json"
        write_atomic(path, json.dumps(self.to_dict(), indent=2))
        return path


def planted_recovery(
    concept_acts: Tensor,
    concepts: Sequence[str] | None = None,
    config: PlantedConfig | None = None,
    *,
    progress: bool = True,
    **overrides: Any,
) -> PlantedResult:
    """Plant concepts in synthetic units and measure how often each similarity finds them.

    Args:
        concept_acts: ``P`` ``(N, M)`` from any embedder, or an annotation table.
        concepts: the ``M`` concept names (only recorded, for the report).
        config: settings; keyword ``overrides`` replace its fields.
        progress: show a progress bar over (similarity, cell) pairs.

    Raises:
        ValueError: a bad ``P`` (not 2-D, fewer than 2 non-constant columns, non-finite).

    Example:
        >>> P = torch.rand(300, 8)
        >>> r = planted_recovery(P, units=5, noise=(0.0,), similarities=("cos3",),
        ...                      progress=False)
        >>> r.rows[0]["top1"] > 0.5
        True
    """
    config = _resolve_config(config, overrides)
    P, usable = _usable_columns(concept_acts, concepts)
    N, M = P.shape
    cells = _plant_cells(P, usable, config)
    rows = _recovery_rows(P, cells, config, progress)
    meta = {
        "images": N,
        "concepts": M,
        "usable_concepts": len(usable),
        "units_per_cell": config.units,
        "chance_top1": 1 / M,
        "chance_topk": min(1.0, config.top_k / M),
        "concept_names": list(concepts)[:50] if concepts is not None else None,
        "tie_rule": "pessimistic: concepts tied with the planted one rank above it",
        "definition": "y = f(zscore(P[:, m]) + noise * eps), f in "
        f"{list(TRANSFERS)} per unit; variants {list(config.variants)}",
    }
    return PlantedResult(rows, _ranking(rows, config.similarities), config.to_dict(), meta)


def _resolve_config(config: PlantedConfig | None, overrides: dict[str, Any]) -> PlantedConfig:
    """``config`` (default: the defaults) with the fields in ``overrides`` replaced."""
    if config is None:
        return PlantedConfig(**overrides)
    if overrides:
        return PlantedConfig(**{**config.to_dict(), **overrides})
    return config


def _usable_columns(concept_acts: Tensor, concepts: Sequence[str] | None) -> tuple[Tensor, Tensor]:
    """``P`` as float32, checked, and its non-constant columns (the concepts to plant)."""
    P = torch.as_tensor(concept_acts).float()
    if P.ndim != 2:
        raise InputError(f"planted_recovery: P must be (N, M), got shape {tuple(P.shape)}")
    if not torch.isfinite(P).all():
        raise InputError("planted_recovery: P holds NaN or Inf values")
    M = P.shape[1]
    if concepts is not None and len(concepts) != M:
        raise InputError(f"planted_recovery: {len(concepts)} concept names for {M} columns of P")
    usable = torch.nonzero(P.std(dim=0) > 0).flatten()
    if len(usable) < 2:
        raise InputError(
            f"planted_recovery: P needs at least 2 non-constant concept columns, has {len(usable)}"
        )
    return P, usable


def _plant_cells(P: Tensor, usable: Tensor, config: PlantedConfig) -> list[_Cell]:
    """One layer of ``config.units`` synthetic units per ``(variant, noise)`` cell, each
    planted with a concept drawn from ``usable`` (with replacement when there are fewer)."""
    generator = torch.Generator().manual_seed(config.seed)
    cells = []
    for variant in config.variants:
        for sigma in config.noise:
            replace = config.units > len(usable)
            pick = (
                torch.randint(0, len(usable), (config.units,), generator=generator)
                if replace
                else torch.randperm(len(usable), generator=generator)[: config.units]
            )
            ids = usable[pick]
            Q = planted_neurons(P, ids, variant, sigma, config=config, generator=generator)
            cells.append((variant, sigma, ids, Q))
    return cells


def _recovery_rows(
    P: Tensor, cells: Sequence[_Cell], config: PlantedConfig, progress: bool
) -> list[dict[str, Any]]:
    """Top-1, top-k and mean rank of the planted concepts, per similarity and cell."""
    rows = []
    bar = tqdm(
        total=len(config.similarities) * len(cells),
        desc="planted recovery",
        disable=not progress,
    )
    for name in config.similarities:
        fn = get_similarity(name)
        params = config.similarity_params.get(name, {})
        for variant, sigma, ids, Q in cells:
            t0 = time.perf_counter()
            S = fn(P, Q, **params)
            seconds = time.perf_counter() - t0
            ranks = ranks_from_scores(S, ids).diagonal()
            rows.append(
                {
                    "similarity": name,
                    "variant": variant,
                    "noise": sigma,
                    "units": len(ids),
                    "top1": float((ranks <= 1).double().mean()),
                    "topk": float((ranks <= config.top_k).double().mean()),
                    "mean_rank": float(ranks.mean()),
                    "seconds": round(seconds, 4),
                }
            )
            bar.update()
    bar.close()
    return rows


def _ranking(rows: Sequence[dict[str, Any]], similarities: Sequence[str]) -> list[dict[str, Any]]:
    """The similarity functions by mean top-1 (then top-k, then mean rank) over all cells."""
    ranking = []
    for name in similarities:
        mine = [r for r in rows if r["similarity"] == name]
        ranking.append(
            {
                "similarity": name,
                "top1": sum(r["top1"] for r in mine) / len(mine),
                "topk": sum(r["topk"] for r in mine) / len(mine),
                "mean_rank": sum(r["mean_rank"] for r in mine) / len(mine),
                "seconds": round(sum(r["seconds"] for r in mine), 4),
            }
        )
    ranking.sort(key=lambda r: (-r["top1"], -r["topk"], r["mean_rank"]))
    for place, entry in enumerate(ranking, start=1):
        entry["place"] = place
    return ranking


def planted_recovery_on_probe(
    probe: Dataset,
    concepts: str | ConceptSet = "shapes",
    embedder: str | Embedder = "annotations",
    config: PlantedConfig | None = None,
    *,
    batch_size: int = 64,
    progress: bool = True,
    **overrides: Any,
) -> PlantedResult:
    """:func:`planted_recovery` on the concept matrix ``P`` of a probe set: ``P`` is the
    ``embedder``'s image-concept scores of ``probe`` for ``concepts``.

    Args:
        probe: raw probe images (e.g. :func:`discover.data.registry.build_probe`).
        concepts: a concept-set name, a file path or a :class:`ConceptSet`.
        embedder: an embedder name (:func:`discover.build_embedder`) or an :class:`Embedder`;
            ``annotations`` (ground truth) needs a probe with concept annotations.
        config, overrides: the :class:`PlantedConfig` (``overrides`` replace its fields).
        batch_size: probe images per embedder batch.

    Example:
        >>> from discover.data import build_probe
        >>> result = planted_recovery_on_probe(build_probe("shapes", n=300), units=6,
        ...                                    progress=False)  # doctest: +SKIP
        >>> print(result.table())  # doctest: +SKIP
    """
    config = _resolve_config(config, overrides)  # the settings are checked before any work
    concept_set = load_concepts(concepts)
    emb = build_embedder(embedder)
    P = concept_matrix(probe, concept_set, emb, batch_size=batch_size, progress=progress)
    result = planted_recovery(P, concept_set.concepts, config, progress=progress)
    source = probe
    while isinstance(source, Subset):
        source = source.dataset
    result.meta.update(
        probe={"type": type(source).__name__, "images": len(probe)},
        concept_set=concept_set.name,
        embedder=emb.name,
    )
    return result
