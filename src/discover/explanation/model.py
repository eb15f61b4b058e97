"""What :func:`~discover.explanation.explain` reads off the model: its classifier, its name
and the layers it explains by default."""

from __future__ import annotations

import contextlib

from torch import nn

from discover.dissection.result import Dissection
from discover.errors import InputError
from discover.nn.lwta import lwta_layers

__all__ = ["find_classifier"]


def find_classifier(model: nn.Module) -> tuple[str, nn.Linear] | None:
    """The final ``nn.Linear`` (dotted name, module), or ``None``.

    timm models name it through ``get_classifier()``; otherwise the last ``nn.Linear`` in
    module order is taken. :func:`~discover.explanation.explain` checks that its output is
    the model's output before it splits a logit into contributions.

    Example:
        >>> find_classifier(create_model("small_resnet"))[0]  # doctest: +SKIP
        'fc'
    """
    get = getattr(model, "get_classifier", None)
    if callable(get):
        with contextlib.suppress(Exception):
            head = get()
            if isinstance(head, nn.Linear):
                for name, module in model.named_modules():
                    if module is head:
                        return name, head
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def model_name(model: nn.Module) -> str:
    """The model's name as an explanation shows it (a CVN's ``U`` included)."""
    config = getattr(model, "cvn_config", None)
    if config is None:
        return type(model).__name__
    return f"{config.name} (U={config.U})" if config.U > 1 else config.name


def explained_layers(model: nn.Module, dissection: Dissection | None = None) -> list[str]:
    """Every LWTA layer; for a dense model the layers ``dissection`` labels (but its
    classifier), else the model's activation modules (the places LWTA would go)."""
    from discover.nn.models import activation_sites

    head = find_classifier(model)
    head_name = head[0] if head else None
    names = list(lwta_layers(model))
    if not names and dissection is not None:
        names = [n for n in dict.fromkeys(u.layer for u in dissection.units) if n != head_name]
    if not names:
        names = activation_sites(model)
    if not names:
        raise InputError(
            "explain: the model has no LWTA layers and no activation modules; pass layers="
        )
    return names
