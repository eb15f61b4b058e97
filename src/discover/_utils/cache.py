"""discover's cache root and the warning about a cache entry it could not use."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

__all__ = ["CacheWarning", "cache_root", "cache_warning"]


class CacheWarning(UserWarning):
    """A cache entry could not be read (it is recomputed) or written (discover carries on)."""


def cache_root() -> Path:
    """discover's cache root: ``$DISCOVER_CACHE``, default ``~/.cache/discover``.

    Example:
        >>> cache_root().name  # doctest: +SKIP
        'discover'
    """
    return Path(os.environ.get("DISCOVER_CACHE") or "~/.cache/discover").expanduser()


def cache_warning(message: str) -> None:
    """Warn about a cache entry (once per message, i.e. per file and problem)."""
    warnings.warn(message, CacheWarning, stacklevel=3)
