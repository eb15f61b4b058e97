"""Stage 5, measurement: classification accuracy, sparsity, description quality and
planted-concept recovery.

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
]
