"""Stage 5, measurement: classification accuracy, sparsity, description quality,
planted-concept recovery, ground-truth scores and similarity sanity tests.

Imports the earlier stages, never :mod:`discover.report`.
"""

from __future__ import annotations

from .classification import (
    EvalResult,
    evaluate,
    evaluate_run,
)
from .descriptions import (
    DescriptionScores,
    Metric,
    NullStats,
    SimulationScores,
    evaluate_descriptions,
    evaluate_simulation,
    resolve_class_names,
    simulation_score,
    text_encoder,
)
from .groundtruth import (
    MONOSEMANTIC_BAR,
    SANITY_PASS_BAR,
    GroundTruthReport,
    LayerGroundTruth,
    SanityConfig,
    SanityResult,
    UnitGroundTruth,
    average_precision,
    corrupt_labels,
    groundtruth_dissection,
    groundtruth_scores,
    probe_split,
    similarity_sanity,
    threshold_metrics,
)
from .planted import (
    TRANSFERS,
    VARIANTS,
    PlantedConfig,
    PlantedResult,
    planted_neurons,
    planted_recovery,
    register_variant,
)
from .sparsity import (
    LayerSparsity,
    SparsityMeter,
    format_sparsity,
    measure_sparsity,
)

__all__ = [
    "LayerSparsity",
    "SparsityMeter",
    "measure_sparsity",
    "format_sparsity",
    "EvalResult",
    "evaluate",
    "evaluate_run",
    "NullStats",
    "Metric",
    "DescriptionScores",
    "SimulationScores",
    "evaluate_descriptions",
    "simulation_score",
    "evaluate_simulation",
    "resolve_class_names",
    "text_encoder",
    "PlantedConfig",
    "PlantedResult",
    "VARIANTS",
    "TRANSFERS",
    "register_variant",
    "planted_neurons",
    "planted_recovery",
    "MONOSEMANTIC_BAR",
    "UnitGroundTruth",
    "LayerGroundTruth",
    "GroundTruthReport",
    "probe_split",
    "average_precision",
    "threshold_metrics",
    "groundtruth_scores",
    "groundtruth_dissection",
    "SANITY_PASS_BAR",
    "SanityConfig",
    "SanityResult",
    "corrupt_labels",
    "similarity_sanity",
]
