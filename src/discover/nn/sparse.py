"""Sparse deterministic inference: an LWTA MLP's second product over the winners only.

Under the ``"argmax"`` policy an LWTA layer passes one unit per block of ``U``, so in a
``Linear -> LWTA -> Linear`` MLP (the MLP of ViT/DeiT blocks) only ``K / U`` of the second
product's ``K`` inputs are non-zero. :class:`SparseLWTAMlp` computes that product over the
winners' weight rows alone (``1/U`` of the multiply-adds), with a small C kernel that fuses
choosing the winners with the multiply (``csrc/sparse_mlp.c``, compiled on first use like
the LWTA kernel) or, without it, ``torch.nn.functional.embedding_bag``. The outputs equal the
plain path's within float32 rounding (the sum runs in another order).

The sparse path is taken only when it is both valid and measured to be faster
(``benchmarks/results/inference_speed.md``): evaluation mode, the ``"argmax"`` policy, no
gradient, no hooks on the MLP's inner modules, no winner capture, not while exporting or
compiling, on CPU, and ``U`` at least :data:`SPARSE_MIN_U` (:data:`SPARSE_TORCH_MIN_U`
without the kernel). Everything else runs the MLP exactly as timm's ``Mlp`` does.

Example:
    >>> from discover import create_model
    >>> model = create_model("small_vit", U=16, eval_policy="argmax").eval()  # doctest: +SKIP
    >>> type(model.blocks[0].mlp).__name__  # doctest: +SKIP
    'SparseLWTAMlp'
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from discover._utils import CKernel
from discover.errors import InputError
from discover.nn.lwta import LWTA

__all__ = [
    "SPARSE_MIN_U",
    "SPARSE_TORCH_MIN_U",
    "SparseLWTAMlp",
    "kernel_available",
    "sparse_linear",
    "sparse_path",
    "sparsify_mlps",
]

SPARSE_MIN_U = 2
"""The smallest ``U`` for which the C kernel's sparse product replaces LWTA + the dense
product: every ``U`` measured, down to 2, was faster sparse in both MLP shapes of
``benchmarks/results/inference_speed.md`` (the kernel skips the LWTA pass as well as
``(U - 1) / U`` of the multiply-adds)."""

SPARSE_TORCH_MIN_U = 3
"""The same for the torch fallback (``embedding_bag``), used on CPU where the C kernel is
missing: from ``U = 3`` on it beat LWTA + the dense product in both shapes measured (at
``U = 2`` it lost in one). Other devices keep the plain path: nothing was measured there."""


def _declare(lib: ctypes.CDLL) -> None:
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.lwta_sparse_linear.argtypes = [ptr, ptr, ptr, ptr, i64, i64, i64, i64, ctypes.c_int]
    lib.lwta_sparse_linear.restype = None


_KERNEL = CKernel(
    "discover.nn",
    "csrc/sparse_mlp.c",
    "sparse LWTA MLP kernel",
    env="DISCOVER_SPARSE_KERNEL",
    declare=_declare,
)
kernel_available = _KERNEL.available
enabled = _KERNEL.enabled  # ``with enabled(False):`` forces the torch fallback

_SPARSE_PATH = contextvars.ContextVar("discover_sparse_path", default=True)


@contextlib.contextmanager
def sparse_path(enabled: bool = True) -> Iterator[None]:
    """Allow (``True``, the default) or forbid the sparse path of every
    :class:`SparseLWTAMlp` inside the block, e.g. to time or check the plain computation.

    Example:
        >>> with sparse_path(False):  # doctest: +SKIP
        ...     plain = model(x)
    """
    token = _SPARSE_PATH.set(enabled)
    try:
        yield
    finally:
        _SPARSE_PATH.reset(token)


def _check(h: torch.Tensor, U: int, weight_t: torch.Tensor) -> tuple[int, int]:
    K, D = weight_t.shape
    if U < 1 or h.shape[-1] != K or K % U:
        raise InputError(
            f"sparse_linear: h has {h.shape[-1]} units and the weight {K} inputs; both must be "
            f"the same multiple of U={U}"
        )
    return K, D


def sparse_linear(
    h: torch.Tensor,
    U: int,
    weight_t: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    kernel: bool = True,
) -> torch.Tensor:
    """``Linear(LWTA_argmax(h))`` computed over each block's winner only.

    ``h`` is ``(..., K)`` (the first product), ``weight_t`` the second Linear's weight
    transposed and contiguous (``K x D``), ``bias`` its bias. ``kernel=False`` uses
    ``embedding_bag`` even where the C kernel is available.

    Example:
        >>> lin = torch.nn.Linear(8, 3)
        >>> h = torch.randn(5, 8)
        >>> y = sparse_linear(h, 4, lin.weight.t().contiguous(), lin.bias)
        >>> y.shape
        torch.Size([5, 3])
    """
    K, D = _check(h, U, weight_t)
    rows = h.reshape(-1, K)
    if kernel and _kernel_supports(rows, weight_t, bias):
        out = _kernel_linear(rows.contiguous(), U, weight_t, bias, K, D)
    else:
        out = _torch_linear(rows, U, weight_t, bias)
    return out.reshape(*h.shape[:-1], D)


def _kernel_supports(rows: torch.Tensor, weight_t: torch.Tensor, bias: torch.Tensor | None) -> bool:
    tensors = [rows, weight_t] + ([bias] if bias is not None else [])
    return (
        all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors)
        and weight_t.is_contiguous()
        and (bias is None or bias.is_contiguous())
        and kernel_available()
    )


def _kernel_linear(
    rows: torch.Tensor,
    U: int,
    weight_t: torch.Tensor,
    bias: torch.Tensor | None,
    K: int,
    D: int,
) -> torch.Tensor:
    lib = _KERNEL.library()
    assert lib is not None
    out = torch.empty(rows.shape[0], D, dtype=torch.float32)
    lib.lwta_sparse_linear(
        rows.data_ptr(),
        weight_t.data_ptr(),
        None if bias is None else bias.data_ptr(),
        out.data_ptr(),
        rows.shape[0],
        K,
        U,
        D,
        torch.get_num_threads(),
    )
    return out


def _torch_linear(
    rows: torch.Tensor, U: int, weight_t: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    blocks = rows.reshape(rows.shape[0], -1, U)
    # the first maximum of each block, as the LWTA kernel's strict comparison picks it
    values, winners = blocks.max(dim=-1)
    offsets = torch.arange(0, rows.shape[1], U, device=rows.device)
    out = F.embedding_bag(winners + offsets, weight_t, per_sample_weights=values, mode="sum")
    return out + bias if bias is not None else out


def _is_plain_mlp(module: nn.Module) -> bool:
    """A timm-style ``Mlp`` (fc1, act, drop1, norm, fc2, drop2) whose act is an LWTA and whose
    norm is the identity: the shape the sparse path computes."""
    children = dict(module.named_children())
    if set(children) != {"fc1", "act", "drop1", "norm", "fc2", "drop2"}:
        return False
    return (
        isinstance(children["fc1"], nn.Linear)
        and isinstance(children["fc2"], nn.Linear)
        and isinstance(children["act"], LWTA)
        and isinstance(children["norm"], nn.Identity)
        and all(isinstance(children[d], (nn.Dropout, nn.Identity)) for d in ("drop1", "drop2"))
    )


class SparseLWTAMlp(nn.Module):
    """A timm ``Mlp`` with an LWTA activation that, under deterministic winners, computes its
    second product over the winners only. Its submodules and ``state_dict`` keys are the
    ``Mlp``'s, so checkpoints load either way.

    Example:
        >>> from timm.layers import Mlp
        >>> mlp = SparseLWTAMlp(Mlp(16, 32, act_layer=lambda: LWTA(U=8)))
        >>> mlp.eval().act.eval_policy = "argmax"
        >>> with torch.no_grad():
        ...     mlp(torch.randn(2, 5, 16)).shape
        torch.Size([2, 5, 16])
    """

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        if not _is_plain_mlp(mlp):
            raise InputError(
                f"SparseLWTAMlp: expected a timm-style Mlp (fc1, act=LWTA, drop1, norm=Identity, "
                f"fc2, drop2), got {type(mlp).__name__}"
            )
        for name, child in mlp.named_children():
            self.add_module(name, child)
        self.train(mlp.training)
        self._weight_t: torch.Tensor | None = None
        self._weight_key: tuple[int, int, torch.device] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._sparse_applies(x):
            return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))
        h = self.fc1(x)
        return sparse_linear(h, self.act.U, self._transposed_weight(), self.fc2.bias)

    def _sparse_applies(self, x: torch.Tensor) -> bool:
        act: LWTA = self.act  # type: ignore[assignment]
        if not _SPARSE_PATH.get() or self.training or act.stochastic or act.capture or act.U < 2:
            return False
        if torch.is_grad_enabled() and (x.requires_grad or self.fc1.weight.requires_grad):
            return False
        if torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling():
            return False
        if any(
            m._forward_hooks or m._forward_pre_hooks
            for m in (act, self.drop1, self.norm, self.fc2, self.drop2)
        ):
            return False
        if x.device.type != "cpu":
            return False
        kernel = x.dtype == torch.float32 and kernel_available()
        return act.U >= (SPARSE_MIN_U if kernel else SPARSE_TORCH_MIN_U)

    def _transposed_weight(self) -> torch.Tensor:
        """``fc2.weight`` transposed and contiguous, cached until the weight changes."""
        weight = self.fc2.weight
        key = (weight.data_ptr(), weight._version, weight.device)
        if self._weight_key != key or self._weight_t is None:
            self._weight_t = weight.detach().t().contiguous()
            self._weight_key = key
        return self._weight_t


def sparsify_mlps(model: nn.Module) -> int:
    """Wrap every timm-style ``Mlp`` of ``model`` whose activation is an LWTA in a
    :class:`SparseLWTAMlp` (in place); returns how many. :func:`discover.create_model` and
    :func:`discover.to_cvn` do this already.

    Example:
        >>> from discover import create_model
        >>> sparsify_mlps(create_model("small_vit", U=8))  # doctest: +SKIP
        0
    """
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if name and not isinstance(module, SparseLWTAMlp) and _is_plain_mlp(module)
    ]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, SparseLWTAMlp(module))
    return len(targets)
