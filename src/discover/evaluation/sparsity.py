"""Measure activation sparsity: winner masks for LWTA layers, ``|a| > eps`` for dense ones.

The active fraction of an LWTA layer is counted from its captured winner mask, never from
``|y| > threshold`` (a winner's value can be 0 or negative). For a non-competitive model
the same places (its activation modules) are measured as the fraction of units with
``|a| > 1e-6``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
from torch import nn

from discover.nn.lwta import LWTA, capture_winners, lwta_layers
from discover.nn.models import activation_sites

__all__ = ["LayerSparsity", "SparsityMeter", "measure_sparsity", "format_sparsity"]

DENSE_THRESHOLD = 1e-6


@dataclass
class LayerSparsity:
    """Active fraction of one layer over everything the meter saw."""

    layer: str
    kind: str  # "lwta" (from winner masks) or "dense" (|a| > threshold)
    U: int | None
    units: int  # unit activations seen (units x positions/tokens x images)
    active: int
    shape: tuple[int, ...] | None = None  # last input shape seen

    @property
    def fraction(self) -> float:
        return self.active / self.units if self.units else float("nan")

    @property
    def expected(self) -> float | None:
        return 1.0 / self.U if self.kind == "lwta" and self.U else None

    def to_dict(self) -> dict:
        return {**asdict(self), "fraction": self.fraction, "expected": self.expected}


class SparsityMeter(contextlib.AbstractContextManager):
    """Accumulate per-layer active fractions over any number of forward passes.

    LWTA layers are measured from their winner masks; if the model has none, its
    activation modules (the places LWTA would go) are measured with ``|a| > threshold``.
    Hooks are removed and winner capture restored on exit, exceptions included.

    Example:
        >>> model = create_model("small_resnet", U=4).eval()  # doctest: +SKIP
        >>> with SparsityMeter(model) as meter:  # doctest: +SKIP
        ...     for x, _ in loader:
        ...         model(x)
        >>> [round(r.fraction, 3) for r in meter.results()][:2]  # doctest: +SKIP
        [0.25, 0.25]
    """

    def __init__(self, model: nn.Module, threshold: float = DENSE_THRESHOLD) -> None:
        self.model = model
        self.threshold = threshold
        self._rows: dict[str, LayerSparsity] = {}
        self._stack = contextlib.ExitStack()
        self._paused = False

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Forward passes inside this block are not counted."""
        self._paused, previous = True, self._paused
        try:
            yield
        finally:
            self._paused = previous

    def __enter__(self) -> SparsityMeter:
        layers = lwta_layers(self.model)
        try:
            if layers:
                self._stack.enter_context(capture_winners(self.model))
                for name, layer in layers.items():
                    self._rows[name] = LayerSparsity(name, "lwta", layer.U, 0, 0)
                    self._hook(layer, self._lwta_hook(name))
            else:
                modules = dict(self.model.named_modules(remove_duplicate=False))
                for name in activation_sites(self.model):
                    self._rows[name] = LayerSparsity(name, "dense", None, 0, 0)
                    self._hook(modules[name], self._dense_hook(name))
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self._stack.close()

    def _hook(self, module: nn.Module, fn) -> None:
        handle = module.register_forward_hook(fn)
        self._stack.callback(handle.remove)

    def _lwta_hook(self, name: str):
        def hook(layer: LWTA, inputs, _output) -> None:
            if self._paused:
                return
            mask = layer.last_mask
            row = self._rows[name]
            row.units += mask.numel()
            row.active += int(mask.sum())
            row.shape = tuple(inputs[0].shape)

        return hook

    def _dense_hook(self, name: str):
        def hook(_module, inputs, output) -> None:
            if self._paused or not isinstance(output, torch.Tensor):
                return
            row = self._rows[name]
            row.units += output.numel()
            row.active += int((output.detach().abs() > self.threshold).sum())
            row.shape = tuple(inputs[0].shape)

        return hook

    def results(self) -> list[LayerSparsity]:
        """One row per measured layer, in module order."""
        return list(self._rows.values())


@torch.no_grad()
def measure_sparsity(model: nn.Module, *batches: torch.Tensor) -> list[LayerSparsity]:
    """Run ``batches`` through ``model`` (as it is: train or eval) and return per-layer sparsity.

    Example:
        >>> rows = measure_sparsity(create_model("small_vit", U=8).eval(), torch.randn(2, 3, 64, 64))  # doctest: +SKIP
    """
    with SparsityMeter(model) as meter:
        for x in batches:
            model(x)
    return meter.results()


def format_sparsity(rows: list[LayerSparsity]) -> str:
    """A plain-text table of :func:`measure_sparsity` rows."""
    width = max([len(r.layer) for r in rows] + [5])
    lines = [
        f"{'layer':<{width}}  {'kind':<5}  {'U':>3}  {'active':>8}  {'expected':>8}  input shape"
    ]
    for r in rows:
        expected = f"{r.expected:.4f}" if r.expected is not None else "-"
        lines.append(
            f"{r.layer:<{width}}  {r.kind:<5}  {r.U or '-':>3}  {r.fraction:>8.4f}  "
            f"{expected:>8}  {r.shape}"
        )
    return "\n".join(lines)
