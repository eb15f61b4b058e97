"""Helpers shared by several stages: the cache root."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_root"]


def cache_root() -> Path:
    """discover's cache root: ``$DISCOVER_CACHE``, default ``~/.cache/discover``.

    Example:
        >>> cache_root().name  # doctest: +SKIP
        'discover'
    """
    return Path(os.environ.get("DISCOVER_CACHE") or "~/.cache/discover").expanduser()
