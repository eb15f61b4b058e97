"""Stage 6: the HTML report, written from saved results only (it never runs a model)."""

from __future__ import annotations

from .figures import HEAT_ALPHA, HEAT_COLORMAP, HEAT_OUTLINE, draw_heatmap, to_pil
from .inputs import ReportConfig, ReportSection
from .rendering import RESERVED_NAMES
from .writer import write_report

__all__ = [
    "draw_heatmap",
    "ReportSection",
    "ReportConfig",
    "write_report",
    "HEAT_ALPHA",
    "HEAT_COLORMAP",
    "HEAT_OUTLINE",
    "RESERVED_NAMES",
    "to_pil",
]
