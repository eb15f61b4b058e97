"""Spatial maps of units: a layer output as per-unit maps, and the maps of each unit's top
probe images, kept by a streaming top-k while recording (:class:`LayerMaps`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["GALLERY_SIZE", "spatial_maps", "LayerMaps", "top_images", "TopMaps", "maps_note"]

GALLERY_SIZE = 5
"""Top probe images per unit whose spatial maps a dissection keeps (and a report shows)."""


def spatial_maps(output: torch.Tensor, model: nn.Module) -> torch.Tensor | None:
    """A layer output as per-unit spatial maps ``(N, K, h, w)``, or ``None`` without spatial
    extent. Conv maps are taken as they are; a token sequence ``(N, T, K)`` keeps its patch
    tokens, reshaped to the model's patch grid, and leaves the class and register tokens
    (``model.num_prefix_tokens``) out.

    Example:
        >>> spatial_maps(torch.ones(2, 8, 4, 4), nn.Identity()).shape
        torch.Size([2, 8, 4, 4])
    """
    if output.dim() == 4:
        return output
    if output.dim() != 3:
        return None
    prefix = getattr(model, "num_prefix_tokens", None)
    if prefix is None:
        prefix = 1 if getattr(model, "cls_token", None) is not None else 0
    patches = output.shape[1] - int(prefix)
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is None or math.prod(grid) != patches:
        side = math.isqrt(max(patches, 0))
        if side * side != patches or patches == 0:
            return None
        grid = (side, side)
    tokens = output[:, int(prefix) :]
    return tokens.transpose(1, 2).reshape(output.shape[0], output.shape[2], *grid)


@dataclass
class LayerMaps:
    """The spatial activation maps of each unit's top probe images (by pooled activation,
    ties to the lower index, the order :func:`top_images` gives), kept while recording.

    ``indices`` ``(K, k)`` probe indices, ``maps`` ``(K, k, h, w)`` the unit's activation map
    on each, ``wins`` ``(K, k, h, w)`` (LWTA layers) where the unit won its block.
    """

    indices: torch.Tensor
    maps: torch.Tensor
    wins: torch.Tensor | None = None
    note: str = ""

    def to_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        tensors = {f"{prefix}.indices": self.indices, f"{prefix}.maps": self.maps}
        if self.wins is not None:
            tensors[f"{prefix}.wins"] = self.wins
        return tensors

    @classmethod
    def from_tensors(
        cls, tensors: dict[str, torch.Tensor], prefix: str, note: str = ""
    ) -> LayerMaps:
        return cls(
            tensors[f"{prefix}.indices"],
            tensors[f"{prefix}.maps"],
            tensors.get(f"{prefix}.wins"),
            note,
        )


def top_images(scores: torch.Tensor, k: int) -> torch.Tensor:
    """``(K, k)`` indices of each unit's ``k`` highest-scoring rows of ``scores`` ``(N, K)``,
    best first, ties to the lower index.

    Example:
        >>> top_images(torch.tensor([[1.0], [3.0], [3.0]]), 2).tolist()
        [[1, 2]]
    """
    order = torch.sort(scores.T, dim=1, descending=True, stable=True).indices
    return order[:, : min(k, scores.shape[0])]


class TopMaps:
    """Streaming top-k of one layer: memory ``K x k x h x w`` whatever the probe size."""

    def __init__(self, k: int, note: str = "") -> None:
        self.k = k
        self.note = note
        self.scores: torch.Tensor | None = None
        self.indices: torch.Tensor | None = None
        self.maps: torch.Tensor | None = None
        self.wins: torch.Tensor | None = None
        self.seen = 0

    def update(self, scores: torch.Tensor, maps: torch.Tensor, wins: torch.Tensor | None) -> None:
        """Merge one batch: ``scores`` ``(B, K)``, ``maps`` ``(B, K, h, w)``."""
        batch = torch.arange(self.seen, self.seen + len(scores))
        self.seen += len(scores)
        cand_scores = scores.T.float()  # (K, B)
        cand_index = batch.expand_as(cand_scores)
        cand_maps = maps.transpose(0, 1).float()  # (K, B, h, w)
        cand_wins = wins.transpose(0, 1) if wins is not None else None
        if self.scores is not None:  # kept ones first: they hold the lower indices
            cand_scores = torch.cat([self.scores, cand_scores], dim=1)
            cand_index = torch.cat([self.indices, cand_index], dim=1)
            cand_maps = torch.cat([self.maps, cand_maps], dim=1)
            if cand_wins is not None and self.wins is not None:
                cand_wins = torch.cat([self.wins, cand_wins], dim=1)
        order = torch.sort(cand_scores, dim=1, descending=True, stable=True).indices[:, : self.k]
        self.scores = cand_scores.gather(1, order)
        self.indices = cand_index.gather(1, order)
        rows = torch.arange(len(order))[:, None]
        self.maps = cand_maps[rows, order].clone()
        self.wins = cand_wins[rows, order].clone() if cand_wins is not None else None

    def result(self) -> LayerMaps:
        assert self.indices is not None and self.maps is not None
        return LayerMaps(self.indices, self.maps, self.wins, self.note)


def maps_note(output: torch.Tensor, maps: torch.Tensor, model: nn.Module) -> str:
    """What the kept maps of a layer are (a conv map, or patch tokens on their grid)."""
    h, w = maps.shape[-2:]
    if output.dim() == 4:
        return f"conv map {h}x{w}"
    prefix = output.shape[1] - h * w
    return f"patch tokens on the {h}x{w} patch grid; {prefix} class/register token(s) left out"
