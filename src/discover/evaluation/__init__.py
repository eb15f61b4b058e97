"""Stage 5, measurement: classification accuracy, sparsity, description quality,
explanation precision, planted-concept recovery, ground-truth scores, similarity sanity
tests, Network-Dissection localization (IoU with pixel masks) and paired comparisons over
seeds.

Imports the earlier stages, never :mod:`discover.report`.
"""

from __future__ import annotations

from discover.dissection.embedders.annotations import probe_annotations

from . import (
    classification,
    descriptions,
    detection,
    explanations,
    groundtruth,
    layered,
    localization,
    metrics,
    paired,
    planted,
    sanity,
    simulation,
    sparsity,
)
from .classification import *  # noqa: F403
from .descriptions import *  # noqa: F403
from .detection import *  # noqa: F403
from .explanations import *  # noqa: F403
from .groundtruth import *  # noqa: F403
from .layered import *  # noqa: F403
from .localization import *  # noqa: F403
from .metrics import *  # noqa: F403
from .paired import *  # noqa: F403
from .planted import *  # noqa: F403
from .sanity import *  # noqa: F403
from .simulation import *  # noqa: F403
from .sparsity import *  # noqa: F403

__all__ = [
    *classification.__all__,
    *descriptions.__all__,
    *detection.__all__,
    *explanations.__all__,
    *groundtruth.__all__,
    "probe_annotations",
    *layered.__all__,
    *localization.__all__,
    *metrics.__all__,
    *paired.__all__,
    *planted.__all__,
    *sanity.__all__,
    *simulation.__all__,
    *sparsity.__all__,
]
