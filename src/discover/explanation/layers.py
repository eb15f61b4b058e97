"""Which layers to explain, and so to dissect: the LWTA (or activation) layers and the layer
whose pooled output feeds the classifier."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from discover.dissection.result import Dissection
from discover.explanation.core import explain
from discover.explanation.model import explained_layers, find_classifier
from discover.nn.models import default_input_size

__all__ = ["default_layers", "classifier_input_layer"]

_NOT_FEATURES = (nn.Identity, nn.Dropout)


def default_layers(
    model: nn.Module, dissection: Dissection | None = None, *, classifier: bool = False
) -> list[str]:
    """The layers :func:`~discover.explanation.explain` explains by default, and so the
    layers to dissect.

    Every LWTA layer; for a dense model the layers ``dissection`` labels (but its
    classifier), else the model's activation modules (the places LWTA would go). With
    ``classifier=True`` the classifier (:func:`~discover.explanation.find_classifier`) is
    appended: the layers a dissection should cover so that explanations get labels for the
    winners and for the features of the logit contributions.

    Example:
        >>> default_layers(create_model("small_resnet", U=4), classifier=True)[-2:]  # doctest: +SKIP
        ['layer3.1.act2', 'fc']
    """
    names = explained_layers(model, dissection)
    if not classifier:
        return names
    head = find_classifier(model)
    head_name = head[0] if head else None
    feeding = classifier_input_layer(model, names)
    extra = [feeding] if feeding is not None and feeding not in names else []
    return names + extra + ([head_name] if head_name and head_name not in names else [])


def classifier_input_layer(model: nn.Module, layers: Sequence[str] = ()) -> str | None:
    """The layer whose output, pooled as a dissection pools it by default, is the
    classifier's input: the one among ``layers`` if there is one (a ResNet CVN's last LWTA
    layer, average-pooled), else the nearest module before the classifier that is (a ViT's
    final norm, at the class token; identities and dropouts are skipped), else ``None``.

    Labels of that layer are what an explanation's contribution table shows, so a
    dissection should cover it. Found by forward passes on one random image (one for
    ``layers``, then one per module tried, at most 8).

    Example:
        >>> vit = create_model("small_vit", U=4)  # doctest: +SKIP
        >>> classifier_input_layer(vit, default_layers(vit))  # doctest: +SKIP
        'norm'
    """
    head = find_classifier(model)
    if head is None:
        return None
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(0)  # a blank image would tie layers
    image = torch.rand((1, *default_input_size(model)), generator=generator)

    def feeds(names: list[str]) -> str | None:
        try:
            with torch.random.fork_rng(devices=[]):  # explain seeds torch's global generator
                [e] = explain(model, image, None, layers=names, top=1, device=device)
        except (ValueError, RuntimeError):  # e.g. a module that runs several times per pass
            return None
        found = e.contributions.layer if e.contributions is not None else None
        return found if found in names else None

    if layers and (found := feeds(list(layers))) is not None:
        return found
    leaves = [
        name
        for name, module in model.named_modules()
        if name
        and name != head[0]
        and not any(module.children())
        and not isinstance(module, _NOT_FEATURES)
    ]
    for name in reversed(leaves[-8:]):
        if feeds([name]) == name:
            return name
    return None
