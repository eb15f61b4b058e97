""":func:`explain_run`: image files explained with a training run's model and dissection."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from discover.dissection.result import Dissection
from discover.dissection.storage import default_dissection_dir
from discover.explanation.conditioning import dissection_embedder
from discover.explanation.core import explain
from discover.explanation.inputs import read_images
from discover.explanation.layers import default_layers
from discover.explanation.result import Explanation

if TYPE_CHECKING:
    from discover.training.runs import Run

__all__ = ["RunExplanations", "explain_run"]


@dataclass
class RunExplanations:
    """What :func:`explain_run` returns."""

    explanations: list[Explanation]
    failures: dict[str, str]  # image file -> why it could not be read (left out)
    dissection: Path | None  # the folder of the dissection used


def explain_run(
    run: str | os.PathLike[str],
    images: Sequence[str | os.PathLike[str]],
    dissection: Dissection | str | os.PathLike[str] | None = None,
    *,
    weights: str = "best",
    allow_mismatch: bool = False,
    embedder: Any = None,
    **options: Any,
) -> RunExplanations:
    """Explain image files with a training run's model, labelled by the run's dissection.

    The run is read with :func:`~discover.training.runs.load_run`, its dissection from
    ``dissection`` or else from ``RUN/dissection``
    (:func:`~discover.dissection.storage.default_dissection_dir`). Files that cannot be read are
    listed in ``failures`` and the others are explained (:func:`explain`) with the run's
    class names.

    Args:
        run: a training run folder (``discover train``).
        images: image files.
        dissection: a :class:`~discover.dissection.result.Dissection` of the run's model, or its
            folder (default ``RUN/dissection``).
        weights: ``best`` or ``last`` (see :func:`~discover.training.runs.load_run`).
        allow_mismatch: use a dissection made for other weights, layers or ``U`` (a warning
            instead of :class:`~discover.dissection.result.StaleDissectionError`).
        embedder: condition the labels on each image (:func:`explain`); ``"dissection"``
            rebuilds the vision-language model the dissection was made with.
        options: further keywords of :func:`explain` (``policy``, ``top``, ``threshold``,
            ``seed``, ``layers``, ``candidates``, ...).

    Raises:
        FileNotFoundError: the run has no dissection at the default place; the message gives
            the ``discover dissect`` command that makes one (layers: :func:`default_layers`).
        StaleDissectionError: the dissection does not describe the run's model.

    Example:
        >>> result = explain_run("runs/demo/cvn", ["star.png", "broken.jpg"])  # doctest: +SKIP
        >>> print_explanations(result.explanations); result.failures  # doctest: +SKIP
        {'broken.jpg': 'cannot identify image file'}
    """
    from discover.training.runs import load_run

    loaded = load_run(run, weights)
    found = _run_dissection(run, loaded, dissection)
    found.check_model(loaded.model, allow_mismatch=allow_mismatch, run=os.fspath(run))
    if isinstance(embedder, str) and embedder == "dissection":
        embedder = dissection_embedder(found)
    pictures, names, failures = read_images(images)
    options.setdefault("class_names", loaded.class_names)
    explanations = (
        explain(
            loaded.model,
            pictures,
            found,
            names=names,
            allow_mismatch=allow_mismatch,
            embedder=embedder,
            **options,
        )
        if pictures
        else []
    )
    return RunExplanations(explanations, failures, found.folder)


def _run_dissection(
    run: str | os.PathLike[str],
    loaded: Run,
    dissection: Dissection | str | os.PathLike[str] | None,
) -> Dissection:
    """The dissection given, or loaded from its folder (default ``RUN/dissection``); a run
    without one gets the command that makes one."""
    if isinstance(dissection, Dissection):
        return dissection
    folder = Path(dissection) if dissection is not None else default_dissection_dir(run)
    if dissection is None and not (folder / "dissection.json").is_file():
        layers = " ".join(default_layers(loaded.model, classifier=True))
        raise FileNotFoundError(
            f"run {run} has no dissection (looked for {folder / 'dissection.json'}); "
            f"create one with `discover dissect --run {run} --layers {layers} "
            f"--probe {loaded.dataset} --out {folder}` (choose --concepts and --embedder "
            "for your data, see `discover dissect --help`), or pass dissection='DIR'"
        )
    return Dissection.load(folder)
