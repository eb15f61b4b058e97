"""Embedders by spec string: the :data:`EMBEDDERS` registry and :func:`build_embedder`.

A spec is ``"<prefix>[:argument]"``; the builder registered for the prefix (with
:func:`register_embedder`) gets the argument and keyword arguments. The built-in prefixes are
``open_clip``, ``hf``, ``conse`` and ``annotations``; :func:`list_embedders` lists them all.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from discover._utils import Registry
from discover.dissection.embedders.annotations import AnnotationEmbedder
from discover.dissection.embedders.base import Embedder
from discover.dissection.embedders.clip import (
    HFCLIPEmbedder,
    OpenCLIPEmbedder,
    how_to_get_weights,
)
from discover.dissection.embedders.conse import ConSEEmbedder
from discover.errors import InputError

__all__ = [
    "EmbedderBuilder",
    "EMBEDDERS",
    "register_embedder",
    "list_embedders",
    "build_embedder",
]

EmbedderBuilder = Callable[..., Embedder]
EMBEDDERS: Registry[EmbedderBuilder] = Registry("embedder")
"""Embedder builders by spec prefix: ``builder(argument, **kwargs)``, where ``argument`` is
the text after ``"<prefix>:"`` (``None`` without a colon)."""
_USAGE: Registry[str] = Registry("embedder usage")
"""The spec format of each prefix, for error messages; written only by :func:`register_embedder`
after :data:`EMBEDDERS` accepted the prefix (a builder registered on :data:`EMBEDDERS` directly
shows its bare prefix)."""


def register_embedder(
    prefix: str, *, usage: str = ""
) -> Callable[[EmbedderBuilder], EmbedderBuilder]:
    """Register ``builder(argument, **kwargs) -> Embedder`` for specs ``"<prefix>[:argument]"``.

    Raises:
        ValueError: if ``prefix`` is already registered or contains a colon.

    Example:
        >>> @register_embedder("my_clip", usage="my_clip:<checkpoint>")  # doctest: +SKIP
        ... def my_clip(argument, **kwargs):
        ...     return OpenCLIPEmbedder.from_pretrained("ViT-B-32", argument, **kwargs)
    """
    if ":" in prefix:
        raise InputError(f"register_embedder: prefix {prefix!r} must not contain ':'")

    def decorator(fn: EmbedderBuilder) -> EmbedderBuilder:
        EMBEDDERS.register(prefix, fn)  # a taken prefix is refused here
        # overwrite: the usage follows its builder (a prefix unregistered and registered again)
        _USAGE.register(prefix, usage or prefix, overwrite=True)
        return fn

    return decorator


def list_embedders() -> list[str]:
    """Registered spec prefixes, sorted."""
    return EMBEDDERS.list()


def build_embedder(spec: str | Embedder, **kwargs: Any) -> Embedder:
    """Build an embedder from a spec string; an :class:`Embedder` is returned unchanged.

    Keyword arguments go to the builder (e.g. ``device="cuda"``, ``top_t=10`` for ConSE).

    Example:
        >>> build_embedder("open_clip:ViT-B-16-quickgelu:~/weights/ViT-B-16.pt")  # doctest: +SKIP
        >>> build_embedder("conse:mpnet", top_t=10).name  # doctest: +SKIP
        'ConSE (EfficientNet-Lite0 + all-mpnet-base-v2, top-10)'
    """
    if isinstance(spec, Embedder):
        return spec
    prefix, colon, argument = spec.partition(":")
    if prefix not in EMBEDDERS:
        formats = "; ".join(_USAGE[p] if p in _USAGE else p for p in list_embedders())
        close = difflib.get_close_matches(prefix, list(EMBEDDERS), n=2, cutoff=0.5)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise InputError(
            f"unknown embedder spec {spec!r}.{hint} Registered prefixes: "
            f"{', '.join(list_embedders())} (formats: {formats})"
        )
    embedder = EMBEDDERS[prefix](argument if colon else None, **kwargs)
    if not kwargs:  # the spec alone rebuilds it (e.g. explain_run(embedder="dissection"))
        embedder.spec = spec
    return embedder


@register_embedder("open_clip", usage="open_clip:<arch>:<weights file, folder or cached tag>")
def _build_open_clip(argument: str | None, **kwargs: Any) -> Embedder:
    arch, _, pretrained = (argument or "").partition(":")
    if not arch or not pretrained:
        raise InputError(
            f"open_clip spec needs an architecture and weights: "
            f"open_clip:<arch>:<weights file or cached tag>, got "
            f"'open_clip:{argument or ''}'. {how_to_get_weights(arch or '<arch>')}"
        )
    return OpenCLIPEmbedder.from_pretrained(arch, pretrained, **kwargs)


@register_embedder("hf", usage="hf:<transformers CLIP folder>")
def _build_hf(argument: str | None, **kwargs: Any) -> Embedder:
    if not argument:
        raise InputError("hf spec needs a folder: hf:<directory saved with save_pretrained>")
    return HFCLIPEmbedder.from_pretrained(argument, **kwargs)


@register_embedder("conse", usage="conse[:minilm|mpnet|<sentence-transformers folder>]")
def _build_conse(argument: str | None, **kwargs: Any) -> Embedder:
    return ConSEEmbedder.from_assets(argument or "minilm", **kwargs)


@register_embedder("annotations", usage="annotations")
def _build_annotations(argument: str | None, **kwargs: Any) -> Embedder:
    if argument:
        raise InputError(f"annotations takes no argument, got 'annotations:{argument}'")
    return AnnotationEmbedder(**kwargs)
