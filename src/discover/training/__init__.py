"""Training CVNs and their dense twins: recipes, the trainer and saved runs.

Imports :mod:`discover.nn` and :mod:`discover.data`.
"""

from __future__ import annotations

from . import clip, config, convergence, export, recipes, runs, trainer
from .clip import *  # noqa: F403
from .config import *  # noqa: F403
from .convergence import *  # noqa: F403
from .distributed import GlobalBatchSampler
from .export import *  # noqa: F403
from .loop import NonFiniteLossError
from .recipes import *  # noqa: F403
from .runs import *  # noqa: F403
from .trainer import *  # noqa: F403

__all__ = [
    *clip.__all__,
    *convergence.__all__,
    *export.__all__,
    *recipes.__all__,
    *runs.__all__,
    *config.__all__,
    *trainer.__all__,
    "NonFiniteLossError",
    "GlobalBatchSampler",
]
