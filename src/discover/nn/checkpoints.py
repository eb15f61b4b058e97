"""Checkpoints: weights as safetensors with the build configuration in their metadata, read
back with a clear error for every mismatch and a refusal of NaN or infinite weights."""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from discover._utils import atomic_path
from discover.errors import InputError, NonFiniteError

__all__ = [
    "CheckpointMismatchError",
    "NonFiniteWeightsError",
    "count_parameters",
    "load_checkpoint",
    "save_checkpoint",
    "state_dict_sha256",
]


class CheckpointMismatchError(InputError):
    """A checkpoint's keys, shapes or recorded configuration do not fit the model."""


class NonFiniteWeightsError(NonFiniteError):
    """A checkpoint holds NaN or infinite weights: every result of the model would be too."""


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (each shared tensor counted once)."""
    return sum(p.numel() for p in model.parameters())


def state_dict_sha256(
    state: Mapping[str, torch.Tensor],
    *,
    header: str = "{name}:{dtype}:{shape}",
    prefix: bytes = b"",
) -> str:
    """SHA-256 of a state dict: ``prefix``, then for every tensor in order its ``header``
    (formatted with its ``name``, ``dtype`` and ``shape`` as a tuple) and its raw bytes
    (row-major, as stored on the CPU; nothing for an empty tensor).

    Bit-identical weights under the same names, dtypes and shapes give the same digest,
    whatever device or memory layout they were read from. The default header is the one of
    :func:`~discover.dissection.model_fingerprint`; ``module_sha256`` (embedder ids) uses
    ``"{name}|{dtype}|{shape}|"`` after the module's ``repr``. Both digests are saved (in
    dissections, caches and results), so each keeps its own byte format.

    Example:
        >>> w = torch.arange(6.0).reshape(3, 2)
        >>> state_dict_sha256({"w": w.t()}) == state_dict_sha256({"w": w.t().contiguous()})
        True
        >>> state_dict_sha256({"w": w}) == state_dict_sha256({"w": w.reshape(2, 3)})
        False
    """
    digest = hashlib.sha256(prefix)
    for name, tensor in state.items():
        t = tensor.detach().cpu().contiguous()
        digest.update(header.format(name=name, dtype=t.dtype, shape=tuple(t.shape)).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def save_checkpoint(
    model: nn.Module, path: str | Path, extra: dict[str, str] | None = None
) -> Path:
    """Save weights as safetensors, with ``model.cvn_config`` (and ``model.data_config``, the
    preprocessing a training run used, when set) in the file's metadata.

    Example:
        >>> save_checkpoint(model, "run/model.safetensors")  # doctest: +SKIP
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = dict(extra or {})
    for key in ("cvn_config", "data_config"):  # how it was built, and its preprocessing
        config = getattr(model, key, None)
        if config is not None:
            metadata[key] = json.dumps(config.to_dict())
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:  # no temporary file survives a failure (disk full)
        save_file(_untie(state), str(tmp), metadata=metadata)
    return path


def _untie(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share storage; give each key its own copy."""
    seen: set[int] = set()
    out = {}
    for k, v in state.items():
        ptr = v.untyped_storage().data_ptr() if v.numel() else -1
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


def _read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
            return load_file(str(path)), metadata
        except Exception as exc:  # noqa: BLE001  (SafetensorError, OSError: a damaged file)
            raise CheckpointMismatchError(
                f"could not read checkpoint {path}: {type(exc).__name__}: {exc}. The file is "
                "damaged or cut short; use another checkpoint (e.g. last instead of best) or "
                "retrain"
            ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointMismatchError(
            f"could not read checkpoint {path} as a PyTorch state dict: {exc}"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict):
        raise CheckpointMismatchError(f"checkpoint {path} does not hold a state dict")
    if all(k.startswith("module.") for k in obj):  # saved from DataParallel / DDP
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj, {}


def load_checkpoint(
    model: nn.Module, path: str | Path, strict: bool = True, *, allow_nonfinite: bool = False
) -> nn.Module:
    """Load local weights into ``model``; every mismatch is reported in one clear error.

    Checks keys, tensor shapes and, for discover's own safetensors files, the recorded
    architecture name and ``U``. Weights that are NaN or infinite raise
    :class:`NonFiniteWeightsError` naming them (``allow_nonfinite=True``: a warning, and the
    units they reach are marked "not finite" by a dissection).

    Example:
        >>> load_checkpoint(create_model("small_resnet", U=4), "run/model.safetensors")  # doctest: +SKIP
    """
    path = Path(path).expanduser()
    state, metadata = _read_state_dict(path)
    problems: list[str] = []
    config = getattr(model, "cvn_config", None)
    if "cvn_config" in metadata and config is not None:
        saved = json.loads(metadata["cvn_config"])
        for key in ("name", "U", "num_classes"):
            if key in saved and saved[key] != getattr(config, key):
                problems.append(
                    f"{key}: checkpoint has {saved[key]!r}, model has {getattr(config, key)!r}"
                )
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]

    def _few(items: list[str]) -> str:
        return ", ".join(items[:8]) + (f" ... (+{len(items) - 8} more)" if len(items) > 8 else "")

    if missing and strict:
        problems.append(f"{len(missing)} key(s) missing from the checkpoint: {_few(missing)}")
    if unexpected and strict:
        problems.append(
            f"{len(unexpected)} unexpected key(s) in the checkpoint: {_few(unexpected)}"
        )
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {_few(shapes)}")
    if problems:
        raise CheckpointMismatchError(
            f"checkpoint {path} does not fit the model"
            f"{' ' + repr(config.name) if config else ''}:\n  - " + "\n  - ".join(problems)
        )
    broken = [
        f"{k} ({int((~torch.isfinite(v)).sum())} of {v.numel()})"
        for k, v in state.items()
        if k in own and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    if broken:
        message = (
            f"checkpoint {path} holds non-finite weights (NaN or inf) in {len(broken)} "
            f"tensor(s): {_few(broken)}; every output of the model would be meaningless. Use "
            "another checkpoint (e.g. last instead of best) or retrain"
        )
        if not allow_nonfinite:
            raise NonFiniteWeightsError(message)
        warnings.warn(message + " (loaded anyway: allow_nonfinite=True)", stacklevel=2)
    model.load_state_dict(state, strict=strict)
    return model
