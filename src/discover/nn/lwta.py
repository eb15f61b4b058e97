"""Stochastic local winner-takes-all (LWTA) activation.

Units are grouped into blocks of ``U`` competitors. For every input exactly one unit per
block wins and passes its *linear* pre-activation (which may be negative); every other unit
outputs 0. The competition logits are the pre-activations themselves, so the layer has no
parameters and replacing an activation by it keeps a network's parameter count.

Training uses a Gumbel-softmax straight-through estimator: the forward pass is exactly
one-hot, the gradient flows through the soft sample (temperature ``tau``). At evaluation
the winner is either *sampled* from ``softmax(h_b)`` (the reference behaviour) or taken as
the largest pre-activation (``"argmax"``). See ``docs/method.md`` §2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import nn

from discover.errors import InputError
from discover.nn import lwta_kernel
from discover.nn.hooks import capture

__all__ = [
    "LWTA",
    "EvalPolicy",
    "EVAL_POLICIES",
    "lwta_layers",
    "set_eval_policy",
    "eval_policy",
    "capture_winners",
    "average_logits",
    "gumbel_noise",
    "set_temperature",
    "TemperatureSchedule",
    "winner_peakedness",
]

EvalPolicy = Literal["sample", "argmax"]
EVAL_POLICIES: tuple[str, ...] = ("sample", "argmax")


def gumbel_noise(like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard Gumbel noise ``-log(-log(u))``, ``u ~ U(tiny, 1)``, shaped like ``like``.

    ``u`` never reaches 0, so the noise is never NaN or Inf and, unlike the reference code,
    needs no check-and-redraw loop.
    """
    return _neg_gumbel_(torch.empty_like(like), generator).neg_()


