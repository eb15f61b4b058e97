"""Shared test helpers: README code blocks and tiny Shapes training runs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_python_block(containing: str) -> str:
    """The one ```python block of the README that contains ``containing``."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    found = [b for b in blocks if containing in b]
    assert len(found) == 1, f"{len(found)} README python blocks contain {containing!r}"
    return found[0]


def train_tiny_shapes(out: str | Path, *, U: int = 8, image_size: int = 32, **model_kwargs: Any):
    """One epoch of a small ResNet on 64 Shapes images: a real run directory, in seconds."""
    from discover.training.trainer import TrainConfig, train

    return train(
        TrainConfig(
            model="small_resnet",
            U=U,
            dataset="shapes",
            epochs=1,
            batch_size=32,
            dataset_kwargs={"n": 64, "image_size": image_size},
            eval_samples=1,
            model_kwargs={"img_size": image_size, **model_kwargs},
            out=str(out),
        ),
        progress=False,
    )
