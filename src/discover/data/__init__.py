"""Stage 0, images: generated and file data sets, transforms and the photo sampler.

Imports only :mod:`discover._utils`.
"""

from __future__ import annotations

from . import fashion_mnist, folders, photos, registry, shapes, transforms
from .fashion_mnist import *  # noqa: F403
from .folders import *  # noqa: F403
from .photos import *  # noqa: F403
from .registry import *  # noqa: F403
from .shapes import *  # noqa: F403
from .transforms import *  # noqa: F403

__all__ = [
    *fashion_mnist.__all__,
    *folders.__all__,
    *photos.__all__,
    *registry.__all__,
    *shapes.__all__,
    *transforms.__all__,
]
