"""discover: Competitive Vision Networks (stochastic LWTA) and neuron dissection.

Example:
    >>> import discover, torch
    >>> model = discover.create_model("small_resnet", U=4, num_classes=10)
    >>> with discover.capture_winners(model) as layers:
    ...     _ = model.eval()(torch.randn(2, 3, 64, 64))
    ...     fractions = {n: l.last_mask.float().mean().item() for n, l in layers.items()}
    >>> set(fractions.values())
    {0.25}
"""

from __future__ import annotations

from .dissection import (
    SAE,
    SIMILARITIES,
    ConceptSet,
    Dissection,
    build_embedder,
    concept_matrix,
    dissect,
    list_layers,
    load_concepts,
    record,
    register_embedder,
    register_similarity,
    train_sae,
)
from .errors import DiscoverError, InputError, MissingExtraError, NonFiniteError
from .evaluation import (
    evaluate,
    evaluate_descriptions,
    evaluate_groundtruth,
    evaluate_run,
    simulation_score,
)
from .explanation import Explanation, explain
from .nn import (
    EVAL_POLICIES,
    LWTA,
    ConversionReport,
    CVNConfig,
    TemperatureSchedule,
    activation_sites,
    average_logits,
    capture_winners,
    count_parameters,
    create_model,
    eval_policy,
    list_models,
    load_checkpoint,
    lwta_layers,
    register_activation,
    register_model,
    register_placement,
    save_checkpoint,
    set_eval_policy,
    set_temperature,
    to_cvn,
    winner_peakedness,
)
from .report import ReportSection, write_report
from .training import TrainConfig, load_run, train
from .version import __version__

__all__ = [
    "__version__",
    "DiscoverError",
    "InputError",
    "MissingExtraError",
    "NonFiniteError",
    "LWTA",
    "EVAL_POLICIES",
    "average_logits",
    "capture_winners",
    "eval_policy",
    "lwta_layers",
    "set_eval_policy",
    "set_temperature",
    "TemperatureSchedule",
    "winner_peakedness",
    "ConversionReport",
    "CVNConfig",
    "activation_sites",
    "count_parameters",
    "create_model",
    "list_models",
    "load_checkpoint",
    "register_activation",
    "register_model",
    "register_placement",
    "save_checkpoint",
    "to_cvn",
    "ConceptSet",
    "load_concepts",
    "Dissection",
    "concept_matrix",
    "dissect",
    "evaluate_descriptions",
    "evaluate_groundtruth",
    "simulation_score",
    "build_embedder",
    "register_embedder",
    "evaluate",
    "evaluate_run",
    "Explanation",
    "explain",
    "list_layers",
    "record",
    "ReportSection",
    "write_report",
    "SIMILARITIES",
    "register_similarity",
    "SAE",
    "train_sae",
    "TrainConfig",
    "load_run",
    "train",
]
