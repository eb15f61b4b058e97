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

__version__ = "0.1.0"

from . import networks  # noqa: E402,F401  (registers small_resnet, small_vit)
from .concepts import ConceptSet, load_concepts
from .description_eval import evaluate_descriptions, simulation_score
from .dissection import Dissection, dissect
from .embedders import build_embedder, register_embedder
from .evaluation import evaluate, evaluate_run
from .explanation import Explanation, explain
from .lwta import (
    EVAL_POLICIES,
    LWTA,
    TemperatureSchedule,
    average_logits,
    capture_winners,
    eval_policy,
    lwta_layers,
    set_eval_policy,
    set_temperature,
    winner_peakedness,
)
from .models import (
    ConversionReport,
    CVNConfig,
    activation_sites,
    count_parameters,
    create_model,
    list_models,
    load_checkpoint,
    register_activation,
    register_model,
    register_placement,
    save_checkpoint,
    to_cvn,
)
from .recording import list_layers, record
from .report import ReportSection, write_report
from .similarity import SIMILARITIES, register_similarity
from .training import TrainConfig, load_run, train

__all__ = [
    "__version__",
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
    "dissect",
    "evaluate_descriptions",
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
    "TrainConfig",
    "load_run",
    "train",
]