def _neg_gumbel_(buffer: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill ``buffer`` with ``log(-log(u))`` (minus Gumbel noise), in place."""
    buffer.uniform_(torch.finfo(buffer.dtype).tiny, 1.0, generator=generator)
    return buffer.log_().neg_().log_()


def _perturbed(h: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``h + T g`` with Gumbel noise ``g`` (argmax = a draw from ``softmax(h / T)``), in one
    new buffer; ``T = 0`` copies ``h``."""
    if temperature == 0:
        return h.clone()
    noise = _neg_gumbel_(torch.empty_like(h))
    if temperature != 1:
        noise.mul_(temperature)
    return torch.sub(h, noise, out=noise)


def _block_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over the block axis of ``(P, U, Q)``, keepdim.

    With ``Q = 1`` (units on the last axis) this is a matrix-vector product: on CPU a
    reduction over a short innermost axis is several times slower.
    """
    P, U, Q = t.shape
    if Q == 1 and t.is_contiguous():
        return (t.view(P, U) @ t.new_ones(U, 1)).view(P, 1, 1)
    return t.sum(dim=1, keepdim=True)


def _winner_mask(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mask, top)``: a bool mask with exactly one winner per block (dim 1), and the max.

    ``logits == max`` is cheap; an exact float tie (rare with Gumbel noise, possible for the
    deterministic policy) falls back to the first index, so no block ever has two winners.
    """
    top = logits.amax(dim=1, keepdim=True)
    mask = logits == top
    if torch.count_nonzero(mask) != top.numel():
        mask = torch.zeros_like(mask).scatter_(1, logits.argmax(dim=1, keepdim=True), True)
    return mask, top


def _exported_competition(blocks: torch.Tensor, layer: LWTA) -> torch.Tensor:
    """Deterministic winners in operators every exporter knows (argmax, one-hot, multiply):
    the same outputs as the ``"argmax"`` policy, ties going to the first unit as there."""
    if layer.stochastic:
        raise InputError(
            f"LWTA {layer._label()}: sampled winners cannot be exported (an exported graph has "
            "no seeded draw that matches PyTorch's); export with the 'argmax' policy"
        )
    winners = blocks.argmax(dim=1, keepdim=True)
    hard = torch.zeros_like(blocks).scatter(1, winners, 1.0)
    return blocks * hard


def _strictly_channels_last(x: torch.Tensor, unit_dim: int) -> bool:
    """A conv map (units on dim 1) laid out channels_last, and not also plain contiguous."""
    return (
        x.dim() == 4
        and unit_dim == 1
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    )


class _STGumbelLWTA(torch.autograd.Function):
    """Hard one-hot forward, Gumbel-softmax straight-through backward, fused.

    Works on blocks laid out as ``(P, U, Q)`` (competition over dim 1). Equivalent to
    ``h * (hard - soft.detach() + soft)`` with ``soft = softmax((h + g) / tau)`` (gradient
    through both the product and the softmax logits), but the forward value is exactly
    ``h`` at the winner and exactly 0 elsewhere, only ``h``, ``soft`` and a bool winner mask
    are kept for backward, and buffers are reused (on CPU, fresh large allocations cost as
    much as the arithmetic). ``torch.softmax`` is written out: over a short dimension it is
    slow on CPU.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, tau: float, temperature: float = 1.0):  # noqa: D401
        logits = _perturbed(h, temperature)
        hard, top = _winner_mask(logits)
        soft = logits.sub_(top).mul_(1.0 / tau).exp_()  # the logits buffer becomes `soft`
        soft.div_(_block_sum(soft))
        ctx.save_for_backward(h, soft, hard)
        ctx.tau = tau
        ctx.mark_non_differentiable(hard)
        return h * hard, hard

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor, _grad_hard):
        h, soft, hard = ctx.saved_tensors
        # Through the soft sample: d out / d soft = grad_out * h, softmax backward, / tau.
        grad_h = grad_out * h
        grad_h.sub_(_block_sum(grad_h * soft)).mul_(soft).mul_(1.0 / ctx.tau)
        # Through the product: the mask is 1 at the winner, so grad_out passes there.
        return grad_h.addcmul_(grad_out, hard), None, None


class _FusedLWTA(torch.autograd.Function):
    """:class:`_STGumbelLWTA` in one pass over memory each way (``csrc/lwta.c``)."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, tau: float, temperature: float):  # noqa: D401
        out, hard, soft = lwta_kernel.forward(h, temperature, tau)
        ctx.save_for_backward(h, soft, hard)
        ctx.tau = tau
        ctx.mark_non_differentiable(hard)
        return out, hard

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor, _grad_hard):
        h, soft, hard = ctx.saved_tensors
        return lwta_kernel.backward(grad_out, h, soft, hard, ctx.tau), None, None


