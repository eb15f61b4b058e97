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
from .layers import POOLINGS, LayerInfo, list_layers, pool, pool_mask, resolve_layers
from .probe_concepts import concept_matrix, concept_rows
from .recording import *  # noqa: F403
from .records import ConceptStats, DissectConfig, DissectedLayer, DissectedModel, UnitDescription
from .result import Dissection, StaleDissectionError
from .sae import *  # noqa: F403
from .similarity import *  # noqa: F403
from .spatial import GALLERY_SIZE, LayerMaps, spatial_maps, top_images
from .storage import default_dissection_dir

__all__ = [
    *concepts.__all__,
    "UnitDescription",
    "ConceptStats",
    "DissectedLayer",
    "DissectedModel",
    "Dissection",
    "DissectConfig",
    "StaleDissectionError",
    "concept_matrix",
    "concept_rows",
    "default_dissection_dir",
    *core.__all__,
    *embedders.__all__,
    *labels.__all__,
    "GALLERY_SIZE",
    "LayerMaps",
    "spatial_maps",
    "top_images",
    "POOLINGS",
    "LayerInfo",
    "pool_mask",
    "list_layers",
    "resolve_layers",
    "pool",
    *recording.__all__,
    *sae.__all__,
    *similarity.__all__,
]
