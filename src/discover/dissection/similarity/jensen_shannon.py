"""The Jensen-Shannon similarity ``jsd``: the project's reconstruction of DISCOVER's measure,
the divergence of a unit's and a concept's softmax distributions over a support of images.

The defaults, and why: z-scoring makes ``tau`` a unitless sharpness in units of each column's
standard deviation, so one value serves every layer, model and image-text model (raw
activation scales vary by orders of magnitude, and a concept's raw CLIP cosines vary by only
a few hundredths across images, which would make ``r_m`` almost uniform). ``tau_q = tau_p =
1`` and equal transforms treat unit and concept alike; with ``"union_topk"`` the score is then
symmetric (``jsd(P, Q) == jsd(Q, P).T``) and a concept whose top images differ from the
unit's is penalised, which ``"neuron_topk"`` cannot see. ``support_k = 100`` matches
soft-WPMI's ``top_k``.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from discover.dissection.similarity.common import (
    LN2,
    clamped,
    fill_info,
    positive_int,
    prepare,
    slices,
    top_images,
    top_sets,
)
from discover.errors import InputError

__all__ = ["Transform", "Support", "jsd", "jsd_definition"]

Transform = Literal["identity", "zscore"]
Support = Literal["all", "neuron_topk", "union_topk"]

_JSD_BLOCK = 2**20  # support entries per (neuron, concept, image) block in ``jsd``
_TRANSFORMS = ("identity", "zscore")
_SUPPORTS = ("all", "neuron_topk", "union_topk")

_SUPPORT_TEXT = {
    "all": "all N probe images (exact, O(K M N))",
    "neuron_topk": (
        "the support_k images with the largest activation of unit k; both distributions "
        "are renormalised on that set (not symmetric in the roles of P and Q)"
    ),
    "union_topk": (
        "the union of the support_k images with the largest activation of unit k and the "
        "support_k images with the largest score of concept m (each image once); both "
        "distributions are renormalised on that set"
    ),
}


def jsd_definition(
    *,
    tau_q: float = 1.0,
    tau_p: float = 1.0,
    transform_q: Transform = "zscore",
    transform_p: Transform = "zscore",
    support: Support = "union_topk",
    support_k: int = 100,
    min_std: float = 1e-12,
) -> dict[str, Any]:
    """The exact definition :func:`jsd` computes with these parameters, as plain data.

    Save it with every result (``jsd(..., info=info)`` stores it as ``info["definition"]``,
    with the effective ``support_k``). Defaults are those of :func:`jsd`.

    Example:
        >>> jsd_definition()["support"]
        'union_topk'
    """
    if transform_q not in _TRANSFORMS or transform_p not in _TRANSFORMS:
        raise InputError(
            f"transforms must be one of {_TRANSFORMS}, got {transform_q!r}, {transform_p!r}"
        )
    if support not in _SUPPORTS:
        raise InputError(f"support must be one of {_SUPPORTS}, got {support!r}")
    if not (tau_q > 0 and tau_p > 0):
        raise InputError(f"temperatures must be positive, got tau_q={tau_q}, tau_p={tau_p}")
    positive_int("support_k", support_k)
    return {
        "name": "jsd",
        "status": (
            "project reconstruction (docs/method.md 7.6): the DISCOVER paper's JSD formula and "
            "code are not available; not validated against the paper"
        ),
        "formula": (
            "S[k,m] = -JSD(p_k || r_m) = -(KL(p_k || mu) + KL(r_m || mu)) / 2, mu = (p_k + r_m) / 2"
        ),
        "p_k": "softmax over the support of f(Q[:, k]) / tau_q",
        "r_m": "softmax over the support of g(P[:, m]) / tau_p",
        "transform_q": transform_q,
        "transform_p": transform_p,
        "transforms": {
            "identity": "x",
            "zscore": (
                "(x - mean) / max(std, min_std), mean and population std of the column "
                "over all N probe images, before restricting to the support"
            ),
        },
        "tau_q": tau_q,
        "tau_p": tau_p,
        "min_std": min_std,
        "support": support,
        "support_k": support_k if support != "all" else None,
        "support_description": _SUPPORT_TEXT[support],
        "top_k_order": "descending raw value (signed), ties broken by the lower image index",
        "log_base": "e",
        "range": [-LN2, 0.0],
        "higher_is_better": True,
    }


def _affine(x: Tensor, transform: str, tau: float, min_std: float) -> tuple[Tensor, Tensor]:
    """Per-column ``(shift, scale)`` with ``logits = (x - shift) / scale`` for ``x`` ``[N, c]``."""
    if transform == "zscore":
        std, mean = torch.std_mean(x, dim=0, correction=0)
        return mean, std.clamp_min_(min_std).mul_(tau)
    return torch.zeros_like(x[0]), torch.full_like(x[0], tau)


def _kl_to_mid(p: Tensor, log_p: Tensor, r: Tensor, log_r: Tensor) -> Tensor:
    """``sum_i p_i log(p_i / mu_i) + r_i log(r_i / mu_i)`` over the last dim, ``mu = (p + r) / 2``.

    Entries with ``p_i = r_i = 0`` contribute 0; ``log_p``, ``log_r`` must be finite.
    """
    log_mid = (p + r).mul_(0.5).clamp_min_(torch.finfo(p.dtype).tiny).log_()
    return (log_p - log_mid).mul_(p).add_((log_r - log_mid).mul_(r)).sum(dim=-1)


def _jsd_log_probs(log_p: Tensor, log_r: Tensor) -> Tensor:
    """JSD (nats) of distributions over the last dim, as broadcastable log-probabilities."""
    return _kl_to_mid(log_p.exp(), log_p, log_r.exp(), log_r).mul_(0.5).clamp_(0.0, LN2)


def _jsd_union(x_a: Tensor, y_a: Tensor, x_b: Tensor, y_b: Tensor, fresh: Tensor) -> Tensor:
    """JSD (nats) of ``softmax(x)`` and ``softmax(y)`` on the union of image sets ``A`` and ``B``.

    ``A`` holds the unit's top images (its largest logit ``x``), ``B`` the concept's (its
    largest ``y``). Logits on ``A``: ``x_a [kc, 1, k]``, ``y_a [kc, mc, k]``; on ``B``:
    ``x_b [kc, mc, k]``, ``y_b [1, mc, k]``. ``fresh [kc, mc, k]`` is 0 for the images of ``B``
    already in ``A``, so each image of the union counts once.
    """
    x_max, y_max = x_a.amax(dim=-1, keepdim=True), y_b.amax(dim=-1, keepdim=True)
    e_xa, e_xb = (x_a - x_max).exp_(), (x_b - x_max).exp_().mul_(fresh)
    e_ya, e_yb = (y_a - y_max).exp_(), (y_b - y_max).exp_().mul(fresh)
    z_p = e_xa.sum(dim=-1, keepdim=True) + e_xb.sum(dim=-1, keepdim=True)  # >= 1
    z_r = e_ya.sum(dim=-1, keepdim=True) + e_yb.sum(dim=-1, keepdim=True)  # >= 1
    log_zp, log_zr = z_p.log().add_(x_max), z_r.log().add_(y_max)
    js = _kl_to_mid(e_xa / z_p, x_a - log_zp, e_ya / z_r, y_a - log_zr)
    js += _kl_to_mid(e_xb / z_p, x_b - log_zp, e_yb / z_r, y_b - log_zr)
    return js.mul_(0.5).clamp_(0.0, LN2)


@torch.no_grad()
def jsd(
    concept_acts: Tensor,
    neuron_acts: Tensor,
    *,
    tau_q: float = 1.0,
    tau_p: float = 1.0,
    transform_q: Transform = "zscore",
    transform_p: Transform = "zscore",
    support: Support = "union_topk",
    support_k: int = 100,
    min_std: float = 1e-12,
    chunk_size: int | None = None,
    concept_chunk_size: int | None = None,
    info: dict[str, Any] | None = None,
) -> Tensor:
    """Jensen-Shannon similarity: the project's reconstruction of DISCOVER's measure, §7.6.

    No reference implementation exists; this is the recommended definition of ``docs/method.md``
    §7.6, with defaults chosen here, not validated against the paper. For unit ``k`` and
    concept ``m``, on a support set ``T`` of images::

        p_k[i] = softmax_{i in T}(f(Q[:, k])[i] / tau_q)
        r_m[i] = softmax_{i in T}(g(P[:, m])[i] / tau_p)
        S[k, m] = -JSD(p_k || r_m) = -(KL(p_k || mu) + KL(r_m || mu)) / 2,  mu = (p_k + r_m) / 2

    in nats, so ``S`` lies in ``[-ln 2, 0]`` and 0 means identical distributions. ``f``, ``g``
    are ``"identity"`` or ``"zscore"`` (``(x - mean) / max(std, min_std)`` over all ``N``
    images, population std). ``support`` selects ``T``:

    * ``"union_topk"`` (default): the unit's ``support_k`` top images united with the
      concept's ``support_k`` top images. Cost ``O(K M support_k)``.
    * ``"neuron_topk"``: the unit's top images only. Half the cost, but blind to images where
      the concept is strong and the unit silent, and not symmetric in ``P`` and ``Q``.
    * ``"all"``: all ``N`` images, exact. Cost ``O(K M N)``.

    The defaults are explained in the module docstring. A dead unit (constant column) gives
    a uniform ``p_k``: finite scores.

    ``info["definition"]`` receives :func:`jsd_definition` of the effective parameters.
    ``chunk_size`` / ``concept_chunk_size`` default to blocks of at most ``2**20`` support
    entries (about ten such float temporaries are alive at once).

    Example:
        >>> Q = torch.randn(500, 2)
        >>> P = torch.cat([torch.randn(500, 3), 3 * Q[:, :1] + 1], dim=1)  # planted concept
        >>> S = jsd(P, Q)
        >>> S.argmax(dim=1)[0].item(), abs(S[0, 3].item()) < 1e-6
        (3, True)
    """
    dtype = prepare(concept_acts, neuron_acts)
    P, Q = concept_acts, neuron_acts
    (N, M), K = P.shape, Q.shape[1]
    requested = support_k
    definition = jsd_definition(  # validates the parameters
        tau_q=tau_q, tau_p=tau_p, transform_q=transform_q, transform_p=transform_p,
        support=support, support_k=requested, min_std=min_std,
    )  # fmt: skip
    k = requested
    if support != "all":
        k = definition["support_k"] = clamped("support_k", requested, N)
    kc, mc = _chunk_sizes(support, (N, M, K), k, chunk_size, concept_chunk_size)
    units = _unit_logits(Q, dtype, transform_q, tau_q, min_std, kc, None if support == "all" else k)
    out = torch.empty(K, M, dtype=dtype, device=P.device)
    for cs in slices(M, mc):
        p = P[:, cs].to(dtype)
        shift, scale = _affine(p, transform_p, tau_p, min_std)
        logit_p = (p - shift) / scale  # [N, mcc]
        if support == "all":
            _on_all_images(out, cs, logit_p, Q, units, kc)
        elif support == "neuron_topk":
            _on_unit_tops(out, cs, logit_p, units, kc)
        else:
            _on_both_tops(out, cs, p, logit_p, Q, units, kc)
    fill_info(
        info, "jsd", P, Q, dtype, tau_q=tau_q, tau_p=tau_p, transform_q=transform_q,
        transform_p=transform_p, support=support, support_k=definition["support_k"],
        support_k_requested=requested, support_k_clamped=k != requested, min_std=min_std,
        definition=definition,
    )  # fmt: skip
    return out


def _chunk_sizes(
    support: str, shape: tuple[int, int, int], k: int, chunk_size: int | None,
    concept_chunk_size: int | None,
) -> tuple[int, int]:  # fmt: skip
    """Units and concepts per block (``N, M, K = shape``): by default blocks of at most
    ``2**20`` support entries."""
    N, M, K = shape
    width = {"all": N, "neuron_topk": k, "union_topk": 2 * k}[support]
    if chunk_size is None:
        chunk_size = max(1, min(K, 64, _JSD_BLOCK // width))
    kc = positive_int("chunk_size", chunk_size)
    if concept_chunk_size is None:
        concept_chunk_size = max(1, min(M, _JSD_BLOCK // (kc * width)))
    return kc, positive_int("concept_chunk_size", concept_chunk_size)


class _Units(NamedTuple):
    """Each unit's logit transform ``(x - shift) / scale`` and, for a top-k support, its top
    images ``top`` ``[K, k]`` with their logits ``logit_top``."""

    shift: Tensor
    scale: Tensor
    top: Tensor | None
    logit_top: Tensor | None


def _unit_logits(
    Q: Tensor, dtype: torch.dtype, transform: str, tau: float, min_std: float, kc: int,
    k: int | None,
) -> _Units:  # fmt: skip
    """The per-unit logit transform (and, with ``k``, top images with their logits), computed
    once, ``kc`` units at a time."""
    K = Q.shape[1]
    stats = [_affine(Q[:, ks].to(dtype), transform, tau, min_std) for ks in slices(K, kc)]
    shift_q = torch.cat([shift for shift, _ in stats])
    scale_q = torch.cat([scale for _, scale in stats])
    if k is None:
        return _Units(shift_q, scale_q, None, None)
    top = [top_images(Q[:, ks].to(dtype), k) for ks in slices(K, kc)]
    top_q = torch.cat([idx for _, idx in top])  # [K, k]
    logit_top_q = (torch.cat([v for v, _ in top]) - shift_q[:, None]) / scale_q[:, None]
    return _Units(shift_q, scale_q, top_q, logit_top_q)


def _on_all_images(
    out: Tensor, cs: slice, logit_p: Tensor, Q: Tensor, units: _Units, kc: int
) -> None:
    """``support="all"``: the scores of the concepts ``cs`` over all ``N`` images."""
    log_r = torch.log_softmax(logit_p.T, dim=-1)[None]  # [1, mcc, N]
    for ks in slices(Q.shape[1], kc):
        logit_q = (Q[:, ks].to(logit_p.dtype) - units.shift[ks]) / units.scale[ks]
        log_p = torch.log_softmax(logit_q.T, dim=-1)[:, None]  # [kc, 1, N]
        out[ks, cs] = _jsd_log_probs(log_p, log_r).neg_()


def _unit_top_logits(logit_p: Tensor, units: _Units, ks: slice) -> tuple[Tensor, Tensor]:
    """On each unit's top images: the unit's logits ``[kc, 1, k]`` and the concepts'
    ``[kc, mcc, k]``."""
    k = units.top.shape[1]
    x_a = units.logit_top[ks, None]  # [kc, 1, k]
    rows = logit_p.index_select(0, units.top[ks].reshape(-1))
    return x_a, rows.view(ks.stop - ks.start, k, -1).transpose(1, 2)


def _on_unit_tops(out: Tensor, cs: slice, logit_p: Tensor, units: _Units, kc: int) -> None:
    """``support="neuron_topk"``: the scores of the concepts ``cs`` on each unit's top images."""
    for ks in slices(units.top.shape[0], kc):
        x_a, y_a = _unit_top_logits(logit_p, units, ks)
        log_p = torch.log_softmax(x_a, dim=-1)
        out[ks, cs] = _jsd_log_probs(log_p, torch.log_softmax(y_a, dim=-1)).neg_()


def _on_both_tops(
    out: Tensor, cs: slice, p: Tensor, logit_p: Tensor, Q: Tensor, units: _Units, kc: int
) -> None:
    """``support="union_topk"``: the scores of the concepts ``cs`` on the union of each unit's
    and each concept's top images."""
    (N, _), k, dtype = p.shape, units.top.shape[1], p.dtype
    top_p = top_sets(p, k)  # [mcc, k]
    y_b = logit_p.T.gather(1, top_p)[None]  # [1, mcc, k]
    cols = top_p.reshape(-1)
    for ks in slices(Q.shape[1], kc):
        kcc = ks.stop - ks.start
        x_a, y_a = _unit_top_logits(logit_p, units, ks)
        x_b = Q[:, ks].index_select(0, cols).to(dtype).sub_(units.shift[ks]).div_(units.scale[ks])
        x_b = x_b.T.reshape(kcc, -1, k)  # [kc, mcc, k]
        seen = torch.zeros(kcc, N, dtype=torch.bool, device=p.device)
        fresh = ~seen.scatter_(1, units.top[ks], True)[:, cols].view(kcc, -1, k)
        out[ks, cs] = _jsd_union(x_a, y_a, x_b, y_b, fresh.to(dtype)).neg_()