class LWTA(nn.Module):
    """Stochastic local winner-takes-all activation (no parameters).

    Args:
        U: competitors per block. ``U = 1`` means no competition and applies ``activation``.
        tau: Gumbel-softmax relaxation temperature used in training (shapes gradients only;
            it never changes which unit wins).
        temperature: the *competition* temperature ``T``: winners are drawn from
            ``softmax(h_b / T)``, in training and under the ``"sample"`` policy. ``T = 1`` is
            the reference method; a smaller ``T`` makes the competition sharper and ``T = 0``
            picks the largest pre-activation. Annealing ``T`` towards 0 during training
            (:class:`TemperatureSchedule`) trains a network whose deterministic
            (``"argmax"``) winners are the ones it learned with.
        eval_policy: ``"sample"`` draws the winner from ``softmax(h_b / T)`` at evaluation
            (reference behaviour, seed it); ``"argmax"`` takes the largest pre-activation.
        activation: the activation this layer replaced. Used only when ``U == 1``;
            ``None`` means identity (a block of one always wins).
        dim: the unit dimension. ``None`` (auto) uses dim 1 for 4-D ``(N, C, H, W)`` inputs
            (a separate competition at every spatial position) and the last dim otherwise.
        name: the layer's dotted name in its model, used in error messages.

    Shapes:
        ``(..., K)`` -> blocks of ``U`` contiguous units along the last dim;
        ``(N, C, H, W)`` -> blocks of ``U`` consecutive channels at every position.

    Winner capture: set ``capture = True`` (or use :func:`capture_winners`) and the layer keeps
    the winner index of every block from its last forward in :attr:`last_winners`;
    :attr:`last_mask` expands it to a boolean mask shaped like the input. Off by default,
    and then nothing is kept.

    Example:
        >>> layer = LWTA(U=4)
        >>> y = layer(torch.randn(2, 8))
        >>> int((y != 0).sum())  # one winner in each of the 2 x 2 blocks
        4
    """

    def __init__(
        self,
        U: int = 2,
        *,
        tau: float = 1.67,
        temperature: float = 1.0,
        eval_policy: EvalPolicy = "sample",
        activation: nn.Module | None = None,
        dim: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(U, bool) or not isinstance(U, int) or U < 1:
            raise InputError(f"LWTA: U must be an integer >= 1 (competitors per block), got {U!r}")
        if not tau > 0:
            raise InputError(f"LWTA: tau must be > 0, got {tau!r}")
        self.U = U
        self.tau = float(tau)
        self.temperature = temperature  # validated by the property setter
        self.eval_policy = eval_policy  # validated by the property setter
        self.activation = activation if U == 1 else None
        self.dim = dim
        self.name = name
        self.capture = False
        self._last_hard: torch.Tensor | None = None  # (P, U, Q) bool, when capturing
        self._last_shape: tuple[tuple[int, ...], int, bool] | None = None

    # -- configuration ------------------------------------------------------------------
    @property
    def eval_policy(self) -> str:
        return self._eval_policy

    @eval_policy.setter
    def eval_policy(self, policy: str) -> None:
        if policy not in EVAL_POLICIES:
            raise InputError(
                f"LWTA {self._label()}: unknown eval_policy {policy!r}; expected one of "
                f"{', '.join(EVAL_POLICIES)}"
            )
        self._eval_policy = policy

    @property
    def temperature(self) -> float:
        """The competition temperature ``T`` (winners ~ ``softmax(h_b / T)``)."""
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise InputError(
                f"LWTA {self._label()}: temperature must be a number >= 0, got {value!r}"
            )
        self._temperature = float(value)

    @property
    def stochastic(self) -> bool:
        """Whether the current forward pass samples winners (training, or ``"sample"``)."""
        return self.U > 1 and (self.training or self._eval_policy == "sample")

    def _label(self) -> str:
        return repr(self.name) if getattr(self, "name", None) else "(unnamed)"

    def extra_repr(self) -> str:
        parts = [f"U={self.U}", f"tau={self.tau}", f"eval_policy={self._eval_policy!r}"]
        if self._temperature != 1.0:
            parts.insert(2, f"temperature={self._temperature:g}")
        if self.dim is not None:
            parts.append(f"dim={self.dim}")
        if self.name:
            parts.append(f"name={self.name!r}")
        return ", ".join(parts)

    # -- forward ------------------------------------------------------------------------
    def _unit_dim(self, x: torch.Tensor) -> int:
        if x.dim() == 0 or x.dim() > 4:
            raise InputError(
                f"LWTA {self._label()}: unsupported input rank {x.dim()} (shape "
                f"{tuple(x.shape)}); expected (..., K) with 1-3 dims or (N, C, H, W)"
            )
        if self.dim is not None:
            if not -x.dim() <= self.dim < x.dim():
                raise InputError(
                    f"LWTA {self._label()}: dim={self.dim} is out of range for an input of "
                    f"shape {tuple(x.shape)}"
                )
            return self.dim % x.dim()
        return 1 if x.dim() == 4 else x.dim() - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        unit_dim = self._unit_dim(x)
        if self.U == 1:
            if self.capture:  # every unit is a block of one and always wins
                hard = torch.ones_like(x, dtype=torch.bool)
                self._keep(
                    hard.reshape(-1, 1, math.prod(x.shape[unit_dim + 1 :])),
                    tuple(x.shape),
                    unit_dim,
                )
            return self.activation(x) if self.activation is not None else x
        width = x.shape[unit_dim]
        if width % self.U:
            kind = "C" if x.dim() == 4 and unit_dim == 1 else "K"
            divisors = [d for d in range(2, width + 1) if width % d == 0][:8]
            raise InputError(
                f"LWTA {self._label()}: {kind}={width} units are not divisible by U={self.U} "
                f"(input shape {tuple(x.shape)}); U values that divide {width}: "
                f"{', '.join(map(str, divisors)) or 'none above 1'}"
            )
        # A channels_last conv map keeps a block's U channels side by side in memory: it
        # competes over the last dim of its (N, H, W, C) view, like tokens, and comes back
        # channels_last (no layout conversion on either side).
        nhwc = _strictly_channels_last(x, unit_dim)
        if nhwc:
            x, unit_dim = x.permute(0, 2, 3, 1), 3
        shape = tuple(x.shape)
        # (P, U, Q) blocks, competition over dim 1: (N * C/U, U, H * W) for conv maps,
        # (M, U, 1) when the units are the last dim.
        outer = math.prod(shape[:unit_dim]) * (width // self.U)
        blocks = x.reshape(outer, self.U, math.prod(shape[unit_dim + 1 :]))
        if not self.training and (torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()):
            out = _exported_competition(blocks, self).reshape(shape)
            return out.permute(0, 3, 1, 2) if nhwc else out
        temperature = self._temperature if self.stochastic else 0.0
        fused = lwta_kernel.supports(blocks)
        if self.training and torch.is_grad_enabled() and blocks.requires_grad:
            train_fn = _FusedLWTA if fused else _STGumbelLWTA
            out, hard = train_fn.apply(blocks, self.tau, temperature)
        elif fused:
            out, hard, _ = lwta_kernel.forward(blocks.detach(), temperature, None)
            if torch.is_grad_enabled() and blocks.requires_grad:
                out = blocks * hard  # differentiable in the values, as below
        else:
            with torch.no_grad():  # winners are not differentiable; the values below are
                hard, _ = _winner_mask(_perturbed(blocks.detach(), temperature))
            out = blocks * hard
        if self.capture:
            self._keep(hard, shape, unit_dim, nhwc)
        out = out.reshape(shape)
        return out.permute(0, 3, 1, 2) if nhwc else out

    def _keep(
        self, hard: torch.Tensor, shape: tuple[int, ...], unit_dim: int, nhwc: bool = False
    ) -> None:
        """Keep the ``(P, U, Q)`` winner mask of the last forward (no copy); ``shape`` is the
        input's, or its ``(N, H, W, C)`` view's when ``nhwc``."""
        self._last_hard = hard.detach()
        self._last_shape = (shape, unit_dim, nhwc)

    # -- captured winners ---------------------------------------------------------------
    @property
    def last_mask(self) -> torch.Tensor | None:
        """Boolean mask (input-shaped) of the units that won in the last captured forward."""
        if self._last_hard is None:
            return None
        shape, _, nhwc = self._last_shape
        mask = self._last_hard.reshape(shape)
        return mask.permute(0, 3, 1, 2) if nhwc else mask

    @property
    def last_winners(self) -> torch.Tensor | None:
        """Winner index (0..U-1) of every block in the last captured forward.

        Shaped like the input with its unit dimension cut to ``K / U`` blocks, e.g.
        ``(N, T, K/U)`` for tokens and ``(N, C/U, H, W)`` for conv maps.
        """
        if self._last_hard is None:
            return None
        shape, unit_dim, nhwc = self._last_shape
        winners = self._last_hard.to(torch.uint8).argmax(dim=1)
        winners = winners.reshape(
            *shape[:unit_dim], shape[unit_dim] // self.U, *shape[unit_dim + 1 :]
        )
        return winners.permute(0, 3, 1, 2) if nhwc else winners

    def clear_capture(self) -> None:
        """Forget the last captured winners."""
        self._last_hard = None
        self._last_shape = None


# -- model-level helpers --------------------------------------------------------------------
def lwta_layers(model: nn.Module) -> dict[str, LWTA]:
    """All :class:`LWTA` modules of ``model`` by dotted name (``{}`` if none).

    Example:
        >>> from discover import create_model
        >>> sorted(lwta_layers(create_model("small_vit", U=4)))[:1]
        ['blocks.0.mlp.act']
    """
    return {name: m for name, m in model.named_modules() if isinstance(m, LWTA)}


def set_eval_policy(model: nn.Module, policy: EvalPolicy) -> int:
    """Set the evaluation policy of every LWTA layer of ``model``; returns how many changed.

    Example:
        >>> set_eval_policy(create_model("small_resnet", U=2), "argmax")  # doctest: +SKIP
        13
    """
    if policy not in EVAL_POLICIES:
        raise InputError(
            f"unknown eval policy {policy!r}; expected one of {', '.join(EVAL_POLICIES)}"
        )
    layers = lwta_layers(model).values()
    for layer in layers:
        layer.eval_policy = policy
    return len(layers)


def set_temperature(model: nn.Module, temperature: float) -> int:
    """Set the competition temperature of every LWTA layer of ``model``; returns how many.

    Example:
        >>> set_temperature(create_model("small_vit", U=4), 0.1)  # doctest: +SKIP
        6
    """
    layers = lwta_layers(model).values()
    for layer in layers:
        layer.temperature = temperature
    return len(layers)


SCHEDULE_SHAPES: tuple[str, ...] = ("cosine", "exp", "linear")


@dataclasses.dataclass(frozen=True)
class TemperatureSchedule:
    """The competition temperature over a training run: ``start`` -> ``final``.

    ``T`` moves from ``start`` to ``final`` over the first ``anneal`` fraction of the
    training steps (``shape``: ``"cosine"``, ``"linear"``, or ``"exp"`` = geometric, which
    needs ``final > 0``) and then stays at ``final``, so the last part of training runs
    with the winners the model will be deployed with. ``start == final`` is a constant
    temperature (the reference method: ``T = 1`` throughout).

    Example:
        >>> schedule = TemperatureSchedule(start=1.0, final=0.0, anneal=0.5)
        >>> schedule.at(0.0), schedule.at(0.25), schedule.at(0.75)
        (1.0, 0.5, 0.0)
    """

    start: float = 1.0
    final: float = 1.0
    anneal: float = 0.75
    shape: str = "cosine"

    def __post_init__(self) -> None:
        for name in ("start", "final"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise InputError(
                    f"TemperatureSchedule: {name} must be a number >= 0, got {value!r}"
                )
        if not 0 < self.anneal <= 1:
            raise InputError(
                f"TemperatureSchedule: anneal must be a fraction in (0, 1], got {self.anneal!r}"
            )
        if self.shape not in SCHEDULE_SHAPES:
            raise InputError(
                f"TemperatureSchedule: unknown shape {self.shape!r}; expected one of "
                f"{', '.join(SCHEDULE_SHAPES)}"
            )
        if self.shape == "exp" and self.start != self.final and min(self.start, self.final) == 0:
            raise InputError(
                "TemperatureSchedule: shape 'exp' needs start and final > 0; use 'cosine' or "
                "'linear' to reach 0"
            )

    @property
    def constant(self) -> bool:
        return self.start == self.final

    def at(self, progress: float) -> float:
        """The temperature after ``progress`` (0..1) of the training steps."""
        if self.constant:
            return float(self.final)
        p = min(max(progress / self.anneal, 0.0), 1.0)
        if self.shape == "cosine":
            return self.final + (self.start - self.final) * 0.5 * (1 + math.cos(math.pi * p))
        if self.shape == "linear":
            return self.start + (self.final - self.start) * p
        return self.start * (self.final / self.start) ** p

    def to_dict(self) -> dict[str, float | str]:
        return dataclasses.asdict(self)


@contextlib.contextmanager
def eval_policy(model: nn.Module, policy: EvalPolicy) -> Iterator[nn.Module]:
    """Temporarily set every LWTA layer's evaluation policy; restores the old ones on exit.

    Example:
        >>> with eval_policy(model, "argmax"):  # doctest: +SKIP
        ...     logits = model(x)
    """
    layers = lwta_layers(model)
    previous = {name: layer.eval_policy for name, layer in layers.items()}
    set_eval_policy(model, policy)
    try:
        yield model
    finally:
        for name, layer in layers.items():
            layer.eval_policy = previous[name]


@contextlib.contextmanager
def capture_winners(model: nn.Module) -> Iterator[dict[str, LWTA]]:
    """Turn winner capture on for every LWTA layer for the duration of the block.

    Yields the ``{name: LWTA}`` dict; after each forward read ``layer.last_mask`` or
    ``layer.last_winners``. Capture is switched off and the stored winners are dropped on exit.

    Example:
        >>> with capture_winners(model) as layers:  # doctest: +SKIP
        ...     model(x)
        ...     masks = {name: layer.last_mask for name, layer in layers.items()}
    """
    layers = lwta_layers(model)
    previous = {name: layer.capture for name, layer in layers.items()}
    for layer in layers.values():
        layer.capture = True
    try:
        yield layers
    finally:
        for name, layer in layers.items():
            layer.capture = previous[name]
            if not layer.capture:
                layer.clear_capture()


@torch.no_grad()
def winner_peakedness(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """How peaked each LWTA layer's winner distribution is on inputs ``x``.

    For every block (and token or position) the probability of its most likely unit under
    ``softmax(h_b / T)``, with the layer's own competition temperature ``T``, averaged per
    layer: ``1 / U`` means a uniform draw, ``1`` a deterministic winner (``T = 0`` gives 1).
    When it is near 1, the ``"argmax"`` policy picks the winners the network was trained
    with; when it is low, argmax winners differ from the sampled ones.

    Example:
        >>> model = create_model("small_vit", U=4).eval()  # doctest: +SKIP
        >>> winner_peakedness(model, torch.randn(8, 3, 64, 64))  # doctest: +SKIP
        {'blocks.0.mlp.act': 0.61, ...}
    """
    sums: dict[str, list[float]] = {}

    def hook(name: str, layer: LWTA, args: tuple[torch.Tensor, ...], _output: Any) -> None:
        if layer.U == 1:
            return
        h = args[0].detach().float()  # the layer's input (LWTA leaves it unchanged)
        unit_dim = layer._unit_dim(h)
        shape = h.shape
        blocks = h.reshape(
            math.prod(shape[:unit_dim]) * (shape[unit_dim] // layer.U),
            layer.U,
            math.prod(shape[unit_dim + 1 :]),
        )
        if layer.temperature == 0:
            top = torch.ones(())
        else:
            top = torch.softmax(blocks / layer.temperature, dim=1).amax(dim=1).mean()
        entry = sums.setdefault(name, [0.0, 0.0])
        entry[0] += float(top) * blocks.shape[0]
        entry[1] += blocks.shape[0]

    with capture(model, lwta_layers(model), hook):
        model(x)
    return {name: total / count for name, (total, count) in sums.items()}


@torch.no_grad()
def average_logits(model: nn.Module, x: torch.Tensor, samples: int = 6) -> torch.Tensor:
    """Logits averaged over ``samples`` stochastic forward passes (the reference evaluation).

    The model is run in eval mode as it is; when no LWTA layer samples (no LWTA layers, or
    every one uses the ``"argmax"`` policy) the passes would be identical, so one is run.

    Example:
        >>> logits = average_logits(model.eval(), images, samples=6)  # doctest: +SKIP
    """
    if samples < 1:
        raise InputError(f"average_logits: samples must be >= 1, got {samples}")
    if not any(layer.stochastic for layer in lwta_layers(model).values()):
        samples = 1
    total = model(x).float()
    for _ in range(samples - 1):
        total += model(x).float()
    return total / samples
