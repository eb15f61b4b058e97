"""Temporary forward hooks and training modes, always undone.

* :func:`capture` registers one forward hook on each named module of a model for the duration
  of a ``with`` block (to keep outputs, or to replace them) and removes every one on exit,
  exceptions included; with ``mode`` it also runs the block in that training mode.
* :func:`training_mode` switches a model to training or evaluation mode for a block and puts
  every module's own mode back on exit.

Every temporary forward hook of discover goes through :func:`capture`. Hooks that belong to a
model's own behaviour (a :class:`~discover.nn.models.SharedActivation` owner's call-count
reset) are registered for good where the model is built.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from torch import nn

from discover.errors import InputError

__all__ = ["ForwardHook", "capture", "training_mode"]

ForwardHook = Callable[[str, nn.Module, tuple[Any, ...], Any], Any]
"""``hook(name, module, inputs, output)``: called after each forward of a captured module;
a return value other than ``None`` replaces the module's output."""


@contextlib.contextmanager
def training_mode(model: nn.Module, mode: bool = False) -> Iterator[nn.Module]:
    """Run the block with ``model.train(mode)``; every module's own mode is restored on exit,
    exceptions included (a submodule frozen in evaluation mode stays so).

    Example:
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
        >>> with training_mode(model, False):
        ...     model[1].training
        False
        >>> model[1].training
        True
    """
    saved = [(module, module.training) for module in model.modules()]
    try:
        model.train(mode)
        yield model
    finally:
        model.train(saved[0][1])  # the module's own train() first, then each module's mode
        for module, own_mode in saved:
            module.training = own_mode


def _named(
    model: nn.Module, modules: Mapping[str, nn.Module] | Sequence[str]
) -> dict[str, nn.Module]:
    """``{name: module}``: a mapping as given, dotted names looked up in ``model``."""
    if isinstance(modules, Mapping):
        return dict(modules)
    if isinstance(modules, str):
        modules = [modules]
    known = dict(model.named_modules(remove_duplicate=False))
    unknown = [name for name in modules if name not in known]
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name, [n for n in known if n], n=3, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise InputError(f"{type(model).__name__} has no module named {name!r}{hint}")
    return {name: known[name] for name in modules}


@contextlib.contextmanager
def capture(
    model: nn.Module,
    modules: Mapping[str, nn.Module] | Sequence[str],
    hook: ForwardHook,
    *,
    mode: bool | None = None,
) -> Iterator[dict[str, nn.Module]]:
    """Call ``hook(name, module, inputs, output)`` after every forward of the named modules
    for the duration of the block; the hooks are removed on exit, exceptions included.

    ``modules`` is ``{name: module}`` (the name is what ``hook`` is given), or dotted module
    names of ``model`` (an unknown one is an :class:`~discover.errors.InputError` naming the
    closest). A module listed under two names gets two hooks. As with PyTorch forward hooks,
    a value returned by ``hook`` other than ``None`` replaces the module's output. With
    ``mode`` (``False``: evaluation, ``True``: training) the block runs in that mode and every
    module's own mode is restored on exit (:func:`training_mode`); ``None`` leaves the modes
    alone. Yields the ``{name: module}`` mapping that is hooked.

    Example:
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> shapes = {}
        >>> with capture(model, ["0", "1"], lambda name, m, i, out: shapes.update({name: out.shape}),
        ...              mode=False):
        ...     _ = model(torch.zeros(5, 4))
        >>> shapes
        {'0': torch.Size([5, 3]), '1': torch.Size([5, 3])}
        >>> with capture(model, {"relu": model[1]}, lambda name, m, i, out: out * 0):
        ...     model(torch.ones(1, 4)).tolist() == model[2].bias[None].tolist()
        True
    """
    named = _named(model, modules)
    handles = []
    with training_mode(model, mode) if mode is not None else contextlib.nullcontext():
        try:
            for name, module in named.items():
                handles.append(module.register_forward_hook(functools.partial(hook, name)))
            yield named
        finally:
            for handle in handles:
                handle.remove()
