"""The simulation score: does a unit's label predict when the unit fires?

For hidden layers without ground truth (:func:`simulation_score`): label every unit on one
half of the probe set, then correlate the unit's activations on the *other* half with its
label's column of the concept matrix ``P``. A good label predicts when its unit fires.
Reported next to two baselines, each as mean ± std over ``null_repeats`` seeded draws
(see :mod:`discover.evaluation.descriptions`): a random concept for every unit, and the
labels permuted across the units.

Example:
    >>> from discover.evaluation.simulation import evaluate_simulation
    >>> sims = evaluate_simulation(dissection, probe, "annotations")  # doctest: +SKIP
    >>> print(sims["layer3"].summary())  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from discover.dissection.concepts import ConceptSet, load_concepts
from discover.dissection.embedders import Embedder, build_embedder
from discover.dissection.result import Dissection
from discover.dissection.similarity import DEFAULT_SIMILARITY, get_similarity
from discover.errors import InputError
from discover.evaluation.metrics import Metric, NullStats, SaveableScores, metrics_table

__all__ = ["SimulationScores", "simulation_score", "evaluate_simulation"]


@dataclass
class SimulationScores(SaveableScores):
    """Simulation score of one layer's labels (see :func:`simulation_score`).

    Attributes:
        layer: the layer.
        similarity: the similarity function that chose the labels on the fitting half.
        units: unit count.
        scored_units: units active (non-constant) on both halves.
        fit_images, heldout_images: sizes of the two halves.
        metrics: ``correlation`` (mean held-out Pearson r, with both baselines) and
            ``oracle_correlation`` (a ceiling: the best concept picked on the held-out half).
        per_unit: ``unit, label, correlation, best_heldout_concept, best_heldout_correlation``.
        settings: seed, fit fraction, repeats, similarity parameters.
    """

    layer: str
    similarity: str
    units: int
    scored_units: int
    fit_images: int
    heldout_images: int
    metrics: dict[str, Metric]
    per_unit: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def _stem(self) -> str:
        return f"simulation_scores-{self.layer}"

    def summary(self) -> str:
        """A printable table of every figure with its baselines."""
        head = (
            f"simulation score: layer {self.layer}, {self.scored_units}/{self.units} units "
            f"active on both halves; labels by {self.similarity} on {self.fit_images} images, "
            f"scored on {self.heldout_images} held-out images"
        )
        return "\n".join([head, metrics_table(self.metrics)])


def _zscore(x: Tensor) -> tuple[Tensor, Tensor]:
    """Column z-scores (population std) and a mask of non-constant columns."""
    std, mean = torch.std_mean(x, dim=0, correction=0)
    active = std > 1e-12 * (1 + mean.abs())
    return (x - mean) / torch.where(active, std, torch.ones_like(std)) * active, active


def _fit_size(P: Tensor, Q: Tensor, names: Sequence[str], fit_fraction: float) -> int:
    """Check ``P`` ``(N, M)`` and ``Q`` ``(N, K)``; the number of images to fit labels on."""
    if P.ndim != 2 or Q.ndim != 2 or P.shape[0] != Q.shape[0]:
        raise InputError(
            f"simulation_score: P must be (N, M) and Q (N, K) over the same images, got "
            f"{tuple(P.shape)} and {tuple(Q.shape)}"
        )
    if P.shape[1] != len(names):
        raise InputError(f"simulation_score: P has {P.shape[1]} columns for {len(names)} concepts")
    if not 0 < fit_fraction < 1:
        raise InputError(f"fit_fraction must be in (0, 1), got {fit_fraction}")
    return round(fit_fraction * Q.shape[0])


def _heldout_correlations(P: Tensor, Q: Tensor, fit: Tensor, held: Tensor) -> tuple[Tensor, Tensor]:
    """``C`` ``(K, M)``: the held-out Pearson correlation of every unit with every concept,
    and the units active (non-constant) on both halves."""
    Pz, _ = _zscore(P[held].double())
    Qz, active_held = _zscore(Q[held].double())
    _, active_fit = _zscore(Q[fit].double())
    C = Qz.T @ Pz / len(held)
    return C, torch.nonzero(active_fit & active_held).flatten()


def _correlation_metrics(
    C: Tensor, labels: Tensor, scored: Tensor, null_repeats: int, generator: torch.Generator
) -> dict[str, Metric]:
    """The mean held-out correlation of the scored units with their labels, with both
    baselines, and its ceiling (each unit's best held-out concept)."""
    n, M = len(scored), C.shape[1]
    if not n:
        note = "no unit is active on both halves"
        return {
            "correlation": Metric(None, note=note),
            "oracle_correlation": Metric(None, note=note),
        }
    Cs, ls = C[scored], labels[scored]
    draws = torch.randint(0, M, (null_repeats, n), generator=generator)
    perms = torch.stack([torch.randperm(n, generator=generator) for _ in range(null_repeats)])
    rows = torch.arange(n)[None]
    return {
        "correlation": Metric(
            float(Cs[torch.arange(n), ls].mean()),
            NullStats.of(Cs[rows, draws].mean(-1)),
            NullStats.of(Cs[rows, ls[perms]].mean(-1)),
        ),
        "oracle_correlation": Metric(
            float(Cs.max(dim=1).values.mean()),
            note="ceiling, not a description: the best concept picked on the held-out half",
        ),
    }


def _unit_rows(
    C: Tensor, labels: Tensor, scored: Tensor, names: Sequence[str]
) -> list[dict[str, Any]]:
    """One row per unit: its label and, when scored, its held-out correlation and best
    held-out concept."""
    K = C.shape[0]
    own = C[torch.arange(K), labels]
    best = C.max(dim=1)
    is_scored = torch.zeros(K, dtype=torch.bool)
    is_scored[scored] = True
    return [
        {
            "unit": k,
            "label": names[int(labels[k])],
            "active": bool(is_scored[k]),
            "correlation": float(own[k]) if is_scored[k] else None,
            "best_heldout_concept": names[int(best.indices[k])] if is_scored[k] else None,
            "best_heldout_correlation": float(best.values[k]) if is_scored[k] else None,
        }
        for k in range(K)
    ]


def simulation_score(
    concept_acts: Tensor,
    neuron_acts: Tensor,
    concepts: Sequence[str] | ConceptSet,
    *,
    layer: str = "layer",
    similarity: str = DEFAULT_SIMILARITY,
    similarity_params: dict[str, Any] | None = None,
    fit_fraction: float = 0.5,
    seed: int = 0,
    null_repeats: int = 200,
) -> SimulationScores:
    """How well each unit's label predicts its activations on held-out images.

    The probe images are split at random (seeded) into a fitting part (``fit_fraction``) and
    a held-out part. Labels are chosen on the fitting part exactly as a dissection would
    (``similarity`` on ``P`` and ``Q`` restricted to it); on the held-out part, the score of
    unit ``k`` is the Pearson correlation between ``Q[:, k]`` and ``P[:, label_k]``. Units
    constant on either part (e.g. LWTA units that never win) are left out and counted; a
    concept constant on the held-out part correlates 0.

    Args:
        concept_acts: ``P`` ``(N, M)``.
        neuron_acts: ``Q`` ``(N, K)``, the layer's pooled activations on the same images.
        concepts: the ``M`` concept strings.
        layer: name for the report.
        similarity: a name in :data:`discover.dissection.similarity.SIMILARITIES`.
        similarity_params: its keyword arguments.
        fit_fraction: share of images used to choose labels.
        seed: seeds the split and both baselines.
        null_repeats: draws per baseline.

    Example:
        >>> P = torch.rand(400, 6); Q = P[:, [2, 4]] + 0.1 * torch.randn(400, 2)
        >>> s = simulation_score(P, Q, list("abcdef"), similarity="cos3")
        >>> [u["label"] for u in s.per_unit], s.metrics["correlation"].value > 0.9
        (['c', 'e'], True)
    """
    names = list(concepts.concepts if isinstance(concepts, ConceptSet) else concepts)
    P, Q = torch.as_tensor(concept_acts), torch.as_tensor(neuron_acts)
    n_fit = _fit_size(P, Q, names, fit_fraction)
    if null_repeats < 1:
        raise InputError(f"null_repeats must be >= 1, got {null_repeats}")
    N, K = Q.shape
    if n_fit < 2 or N - n_fit < 2:
        raise InputError(f"simulation_score: {N} images cannot be split {fit_fraction}:rest")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(N, generator=generator)
    fit, held = order[:n_fit], order[n_fit:]
    params = dict(similarity_params or {})
    labels = get_similarity(similarity)(P[fit], Q[fit], **params).argmax(dim=1)
    C, scored = _heldout_correlations(P, Q, fit, held)
    metrics = _correlation_metrics(C, labels, scored, null_repeats, generator)
    settings = {
        "layer": layer,
        "similarity": similarity,
        "similarity_params": params,
        "fit_fraction": fit_fraction,
        "seed": seed,
        "null_repeats": null_repeats,
        "concepts": P.shape[1],
        "correlation": "Pearson, on the held-out images",
        "baselines": {
            "random_concept": "each unit's label replaced by a uniformly random concept",
            "shuffled_neurons": "labels permuted across the scored units",
        },
    }
    per_unit = _unit_rows(C, labels, scored, names)
    return SimulationScores(
        layer, similarity, K, len(scored), len(fit), len(held), metrics, per_unit, settings
    )


def evaluate_simulation(
    dissection: Dissection,
    probe: Dataset,
    embedder: str | Embedder | None = None,
    *,
    layers: Sequence[str] | None = None,
    P: Tensor | None = None,
    similarity: str | None = None,
    similarity_params: dict[str, Any] | None = None,
    fit_fraction: float = 0.5,
    seed: int = 0,
    null_repeats: int = 200,
    batch_size: int = 64,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, SimulationScores]:
    """:func:`simulation_score` for the layers of a dissection, from what it saved.

    ``Q`` comes from the dissection (its probe activations), ``P`` from
    :func:`discover.dissection.concept_matrix` on the same probe set, concept set and embedder
    (cached with ``cache_dir``), or is passed in. Nothing runs the model again.

    Args:
        dissection: the dissection (it must hold its probe activations).
        probe: the raw probe set the dissection was made on (checked by fingerprint).
        embedder: the dissection's embedder (name or instance; its id must match); not needed
            with ``P``.
        layers: the layers to score (default: all of the dissection's).
        P: a concept matrix already computed for this probe set and concept set.
        similarity, similarity_params: default: the dissection's.

    Example:
        >>> d = discover.dissect(model, ["layer3"], probe, "shapes", "annotations")  # doctest: +SKIP
        >>> sims = evaluate_simulation(d, probe, "annotations")  # doctest: +SKIP
        >>> print(sims["layer3"].summary())  # doctest: +SKIP
    """
    from discover.dissection.probe_concepts import concept_matrix

    names = list(layers) if layers is not None else dissection.layers
    Qs = {name: dissection.probe_activations(name) for name in names}
    dissection.check_probe(probe, "evaluate_simulation: probe")
    concept_set = load_concepts(dissection.config.concepts)
    if P is None:
        if embedder is None:
            raise InputError(
                "evaluate_simulation: pass the dissection's embedder (or P, the concept matrix)"
            )
        emb = build_embedder(embedder)
        if emb.id != dissection.config.embedder:
            raise InputError(
                f"evaluate_simulation: embedder {emb.id!r} is not the dissection's "
                f"({dissection.config.embedder!r})"
            )
        P = concept_matrix(
            probe,
            concept_set,
            emb,
            batch_size=batch_size,
            cache_dir=cache_dir,
            progress=progress,
        )
    return {
        name: simulation_score(
            P,
            Q,
            concept_set,
            layer=name,
            similarity=similarity or dissection.config.similarity,
            similarity_params=dissection.config.similarity_params
            if similarity_params is None and similarity is None
            else similarity_params,
            fit_fraction=fit_fraction,
            seed=seed,
            null_repeats=null_repeats,
        )
        for name, Q in Qs.items()
    }
