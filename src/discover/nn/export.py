"""Deployment: a CVN (or any model) exported to ONNX, with deterministic winners.

Under the ``"argmax"`` policy every LWTA block's winner is its largest pre-activation, which
an exported graph computes with plain operators (argmax, one-hot, multiply); the annealed CVNs
of this project lose a fraction of a point with it (``benchmarks/results/evidence.md``). A
sampled competition cannot be exported: ONNX has no seeded Gumbel draw that matches
PyTorch's, and an export that silently changed the policy would change the predictions.

:func:`export_onnx` writes the graph with a dynamic batch dimension and checks it with
ONNX Runtime on the example batch before returning.

Example:
    >>> model = discover.load_run("runs/cvn-u4").model  # doctest: +SKIP
    >>> export_onnx(model, "cvn-u4.onnx")  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from discover._utils import import_extra
from discover.errors import InputError
from discover.nn.hooks import training_mode
from discover.nn.lwta import eval_policy
from discover.nn.models import default_input_size

__all__ = ["EXPORT_ATOL", "export_onnx", "onnx_session", "run_onnx"]

EXPORT_FORMATS = ("onnx",)

EXPORT_ATOL = 1e-4
"""Largest difference allowed between ONNX Runtime's logits and PyTorch's on the check."""


def _input_size(model: nn.Module) -> tuple[int, ...]:
    config = getattr(model, "data_config", None)
    size = getattr(config, "input_size", None)
    return tuple(size) if size is not None else default_input_size(model)


def export_onnx(
    model: nn.Module,
    out: str | Path,
    *,
    example: torch.Tensor | None = None,
    policy: str = "argmax",
    opset: int = 18,
) -> Path:
    """Export ``model`` (in evaluation mode, LWTA winners by ``policy``) to the ONNX file
    ``out``, with a dynamic batch dimension, and check it with ONNX Runtime: the same top-1
    on ``example`` (default: 4 random images of the model's input size) and logits within
    :data:`EXPORT_ATOL`.

    Raises:
        InputError: ``policy="sample"`` (sampled winners cannot be exported), or an ONNX
            Runtime check that fails.
        MissingExtraError: ``onnx``, ``onnxscript`` or ``onnxruntime`` missing
            (``pip install 'discover[onnx]'``).

    Example:
        >>> export_onnx(discover.load_run("runs/cvn-u4").model, "cvn-u4.onnx")  # doctest: +SKIP
        PosixPath('cvn-u4.onnx')
    """
    if policy != "argmax":
        raise InputError(
            f"export: policy {policy!r}: sampled winners cannot be exported (an exported graph "
            "has no seeded draw that matches PyTorch's); export with policy='argmax'"
        )
    import_extra("onnx", "ONNX export")
    import_extra("onnxscript", "ONNX export")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if example is None:
        example = torch.rand(4, *_input_size(model), generator=torch.Generator().manual_seed(0))
    with (
        training_mode(model, False),
        eval_policy(model, "argmax"),
        torch.no_grad(),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")  # the exporter's own progress chatter
        expected = model(example)
        batch = torch.export.Dim("batch", min=1)
        torch.onnx.export(
            model, (example,), str(out), dynamo=True, opset_version=opset,
            input_names=["images"], output_names=["logits"],
            dynamic_shapes=({0: batch},), external_data=False, report=False, verbose=False,
        )  # fmt: skip
    got = run_onnx(out, example)
    worst = float((got - expected).abs().max())
    same = bool(torch.equal(got.argmax(1), expected.argmax(1)))
    if worst > EXPORT_ATOL or not same:
        raise InputError(
            f"export: ONNX Runtime disagrees with PyTorch on {out} (largest logit difference "
            f"{worst:.2e}, same top-1: {same}); the file is kept for inspection"
        )
    return out


def onnx_session(path: str | Path) -> Any:
    """An ONNX Runtime inference session of the file ``path`` (CPU)."""
    ort = import_extra("onnxruntime", "running an ONNX export")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_onnx(path_or_session: Any, images: torch.Tensor) -> torch.Tensor:
    """The exported model's logits for ``images`` (preprocessed as for the PyTorch model)."""
    session = (
        onnx_session(path_or_session)
        if isinstance(path_or_session, (str, Path))
        else path_or_session
    )
    name = session.get_inputs()[0].name
    (logits,) = session.run(None, {name: images.detach().float().cpu().numpy()})
    return torch.from_numpy(logits)
