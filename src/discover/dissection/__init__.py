"""Stages 2-4: recording activations (Q), concept sets and embedders (P), similarity
functions and :func:`dissect`, which saves a :class:`Dissection`; sparse autoencoders on
recorded activations (:func:`train_sae`), whose latents :func:`dissect` can label; the same
similarities streamed over row blocks (:mod:`.streaming`), and dissections recorded in shards
and merged (:mod:`.shards`).

Imports :mod:`discover.nn` and :mod:`discover.data`.
"""

from __future__ import annotations

from . import (  # noqa: F401
    concepts,
    core,
    embedders,
    labels,
    recording,
    sae,
    shards,
    similarity,
    streaming,
)
from .concepts import *  # noqa: F403
from .core import *  # noqa: F403
from .embedders import *  # noqa: F403
from .labels import *  # noqa: F403
from .recording import *  # noqa: F403
from .sae import *  # noqa: F403
from .similarity import *  # noqa: F403

__all__ = [
    *concepts.__all__,
    *core.__all__,
    *embedders.__all__,
    *labels.__all__,
    *recording.__all__,
    *sae.__all__,
    *similarity.__all__,
]
