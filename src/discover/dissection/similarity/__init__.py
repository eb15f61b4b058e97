"""Similarity functions that match neuron activations to concept activations.

Notation follows ``docs/method.md`` §6-7: ``P`` (``concept_acts``) is the
``N x M`` matrix of image-concept scores (CLIP cosines), ``Q`` (``neuron_acts``) the
``N x K`` matrix of unit activations on the same ``N`` probe images. Every function returns
``S``, a ``K x M`` matrix in which a higher value means a better match, and the description
of unit ``k`` is concept ``argmax_m S[k, m]``.

Conventions shared by all built-in functions:

* **dtype / device.** Inputs may be any floating dtype. The computation runs on the inputs'
  device in ``float64`` if either input is ``float64`` and in ``float32`` otherwise, and the
  result has that dtype. Inputs are never modified.
* **Memory.** Work is chunked over neurons (``chunk_size``) and concepts
  (``concept_chunk_size``); ``P`` is never copied or transformed as a whole. Each docstring
  states the size of the largest temporary. The result itself is ``K x M``.
* **Top-k images** of a unit are the rows with the largest *signed* activations (the
  reference behaviour), ties broken by the lower image index. A ``top_k`` larger than ``N``
  is clamped to ``N`` with a warning.
* **Dead units** (an all-zero column of ``Q``, e.g. an LWTA unit that never wins) never
  produce NaN or Inf: they get finite, uninformative scores. Count them with
  ``info["num_dead_neurons"]`` and mark them as inactive rather than trusting their label.
* **info.** Pass a dict as ``info`` to receive the effective parameters (after clamping) and
  input summary, for the run metadata.

The functions live in one submodule per family: :mod:`.cosine` (``cos``, ``cos3``, ``corr``),
:mod:`.pmi` (``wpmi``, ``soft_wpmi``), :mod:`.reorder` (``rank_reorder``) and
:mod:`.jensen_shannon` (``jsd``), on the shared checks and building blocks of :mod:`.common`.

Example:
    >>> import torch
    >>> from discover.dissection.similarity import get_similarity
    >>> P, Q = torch.rand(200, 5), torch.randn(200, 3)
    >>> info = {}
    >>> S = get_similarity("soft_wpmi")(P, Q, info=info)
    >>> S.shape, info["top_k"]
    (torch.Size([3, 5]), 100)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from discover._utils import Registry, check_options
from discover.dissection.similarity.cosine import corr, cos, cos3
from discover.dissection.similarity.jensen_shannon import Support as Support
from discover.dissection.similarity.jensen_shannon import Transform as Transform
from discover.dissection.similarity.jensen_shannon import jsd, jsd_definition
from discover.dissection.similarity.pmi import soft_wpmi, wpmi
from discover.dissection.similarity.reorder import rank_reorder
from discover.errors import InputError

__all__ = [
    "SIMILARITIES",
    "DEFAULT_SIMILARITY",
    "PAPER_SIMILARITY",
    "SimilarityFn",
    "register_similarity",
    "get_similarity",
    "nest_similarity_params",
    "cos",
    "cos3",
    "corr",
    "wpmi",
    "soft_wpmi",
    "rank_reorder",
    "jsd",
    "jsd_definition",
]

SimilarityFn = Callable[..., Tensor]
"""``(concept_acts [N, M], neuron_acts [N, K], **params) -> scores [K, M]``."""

SIMILARITIES: Registry[SimilarityFn] = Registry("similarity")
DEFAULT_SIMILARITY = "jsd"
"""The default for vision-language embedders (``LABEL_DEFAULTS["vlm"]``), chosen by
``benchmarks/label_quality.py`` on a validation split with the Shapes CLIP standing in for
CLIP; ground-truth annotations default to ``corr``
(:data:`discover.dissection.labels.LABEL_DEFAULTS`)."""
PAPER_SIMILARITY = "soft_wpmi"
"""The paper's (and CLIP-Dissect's) function: ``--similarity soft_wpmi``. It ties a unit's
true concept with corrupted copies of it (``benchmarks/results/similarity-sanity.md``) and
labelled about half as many units correctly as the defaults in ``label_quality.md``."""


def register_similarity(name: str) -> Callable[[SimilarityFn], SimilarityFn]:
    """Decorator adding a similarity function to :data:`SIMILARITIES` under ``name``.

    Raises:
        ValueError: if ``name`` is already registered.

    Example:
        >>> @register_similarity("neg_l2")  # doctest: +SKIP
        ... def neg_l2(concept_acts, neuron_acts, **params):
        ...     return -torch.cdist(neuron_acts.T, concept_acts.T)
    """

    return SIMILARITIES.register(name)


def get_similarity(name: str) -> SimilarityFn:
    """Look up a registered similarity function by name.

    Raises:
        ValueError: for an unknown name, listing close matches and all registered names.

    Example:
        >>> get_similarity("cos3").__name__
        'cos3'
    """
    return SIMILARITIES.get(name)


def nest_similarity_params(options: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Options for several similarity functions, one flat mapping of ``SIMILARITY.OPTION``
    keys, grouped by similarity as ``similarity_params`` expects them (e.g.
    :class:`~discover.evaluation.planted.PlantedConfig`), and checked against each
    function's signature before anything runs.

    Raises:
        ValueError: naming ``similarity_params``: a key that is not ``SIMILARITY.OPTION``, an
            unknown similarity, an option the function does not take, or a value of the
            wrong type.

    Example:
        >>> nest_similarity_params({"soft_wpmi.top_k": 50, "cos3.min_norm": 1e-6})
        {'soft_wpmi': {'top_k': 50}, 'cos3': {'min_norm': 1e-06}}
        >>> nest_similarity_params({"top_k": 50})
        Traceback (most recent call last):
        ValueError: similarity_params: expected SIMILARITY.OPTION keys (e.g. soft_wpmi.top_k), got 'top_k'
    """
    nested: dict[str, dict[str, Any]] = {}
    for key, value in options.items():
        name, dot, option = str(key).partition(".")
        if not (name and dot and option):
            raise InputError(
                "similarity_params: expected SIMILARITY.OPTION keys (e.g. soft_wpmi.top_k), "
                f"got {key!r}"
            )
        nested.setdefault(name, {})[option] = value
    for name, params in nested.items():
        try:
            fn = get_similarity(name)
        except ValueError as error:
            raise InputError(f"similarity_params: {error}") from None
        check_options(fn, params, f"similarity_params: similarity {name!r}")
    return nested


for _fn in (cos, cos3, corr, wpmi, soft_wpmi, rank_reorder, jsd):  # the built-ins, in order
    SIMILARITIES.register(_fn.__name__, _fn)
del _fn
