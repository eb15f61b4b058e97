"""Stage 6: the HTML report, written from saved results only (it never runs a model)."""

from __future__ import annotations

from .writer import (
    ReportConfig,
    ReportSection,
    write_report,
)

__all__ = [
    "ReportSection",
    "ReportConfig",
    "write_report",
]
