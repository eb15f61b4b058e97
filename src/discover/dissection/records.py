"""The records a :class:`~discover.dissection.result.Dissection` is made of: one
:class:`UnitDescription` per unit, its settings (:class:`DissectConfig`), what it recorded
about each layer and about its model (:class:`DissectedLayer`, :class:`DissectedModel`), and
each concept's statistics over the probe (:class:`ConceptStats`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from discover.dissection.significance import SIGNIFICANT_P
from discover.errors import InputError

__all__ = [
    "UnitDescription",
    "DissectConfig",
    "DissectedLayer",
    "DissectedModel",
    "ConceptStats",
]


@dataclass
class UnitDescription:
    """The description of one unit; ``block``/``position`` are set for LWTA layers.

    ``label`` is the similarity function's best concept (ties broken as
    :mod:`discover.dissection.labels` says); when ``abstained`` names a reason, the unit is
    shown *unlabelled* and ``label`` is only its first candidate (:attr:`shown_label` is
    then ``None``).
    """

    layer: str
    unit: int
    label: str
    score: float
    top: list[tuple[str, float]]
    block: int | None = None
    position: int | None = None
    active_fraction: float | None = None  # LWTA: how often the unit won on the probe set
    z: float | None = None
    """The label's significance: its score's z against the unit's shuffled-image null (see
    :mod:`discover.dissection.significance`; comparable across runs, ``None``: not drawn)."""
    p_null: float | None = None
    """The null's upper tail beyond the score (Gumbel fit); the label beats chance when
    ``p_null <= 0.001``."""
    abstained: str | None = None
    """Why the unit is shown unlabelled (one of
    :data:`~discover.dissection.labels.ABSTAIN_REASONS`), or ``None``: it is labelled."""
    match: float | None = None
    """How well the label explains the unit: the Pearson correlation over the probe between
    the unit and the label's column of ``P`` (``None``: saved by discover <= 0.3)."""

    @property
    def above_chance(self) -> bool | None:
        """Whether the label beats the shuffled-image null (``None``: not measured)."""
        return None if self.p_null is None else self.p_null <= SIGNIFICANT_P

    @property
    def shown_label(self) -> str | None:
        """The label a reader sees: ``label``, or ``None`` when the unit abstained."""
        return None if self.abstained else self.label

    @property
    def candidates(self) -> list[str]:
        """The unit's concepts, best first (the label or, if it abstained, its candidates)."""
        return [concept for concept, _ in self.top]


@dataclass
class DissectConfig:
    """Every setting of a dissection; saved as ``dissection.json``."""

    layers: list[str]
    concepts: str
    embedder: str
    similarity: str = "soft_wpmi"  # files of discover <= 0.3 do not say; that was the default
    similarity_params: dict[str, Any] = field(default_factory=dict)
    pooling: str | dict[str, str] = "auto"
    policy: str = "argmax"
    seed: int = 0
    batch_size: int = 64
    top_k: int = 5
    null_repeats: int = 0  # shuffled-image draws behind each label's z (0: none)
    # the function that judges each label for its z (None: ``similarity``, discover <= 0.3)
    significance_similarity: str | None = None
    abstain_p: float | None = None  # labels with p_null above it abstain (None: never)
    min_match: float | None = None  # labels whose match is below it abstain (None: never)


@dataclass(frozen=True)
class DissectedLayer:
    """What a dissection recorded about one layer."""

    name: str
    units: int
    pooling: str | None
    U: int | None  # the layer's LWTA block size (None: dense)
    dead_units: int  # never active on the probe
    above_chance: int | None = None  # labels that beat the shuffled-image null
    sae: bool = False  # the units are the latents of an SAE on this layer


@dataclass(frozen=True)
class DissectedModel:
    """What a dissection recorded about its model and probe set."""

    model_class: str | None
    parameters: int | None
    cvn: dict[str, Any]  # the CVN configuration (``cvn_config.to_dict()``; empty if none)
    sha256: str | None  # the weights hash, see :meth:`Dissection.check_model`
    probe_images: int
    probe_fingerprint: str | None
    skipped_images: dict[str, str]  # unreadable probe files (path -> reason)
    embedder: str | None
    concept_set: str | None  # name and sha256 prefix
    seconds: float | None
    sae: dict[str, Any] | None  # the SAE's provenance when the units are its latents
    embedder_spec: str | None = None  # the spec the embedder was built from, if one was
    embedder_kind: str | None = None  # "vlm" or "annotations" (None: discover <= 0.3)


@dataclass
class ConceptStats:
    """How strongly the embedder sees each concept across the probe: the mean and standard
    deviation of every column of ``P``. An image's concept score is compared with them
    (:meth:`standardise`) to tell which of a unit's candidate labels this image shows more
    than the probe's images do on average (image-conditioned explanations)."""

    names: list[str]
    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def of(cls, P: torch.Tensor, names: Sequence[str]) -> ConceptStats:
        """The statistics of the columns of ``P`` (``N x M``), named ``names``."""
        P = P.detach().double()
        std = P.std(dim=0, correction=0) if len(P) > 1 else torch.zeros(P.shape[1])
        return cls(list(names), P.mean(dim=0).float().cpu(), std.float().cpu())

    @classmethod
    def merge(cls, *parts: ConceptStats | None) -> ConceptStats | None:
        """The union of ``parts`` by concept name (the first part wins a name twice)."""
        index: dict[str, tuple[float, float]] = {}
        for part in parts:
            for name, m, s in (
                zip(part.names, part.mean.tolist(), part.std.tolist(), strict=True) if part else ()
            ):
                index.setdefault(name, (m, s))
        if not index:
            return None
        names = list(index)
        return cls(
            names,
            torch.tensor([index[n][0] for n in names]),
            torch.tensor([index[n][1] for n in names]),
        )

    def standardise(self, names: Sequence[str], scores: torch.Tensor) -> torch.Tensor:
        """``(scores - mean) / std`` for the concepts ``names`` (the columns of ``scores``,
        ``(n, len(names))``); a concept that never varied on the probe gets 0 where its
        score equals the mean, and a large value of the difference's sign elsewhere.

        Raises:
            InputError: a name is not a concept of this dissection.
        """
        where = {n: i for i, n in enumerate(self.names)}
        missing = [n for n in names if n not in where]
        if missing:
            raise InputError(f"concepts not in the dissection's concept statistics: {missing[:5]}")
        idx = torch.tensor([where[n] for n in names], dtype=torch.long)
        mean, std = self.mean[idx], self.std[idx]
        diff = scores.float() - mean
        return diff / std.clamp_min(1e-6)
