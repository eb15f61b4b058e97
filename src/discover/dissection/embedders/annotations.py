"""Ground-truth annotations as the concept matrix: :class:`AnnotationEmbedder` (no model).

NetDissect-style: ``P`` is the probe's multi-hot concept-label table, restricted to the
requested concepts, from ``probe.concepts_table()`` and ``probe.concept_names`` (as
:class:`discover.data.ShapesWorld` provides) or from a fixed table. It has no image or
text encoder; it serves probes with exact ground truth, for tests and the demo.
"""

from __future__ import annotations

import functools
import hashlib
import json
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Subset

from discover.dissection.embedders.base import Concepts, Embedder, concept_list
from discover.errors import InputError

__all__ = ["AnnotationEmbedder", "NoAnnotationsError", "probe_annotations"]


class NoAnnotationsError(InputError, TypeError):
    """The probe set carries no ground-truth concept annotations (a ``TypeError``: the wrong
    kind of data set; a ``ValueError`` for the command line's error boundary)."""


class AnnotationEmbedder(Embedder):
    """``P`` from a probe set's ground-truth concept labels (NetDissect-style), no model.

    ``concept_matrix(probe, concepts)`` returns the probe's multi-hot annotation table
    restricted to the requested concepts: ``P[n, m] = 1`` when image ``n`` is labelled with
    concept ``m``. The table comes from ``probe.concepts_table()`` with names
    ``probe.concept_names`` (as :class:`discover.data.shapes.ShapesWorld` provides; a
    ``torch.utils.data.Subset`` of such a dataset works too), or from a fixed ``table`` and
    ``concept_names`` given here. There is no image or text encoder: ``encode_images`` and
    ``encode_texts`` raise.

    Args:
        table: optional fixed ``(N, M)`` annotation table (then ``probe`` may be ``None``, or
            must have ``N`` items).
        concept_names: the ``M`` column names of ``table``.
        drop_unknown: drop requested concepts that are not annotated, with a warning giving
            the count, instead of raising. The columns of ``P`` then follow
            :meth:`restrict`'s first list.

    Example:
        >>> from discover.data import ShapesWorld
        >>> probe = ShapesWorld(n=50, seed=0)
        >>> P = AnnotationEmbedder().concept_matrix(probe, ["circle", "red", "top left"])
        >>> P.shape
        torch.Size([50, 3])
    """

    name = "ground-truth annotations"
    image_transform = None
    kind = "annotations"

    def __init__(
        self,
        table: Tensor | None = None,
        concept_names: Sequence[str] | None = None,
        *,
        drop_unknown: bool = False,
    ) -> None:
        if (table is None) != (concept_names is None):
            raise InputError("AnnotationEmbedder: pass both table and concept_names, or neither")
        if table is not None:
            table = torch.as_tensor(table, dtype=torch.float32)
            if table.ndim != 2 or table.shape[1] != len(concept_names):
                raise InputError(
                    f"AnnotationEmbedder: table {tuple(table.shape)} needs one "
                    f"column per name ({len(concept_names)} names)"
                )
        self.table = table
        self.concept_names = list(concept_names) if concept_names is not None else None
        self.drop_unknown = drop_unknown
        self.device = torch.device("cpu")

    @functools.cached_property
    def id(self) -> str:
        if self.table is None:
            return "annotations"
        digest = hashlib.sha256(self.table.numpy().tobytes())
        digest.update(json.dumps(self.concept_names).encode())
        return f"annotations:table={digest.hexdigest()[:16]}"

    def _no_encoder(self, *_: Any, **__: Any) -> Tensor:
        raise NotImplementedError(
            "AnnotationEmbedder has no image or text encoder: ground-truth annotations give "
            "the concept matrix P directly. Call concept_matrix(probe, concepts)."
        )

    encode_images = encode_preprocessed = encode_texts = _no_encoder

    def annotations(self, probe: Any = None) -> tuple[Tensor, list[str]]:
        """The ``(N, M)`` float table and its column names, for ``probe`` or the fixed table."""
        if self.table is None:
            return probe_annotations(probe, what="AnnotationEmbedder")
        if probe is not None and len(probe) != len(self.table):
            raise InputError(
                f"AnnotationEmbedder: the probe has {len(probe)} items, the "
                f"annotation table {len(self.table)} rows"
            )
        return self.table, self.concept_names

    def restrict(self, concepts: Concepts, probe: Any = None) -> tuple[list[str], list[str]]:
        """Split ``concepts`` into (annotated, not annotated), both in request order."""
        return _split_known(concept_list(concepts), self.annotations(probe)[1])

    def concept_matrix(
        self,
        probe: Any,
        concepts: Concepts,
        *,
        batch_size: int = 64,
        num_workers: int = 0,
        progress: bool = True,
    ) -> Tensor:
        """The annotation column of each concept: ``(N, M)`` in ``{0, 1}``.

        ``batch_size``, ``num_workers`` and ``progress`` are accepted for interface
        compatibility and unused: no image is loaded.

        Raises:
            ValueError: a concept is not in the annotation vocabulary (unless
                ``drop_unknown``), or none is.
        """
        table, names = self.annotations(probe)
        kept, missing = _split_known(concept_list(concepts), names)
        if missing and not self.drop_unknown:
            shown = ", ".join(map(repr, names[:20])) + (" ..." if len(names) > 20 else "")
            raise InputError(
                f"AnnotationEmbedder: {len(missing)} concept(s) have no annotation: "
                f"{', '.join(map(repr, missing[:10]))}"
                f"{' ...' if len(missing) > 10 else ''}. The probe annotates "
                f"{len(names)} concepts: {shown}. Pass drop_unknown=True to drop "
                "them."
            )
        if missing:
            warnings.warn(
                f"AnnotationEmbedder: dropped {len(missing)} of "
                f"{len(missing) + len(kept)} concepts without annotations",
                stacklevel=2,
            )
        if not kept:
            raise InputError("AnnotationEmbedder: none of the concepts is annotated")
        index = {name: i for i, name in enumerate(names)}
        return table[:, [index[c] for c in kept]].clone()

    def concept_rows(self, probe: Any, concepts: Concepts, folder: Any = None, **_: Any) -> Any:
        """``P`` as a row source: the annotation columns (the probe holds its table in
        memory already; ``folder`` is not needed)."""
        from discover.dissection.rows import TensorRows

        return TensorRows(self.concept_matrix(probe, concepts))


