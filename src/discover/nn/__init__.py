"""Stage 1, the model: the LWTA layer, CVN conversion, the model factory and checkpoints.

Imports only :mod:`discover._utils`.
"""

from __future__ import annotations

from .lwta import (
    EVAL_POLICIES,
    LWTA,
    EvalPolicy,
    TemperatureSchedule,
    average_logits,
    capture_winners,
    eval_policy,
    gumbel_noise,
    lwta_layers,
    set_eval_policy,
    set_temperature,
    winner_peakedness,
)
from .models import (
    ACTIVATION_TYPES,
    CheckpointMismatchError,
    ConversionReport,
    CVNConfig,
    ReplacedSite,
    SharedActivation,
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
from .networks import (
    BasicBlock,
    SmallResNet,
    small_resnet,
    small_vit,
)

__all__ = [
    "LWTA",
    "EvalPolicy",
    "EVAL_POLICIES",
    "lwta_layers",
    "set_eval_policy",
    "eval_policy",
    "capture_winners",
    "average_logits",
    "gumbel_noise",
    "set_temperature",
    "TemperatureSchedule",
    "winner_peakedness",
    "ACTIVATION_TYPES",
    "register_activation",
    "register_model",
    "register_placement",
    "list_models",
    "create_model",
    "to_cvn",
    "ConversionReport",
    "ReplacedSite",
    "CVNConfig",
    "SharedActivation",
    "activation_sites",
    "load_checkpoint",
    "save_checkpoint",
    "CheckpointMismatchError",
    "count_parameters",
    "SmallResNet",
    "BasicBlock",
    "small_resnet",
    "small_vit",
]
