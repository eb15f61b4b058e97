"""The options of :func:`~discover.explanation.explain` checked: the dissection and the SAE
whose latents it labels, the label options, and one name and target per image."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from discover.dissection.labels import LABEL_DEFAULTS
from discover.dissection.result import Dissection, StaleDissectionError
from discover.dissection.sae import SAE, as_sae
from discover.errors import InputError


def check_top_and_threshold(top: int | None, threshold: float) -> None:
    """``top`` and ``threshold`` are not negative."""
    if top is not None and top < 0:
        raise InputError(f"explain: top must be >= 0 or None, got {top}")
    if not threshold >= 0:
        raise InputError(f"explain: threshold must be >= 0, got {threshold}")


def as_dissection(
    dissection: Dissection | str | os.PathLike | None, model: nn.Module, allow_mismatch: bool
) -> Dissection | None:
    """The dissection, loaded from its folder if need be, checked against ``model``."""
    if isinstance(dissection, (str, os.PathLike)):
        dissection = Dissection.load(dissection)
    elif dissection is not None and not isinstance(dissection, Dissection):
        raise TypeError(
            "explain: dissection must be a Dissection, the folder one was saved to, or None; "
            f"got {type(dissection).__name__}"
        )
    if dissection is not None:
        dissection.check_model(model, allow_mismatch=allow_mismatch)
    return dissection


def dissected_sae(
    dissection: Dissection | None, sae: SAE | str | os.PathLike | None, allow_mismatch: bool
) -> SAE | None:
    """The SAE whose latents ``dissection`` labels: ``sae``, else the recorded folder."""
    recorded = (dissection.about.sae or {}) if dissection is not None else {}
    if sae is None and not recorded:
        return None
    if sae is None:
        folder = recorded.get("folder")
        if not folder or not (Path(folder) / "sae.json").is_file():
            raise FileNotFoundError(
                f"explain: the dissection labels the latents of an SAE of layer "
                f"{recorded.get('layer')!r}, saved in {folder or 'no folder'}, which is not "
                "there any more; pass sae= (the SAE folder)"
            )
        sae = folder
    sae = as_sae(sae, "explain: sae")
    if recorded.get("sha256") and recorded["sha256"] != sae.fingerprint():
        message = (
            f"explain: the SAE of {sae.layer!r} ({sae.folder or 'given'}) is not the one the "
            "dissection labelled (other weights or settings); dissect it again with "
            "`discover sae dissect --sae DIR ...`"
        )
        if not allow_mismatch:
            raise StaleDissectionError(message)
        warnings.warn(message, UserWarning, stacklevel=3)
    return sae


def checked_label_options(
    candidates: int,
    min_percentile: float | str | None,
    embedder: Any,
    dissection: Dissection | None,
) -> float | None:
    """Check the options of the labels shown; returns ``min_percentile`` with its
    ``"default"`` resolved for the dissection's embedder kind."""
    if candidates < 1:
        raise InputError(f"explain: candidates must be >= 1, got {candidates}")
    if isinstance(min_percentile, str):
        if min_percentile != "default":
            raise InputError(
                f"explain: min_percentile must be a number, None or 'default', got {min_percentile!r}"
            )
        kind = dissection.about.embedder_kind if dissection is not None else None
        min_percentile = LABEL_DEFAULTS[kind].min_percentile if kind in LABEL_DEFAULTS else None
    if min_percentile is not None and not 0 <= min_percentile <= 1:
        raise InputError(f"explain: min_percentile must be in [0, 1] or None, got {min_percentile}")
    if embedder is not None and dissection is None:
        raise InputError("explain: embedder= conditions a dissection's labels; pass dissection=")
    return min_percentile


def check_per_image(
    count: int, raw: list[Any] | None, embedder: Any, targets: Sequence[int] | None
) -> None:
    """An embedder has raw images to look at, and ``targets`` one class per image."""
    if embedder is not None and raw is None:
        raise InputError(
            "explain: embedder= needs the raw images (files, PIL images or uint8 tensors) to "
            "show them to the embedder, not preprocessed float tensors"
        )
    if targets is not None and len(targets) != count:
        raise InputError(f"explain: {len(targets)} targets for {count} images")
