"""The rows of an explanation: a layer's winners and the classifier's logit contributions."""

from __future__ import annotations

from dataclasses import dataclass, field

from discover.explanation import maps

__all__ = ["Winner", "LayerExplanation", "UnitContribution", "Contributions"]


class _SeenOnImage:
    """What a listed unit shows on its image: the shared reading of ``seen`` and ``map``."""

    seen: list[tuple[str, float]] | None
    map: list[list[float]] | None

    @property
    def conditioned_label(self) -> str | None:
        """The candidate this image shows most (``None`` without conditioning)."""
        return self.seen[0][0] if self.seen else None

    @property
    def where(self) -> str | None:
        """The 3 x 3 part of the image where it fired most (``"top left"``, ...)."""
        return maps.where(self.map)


@dataclass
class Winner(_SeenOnImage):
    """One active unit of one layer for one image."""

    unit: int
    block: int | None  # LWTA block (unit // U); None for dense layers
    activation: float  # pooled like the dissection pooled the layer
    label: str | None = None  # None: not dissected, or shown unlabelled (see abstained)
    score: float | None = None
    probe_percentile: float | None = None
    """Share of the dissection's probe images on which this unit's pooled activation is
    lower (from the dissection's ``Q``): 0.99 means this image drives it like the top 1 %."""
    abstained: str | None = None  # why the dissection shows the unit unlabelled
    candidates: list[str] = field(default_factory=list)  # its best concepts, best first
    seen: list[tuple[str, float]] | None = None
    """The candidates by how strongly the embedder sees them in this image (standardised
    score, highest first); ``None`` without ``explain(embedder=...)``."""
    map: list[list[float]] | None = None
    """Where it fired on this image: its activation map (``h x w``, the layer's own
    resolution; see :func:`~discover.dissection.spatial.spatial_maps`); ``None`` for a
    layer without spatial extent."""


@dataclass
class LayerExplanation:
    """The active units of one layer for one image."""

    layer: str
    kind: str  # "lwta", "dense" or "sae" (the latents of a dissected SAE)
    units: int
    active: int
    active_fraction: float
    threshold: float | None
    winners: list[Winner] = field(default_factory=list)
    maps: str | None = None
    """What the winners' maps are (``"conv map 8x8"``, a patch grid), or why there are none."""


@dataclass
class UnitContribution(_SeenOnImage):
    """``activation x weight``: one feature's part of the predicted class logit."""

    unit: int
    label: str | None  # None: not dissected, or shown unlabelled (see abstained)
    activation: float
    weight: float
    contribution: float
    abstained: str | None = None
    candidates: list[str] = field(default_factory=list)
    seen: list[tuple[str, float]] | None = None  # as Winner.seen
    probe_percentile: float | None = None  # as Winner.probe_percentile
    map: list[list[float]] | None = None  # as Winner.map: the feature before pooling


@dataclass
class Contributions:
    """The predicted logit split over the classifier's input features."""

    layer: str
    class_index: int
    class_label: str
    logit: float
    bias: float
    explained_share: float  # sum of the listed contributions / (logit - bias)
    units: list[UnitContribution] = field(default_factory=list)
