"""Shared test helpers: code blocks of the README and the docs pages, tiny Shapes training runs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

SHAPES_PROBE = {"n": 32, "image_size": 16}
"""The probe of conftest's ``shapes_dissection``: ``ShapesWorld(**SHAPES_PROBE, split="val")``,
``--probe-arg n=32 --probe-arg image_size=16`` on the command line."""


def doc_page(page: str) -> Path:
    """``"README.md"`` or a page of docs/ (``"dissection.md"``, ``"api/nn.md"``)."""
    return README if page == "README.md" else DOCS / page


def doc_block(page: str, containing: str, language: str | None = None) -> str:
    """The one fenced code block of ``page`` that contains ``containing``: of any language, or
    of ``language`` (``""``: a block without one)."""
    text = doc_page(page).read_text()
    blocks = re.findall(r"^```([\w-]*)\n(.*?)^```", text, flags=re.S | re.M)
    found = [b for lang, b in blocks if containing in b and language in (None, lang)]
    assert len(found) == 1, f"{len(found)} blocks of {page} contain {containing!r}"
    return found[0]


def doc_python_block(page: str, containing: str) -> str:
    """The one ```python block of ``page`` (see :func:`doc_page`) that contains ``containing``."""
    return doc_block(page, containing, "python")


def readme_python_block(containing: str) -> str:
    """The one ```python block of the README that contains ``containing``."""
    return doc_python_block("README.md", containing)


def tiny_train_kwargs(*, n: int = 64, image_size: int = 16, **changes: Any) -> dict[str, Any]:
    """``TrainConfig`` fields of the tests' tiny run: one epoch of a two-stage small ResNet
    (8 and 16 channels, one block each) on ``n`` generated Shapes images, batches of 32, one
    stochastic pass at validation. ``changes`` replace any field (``U``, ``epochs``, ...);
    ``U`` is ``TrainConfig``'s default (1) unless given. A plain dict, so a test can also
    write it to a file or into a child process's code."""
    return {
        "model": "small_resnet",
        "model_kwargs": {"img_size": image_size, "widths": [8, 16], "depths": [1, 1]},
        "dataset": "shapes",
        "dataset_kwargs": {"n": n, "image_size": image_size},
        "batch_size": 32,
        "epochs": 1,
        "eval_samples": 1,
        **changes,
    }


def tiny_config(out: str | Path, **kwargs: Any):
    """The tiny run's ``TrainConfig`` writing to ``out`` (arguments: :func:`tiny_train_kwargs`)."""
    from discover.training import TrainConfig

    return TrainConfig(**tiny_train_kwargs(**kwargs), out=str(out))


def train_tiny(out: str | Path, **kwargs: Any):
    """Train the tiny run into ``out``: a real run directory in seconds (``TrainResult``)."""
    from discover.training import train

    return train(tiny_config(out, **kwargs), progress=False)


def train_tiny_shapes(out: str | Path, *, U: int = 8, image_size: int = 32, **model_kwargs: Any):
    """The README's run: the tiny run with the default small ResNet widths, 32 px."""
    return train_tiny(
        out, U=U, image_size=image_size, model_kwargs={"img_size": image_size, **model_kwargs}
    )
