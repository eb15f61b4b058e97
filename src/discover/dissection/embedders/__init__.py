"""Image-text embedders: where the concept activation matrix ``P`` comes from (docs/method.md §6.1).

An :class:`Embedder` maps raw images and concept strings into one space and returns
L2-normalised vectors; :meth:`Embedder.concept_matrix` turns a probe set and a concept list into
``P[n, m] = cos(image_n, concept_m)`` (no logit scale). Each embedder applies its *own*
preprocessing (:attr:`Embedder.image_transform`) to raw images, so every probe dataset should
yield raw ``uint8`` (or ``[0, 1]`` float) ``C x H x W`` tensors, 1 or 3 channels.

Embedders are chosen by a string spec, through :func:`build_embedder`:

* ``open_clip:<arch>:<weights file, folder or cached tag>``: :class:`OpenCLIPEmbedder`, a
  CLIP or SigLIP model through open_clip;
* ``hf:<directory>``: :class:`HFCLIPEmbedder`, a transformers ``CLIPModel`` saved locally;
* ``conse``, ``conse:mpnet``, ``conse:<sentence-transformers folder>``:
  :class:`ConSEEmbedder`, the offline stand-in built from bundled assets (not a CLIP);
* ``annotations``: :class:`AnnotationEmbedder`, ``P`` from ground-truth concept labels.

Nothing here downloads. Real CLIP weights must be a local file, or already sit in the local
model cache. Every embedder has an :attr:`~Embedder.id` that hashes its architecture, weights
and image transform, for content-addressed caches (docs/method.md §11, pitfall 5).

The modules: :mod:`~discover.dissection.embedders.base` (the :class:`Embedder` interface,
:class:`ImageTransform`, cache root and hashing), :mod:`~discover.dissection.embedders.clip`
(open_clip and transformers CLIPs), :mod:`~discover.dissection.embedders.conse` (ConSE and
its ImageNet EfficientNet-Lite0), :mod:`~discover.dissection.embedders.annotations`
(ground-truth ``P``), :mod:`~discover.dissection.embedders.assets` (bundled sentence models and
ImageNet names) and :mod:`~discover.dissection.embedders.registry` (specs and
:func:`build_embedder`). Every public name is re-exported here.

Example:
    >>> import torch
    >>> from discover.dissection.embedders import build_embedder
    >>> embedder = build_embedder("conse")
    >>> P = embedder.concept_matrix(torch.rand(4, 3, 64, 64), ["dog", "cat", "car"])
    >>> P.shape
    torch.Size([4, 3])
"""

from __future__ import annotations

from discover.dissection.embedders.annotations import AnnotationEmbedder
from discover.dissection.embedders.assets import (
    SENTENCE_MODELS,
    imagenet_short_names,
    load_sentence_model,
    mpnet_model_dir,
    unpack_split_zip,
)
from discover.dissection.embedders.base import Concepts as Concepts
from discover.dissection.embedders.base import (
    Embedder,
    ImageTransform,
    cache_dir,
    module_sha256,
)
from discover.dissection.embedders.base import Images as Images
from discover.dissection.embedders.clip import HFCLIPEmbedder, OpenCLIPEmbedder
from discover.dissection.embedders.conse import ConSEEmbedder, efficientnet_lite0_imagenet
from discover.dissection.embedders.registry import (
    EMBEDDERS,
    build_embedder,
    list_embedders,
    register_embedder,
)
from discover.dissection.embedders.registry import EmbedderBuilder as EmbedderBuilder

__all__ = [
    "ImageTransform",
    "Embedder",
    "OpenCLIPEmbedder",
    "HFCLIPEmbedder",
    "ConSEEmbedder",
    "AnnotationEmbedder",
    "EMBEDDERS",
    "register_embedder",
    "list_embedders",
    "build_embedder",
    "cache_dir",
    "module_sha256",
    "SENTENCE_MODELS",
    "load_sentence_model",
    "mpnet_model_dir",
    "unpack_split_zip",
    "efficientnet_lite0_imagenet",
    "imagenet_short_names",
]
