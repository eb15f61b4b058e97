"""Stage 1, the model: the LWTA layer, CVN conversion, the model factory, checkpoints and the
temporary forward hooks every later stage captures layers with (:func:`capture`).

Imports only :mod:`discover._utils`.
"""

from __future__ import annotations

from . import checkpoints, clip_archs, export, hooks, lwta, models, networks, sparse
from .checkpoints import *  # noqa: F403
from .clip_archs import *  # noqa: F403
from .export import *  # noqa: F403
from .hooks import *  # noqa: F403
from .lwta import *  # noqa: F403
from .models import *  # noqa: F403
from .networks import *  # noqa: F403
from .sparse import *  # noqa: F403

__all__ = [
    *checkpoints.__all__,
    *clip_archs.__all__,
    *export.__all__,
    *hooks.__all__,
    *lwta.__all__,
    *models.__all__,
    *networks.__all__,
    *sparse.__all__,
]
