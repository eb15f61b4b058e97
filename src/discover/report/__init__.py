"""Stage 6: the HTML report, written from saved results only (it never runs a model)."""

from __future__ import annotations

from . import writer
from .writer import *  # noqa: F403

__all__ = [*writer.__all__]
