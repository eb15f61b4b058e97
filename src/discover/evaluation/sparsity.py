"""Measure activation sparsity: winner masks for LWTA layers, ``|a| > eps`` for dense ones.

The active fraction of an LWTA layer is counted from its captured winner mask, never from
``|y| > threshold`` (a winner's value can be 0 or negative). For a non-competitive model
the same places (its activation modules) are measured as the fraction of units with
``|a| > 1e-6``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from discover.data.photos import sample_photos
from discover.errors import InputError
from discover.nn.hooks import capture, training_mode
from discover.nn.lwta import LWTA, capture_winners, eval_policy, lwta_layers
from discover.nn.models import activation_sites, create_model

__all__ = [
    "LayerSparsity",
    "SparsityMeter",
    "measure_sparsity",
    "format_sparsity",
    "OneOverU",
    "check_one_over_u",
    "PhotoSparsity",
    "photo_sparsity",
]

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
                self._stack.enter_context(capture(self.model, layers, self._lwta_hook))
            else:
                sites = activation_sites(self.model)
                for name in sites:
                    self._rows[name] = LayerSparsity(name, "dense", None, 0, 0)
                self._stack.enter_context(capture(self.model, sites, self._dense_hook))
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self._stack.close()

    def _lwta_hook(self, name: str, layer: LWTA, inputs: tuple, _output: Any) -> None:
        if self._paused:
            return
        mask = layer.last_mask
        row = self._rows[name]
        row.units += mask.numel()
        row.active += int(mask.sum())
        row.shape = tuple(inputs[0].shape)

    def _dense_hook(self, name: str, _module: nn.Module, inputs: tuple, output: Any) -> None:
        if self._paused or not isinstance(output, torch.Tensor):
            return
        row = self._rows[name]
        row.units += output.numel()
        row.active += int((output.detach().abs() > self.threshold).sum())
        row.shape = tuple(inputs[0].shape)

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


@dataclass(frozen=True)
class OneOverU:
    """The verdict of :func:`check_one_over_u`: is every LWTA layer's active fraction 1/U?

    Attributes:
        layers: LWTA layers measured (0: the model has none, there is nothing to check).
        exact: every one of them has exactly ``active * U == units`` (true when ``layers``
            is 0).
        mismatched: the LWTA layers whose active fraction is not exactly ``1/U``.
        U: the block size the LWTA layers share (``None``: no LWTA layer, or mixed sizes).
    """

    layers: int
    exact: bool
    mismatched: tuple[str, ...] = ()
    U: int | None = None

    def __str__(self) -> str:
        if not self.layers:
            return "no LWTA layers: nothing to check"
        target = f"1/U = {1 / self.U:.4f}" if self.U else "1/U"
        return (
            f"{self.layers} LWTA layers; every active fraction == {target}: "
            f"{'yes' if self.exact else 'NO'}"
        )


def check_one_over_u(rows: list[LayerSparsity]) -> OneOverU:
    """Check that every LWTA layer among ``rows`` is active exactly ``1/U`` of the time.

    A stochastic LWTA layer has exactly one winner per block of ``U`` units, whatever the
    input and policy, so anything else is a bug (in the layer or in the measurement). The
    comparison is exact, in integers: ``active * U == units``. Dense rows are ignored.

    Example:
        >>> rows = measure_sparsity(create_model("small_resnet", U=4).eval(),
        ...                         torch.randn(2, 3, 32, 32))  # doctest: +SKIP
        >>> check = check_one_over_u(rows)  # doctest: +SKIP
        >>> check.exact, str(check)  # doctest: +SKIP
        (True, '13 LWTA layers; every active fraction == 1/U = 0.2500: yes')
    """
    lwta = [r for r in rows if r.kind == "lwta"]
    mismatched = tuple(r.layer for r in lwta if not (r.U and r.active * r.U == r.units))
    sizes = {r.U for r in lwta}
    return OneOverU(len(lwta), not mismatched, mismatched, sizes.pop() if len(sizes) == 1 else None)


@dataclass
class PhotoSparsity:
    """What :func:`photo_sparsity` measured: per-layer sparsity on the bundled photos."""

    model: str
    U: int | None
    policy: str
    seed: int
    photos: list[str]
    rows: list[LayerSparsity] = field(default_factory=list)
    check: OneOverU = field(default_factory=lambda: OneOverU(0, True))

    def to_dict(self) -> dict[str, Any]:
        return {
            **{k: getattr(self, k) for k in ("model", "U", "policy", "seed", "photos")},
            "rows": [r.to_dict() for r in self.rows],
            "check": asdict(self.check),
        }

    def summary(self) -> str:
        """The header, the table of :func:`format_sparsity` and, with LWTA layers, the check."""
        lines = [
            f"{self.model} (U={self.U}, eval policy {self.policy!r}, seed {self.seed}) on "
            f"{len(self.photos)} photos: {', '.join(self.photos)}",
            format_sparsity(self.rows),
        ]
        if self.check.layers:
            lines += ["", str(self.check)]
        return "\n".join(lines)


def photo_sparsity(
    model: nn.Module | str, *, policy: str = "sample", seed: int = 0, **model_options: Any
) -> PhotoSparsity:
    """Run the bundled real photos (:mod:`discover.data.photos`) through ``model`` and
    measure every layer's sparsity, with the 1/U check of :func:`check_one_over_u`.

    Args:
        model: a model, or a model name for :func:`~discover.nn.models.create_model`; a name
            is built after seeding, so its random weights are the same on every run.
        policy: LWTA evaluation policy (``sample`` draws the winners, ``argmax`` takes the
            largest) for the measurement; the model's own policy is restored afterwards.
        seed: seeds torch before the model is built and the photos go through it.
        model_options: keywords for ``create_model`` (``U``, ``num_classes``,
            ``checkpoint``, builder keywords), only with a model name.

    Example:
        >>> result = photo_sparsity("small_vit", U=8, num_classes=5)  # doctest: +SKIP
        >>> result.check.exact, result.check.U  # doctest: +SKIP
        (True, 8)
    """
    if model_options and not isinstance(model, str):
        raise InputError(
            f"photo_sparsity: model options {sorted(model_options)} need a model name, "
            "not a built model"
        )
    torch.manual_seed(seed)
    net = create_model(model, **model_options) if isinstance(model, str) else model
    # the caller's model keeps its own mode and policy
    with training_mode(net, False), eval_policy(net, policy):
        names, batch = sample_photos(net)
        rows = measure_sparsity(net, batch)
    config = getattr(net, "cvn_config", None)
    return PhotoSparsity(
        model=model if isinstance(model, str) else getattr(config, "name", type(net).__name__),
        U=getattr(config, "U", None),
        policy=policy,
        seed=seed,
        photos=list(names),
        rows=rows,
        check=check_one_over_u(rows),
    )
