"""``discover demo``: the whole method on built-in data, offline, in a few minutes on a CPU.

:func:`run_demo` trains a small CVN and its non-competitive twin (same architecture,
``U = 1``), evaluates both, dissects every LWTA layer of the CVN and the same layers of the
twin, dissects the final layer with the class names as concepts and scores those
descriptions against the class names (docs/method.md §9), explains a few held-out images and
writes an HTML report. Everything lands in ``OUT``::

    OUT/demo.json            the DemoConfig and the figures of the summary
    OUT/cvn/, OUT/dense/     training runs (config.json, weights, log.jsonl, eval-*.json)
    OUT/*/dissection/        the LWTA layers (the twin: the same layers), data-set concepts
    OUT/*/dissection-final/  the classifier, concepts = the class names, and its
                             description_scores.json/.csv (the final-layer protocol)
    OUT/explanations.json    the explained images (Explanation.to_dict())
    OUT/report/index.html    the report
    OUT/cache/               recorded activations and concept matrices (reruns reuse them)

A rerun with the same settings reuses finished training runs (and resumes interrupted
ones), so nothing already computed is lost.
"""

from __future__ import annotations

from discover.demo.config import (
    DEMO_DATA,
    DemoConfig,
    DemoData,
    get_demo_data,
    register_demo_data,
)
from discover.demo.result import DemoResult, convergence_notes
from discover.demo.run import run_demo

__all__ = [
    "DemoConfig",
    "DemoResult",
    "DemoData",
    "DEMO_DATA",
    "convergence_notes",
    "get_demo_data",
    "register_demo_data",
    "run_demo",
]