def _split_known(requested: list[str], names: list[str]) -> tuple[list[str], list[str]]:
    vocabulary = set(names)
    return (
        [c for c in requested if c in vocabulary],
        [c for c in requested if c not in vocabulary],
    )


def probe_annotations(probe: Any, what: str = "probe") -> tuple[Tensor, list[str]]:
    """The probe's ground-truth table ``(N, C)`` (float32) and its ``C`` concept names, from
    ``probe.concepts_table()`` and ``probe.concept_names`` (as
    :class:`~discover.data.shapes.ShapesWorld` has; a ``Subset`` of such a data set works too).
    ``what`` starts the error messages.

    Raises:
        NoAnnotationsError: the probe carries no annotations.
        ValueError: its table does not fit it.

    Example:
        >>> from discover.data import ShapesWorld
        >>> table, names = probe_annotations(ShapesWorld(n=20, image_size=16))
        >>> tuple(table.shape), names[:2]
        ((20, 46), ['circle', 'square'])
    """
    if isinstance(probe, Subset):
        table, names = probe_annotations(probe.dataset, what)
        return table[list(map(int, probe.indices))], names
    if not (callable(getattr(probe, "concepts_table", None)) and hasattr(probe, "concept_names")):
        raise NoAnnotationsError(
            f"{what}: {type(probe).__name__} carries no ground-truth concept annotations: the "
            "probe set must provide concepts_table() and concept_names, like the Shapes world "
            "(--probe shapes, or a ShapesWorld)"
            + (
                "; or pass table= and concept_names= to AnnotationEmbedder"
                if what == "AnnotationEmbedder"
                else ""
            )
        )
    table = torch.as_tensor(probe.concepts_table(), dtype=torch.float32)
    names = [str(c) for c in probe.concept_names]
    if table.shape != (len(probe), len(names)):
        raise InputError(
            f"{what}: {type(probe).__name__}.concepts_table() has shape "
            f"{tuple(table.shape)}, expected ({len(probe)}, {len(names)}) = (images, "
            "concept_names)"
        )
    return table, names
