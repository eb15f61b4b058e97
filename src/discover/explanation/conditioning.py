"""Image-conditioned labels: which of a listed unit's candidate concepts a vision-language
model sees in the image (``explain(embedder=...)``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from discover._utils import cache_root, printable
from discover.dissection.embedders import build_embedder
from discover.dissection.result import Dissection
from discover.errors import InputError
from discover.explanation.result import Explanation


def _listed(explanation: Explanation) -> list[Any]:
    """Every listed winner and contribution of an explanation (the rows that show labels)."""
    rows: list[Any] = [w for layer in explanation.layers for w in layer.winners]
    if explanation.contributions is not None:
        rows += explanation.contributions.units
    return rows


def condition(
    explanations: list[Explanation],
    raw: list[Any],
    dissection: Dissection,
    embedder: Any,
    candidates: int,
) -> None:
    """Fill ``seen`` of every listed row: its candidates scored in its image."""
    emb = build_embedder(embedder)
    wanted = list(
        dict.fromkeys(
            c for e in explanations for row in _listed(e) for c in row.candidates[:candidates]
        )
    )
    if not wanted:
        return
    scores = emb.concept_matrix(raw, wanted, progress=False).float()
    if tuple(scores.shape) != (len(raw), len(wanted)):
        raise InputError(
            f"explain: embedder {emb.name!r} returned scores of shape {tuple(scores.shape)} "
            f"for {len(raw)} images and {len(wanted)} candidate concepts"
        )
    stats = dissection.concept_stats
    if stats is not None and set(wanted) <= set(stats.names):
        scores = stats.standardise(wanted, scores)
    column = {c: j for j, c in enumerate(wanted)}
    table = scores.tolist()
    for i, explanation in enumerate(explanations):
        image = table[i]
        for row in _listed(explanation):
            if row.candidates:
                pairs = [(c, image[column[c]]) for c in row.candidates[:candidates]]
                row.seen = sorted(pairs, key=lambda pair: (-pair[1], pair[0]))


def dissection_embedder(dissection: Dissection) -> str:
    """The spec of the vision-language model a dissection was made with, for conditioning."""
    about = dissection.about
    if about.embedder_kind == "annotations":
        raise InputError(
            f"the dissection in {dissection.folder} was made with ground-truth annotations, "
            "which cannot look at new images; pass another embedder (e.g. open_clip:ARCH:WEIGHTS)"
        )
    spec = about.embedder_spec
    if not spec:
        raise InputError(
            f"the dissection in {dissection.folder} does not record how to rebuild its embedder "
            f"({about.embedder or 'unknown'}); pass the embedder spec instead"
        )
    _check_spec_opens_no_outside_file(dissection, spec)
    return spec


def _check_spec_opens_no_outside_file(dissection: Dissection, spec: str) -> None:
    """A dissection folder is untrusted data: the spec it records may not open a file of its
    choosing outside the folder and discover's cache (pass such a spec yourself instead)."""
    kind, _, rest = str(spec).partition(":")
    named = rest if kind == "hf" else rest.partition(":")[2] if kind == "open_clip" else ""
    if named and (kind == "hf" or "/" in named or os.sep in named or Path(named).suffix):
        where = Path(named).expanduser().resolve()
        allowed = [Path(dissection.folder).resolve()] if dissection.folder else []
        allowed.append(cache_root().resolve())
        if not any(where.is_relative_to(root) for root in allowed):
            raise InputError(
                f"the dissection in {dissection.folder} records the embedder {printable(spec)!r}, "
                f"which would open {where}, outside the dissection folder and discover's cache; "
                "a dissection may not choose files to open: pass --embedder with that spec "
                "yourself if you trust it"
            )
