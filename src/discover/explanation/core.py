""":func:`explain`: one forward pass, then the units that fired in each layer with their
labels, and the predicted logit split over the classifier's features."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from discover.dissection.layers import resolve_layers
from discover.dissection.result import Dissection
from discover.dissection.sae import SAE
from discover.dissection.spatial import spatial_maps
from discover.errors import InputError, NonFiniteError
from discover.explanation.checks import (
    as_dissection,
    check_per_image,
    check_top_and_threshold,
    checked_label_options,
    dissected_sae,
)
from discover.explanation.conditioning import condition
from discover.explanation.inputs import as_batch, forward_logits
from discover.explanation.maps import as_grid, class_evidence, last_spatial_layer
from discover.explanation.model import explained_layers, find_classifier, model_name
from discover.explanation.result import Explanation
from discover.explanation.rows import Contributions, LayerExplanation
from discover.explanation.selection import (
    ClassifierFeatures,
    LayerActivity,
    classifier_features,
    contributions,
    layer_activity,
    strongest,
    winner,
)
from discover.nn.hooks import capture, training_mode
from discover.nn.lwta import LWTA, capture_winners, eval_policy, lwta_layers

__all__ = ["DEFAULT_THRESHOLD", "DEFAULT_TOP", "DEFAULT_CANDIDATES", "explain"]

DEFAULT_THRESHOLD = 1e-4
"""Dense layers: a unit is active when ``|activation| > DEFAULT_THRESHOLD`` (reference value)."""
DEFAULT_TOP = 10
"""How many winners per layer (and contributions) an explanation lists by default."""
DEFAULT_CANDIDATES = 5
"""Candidate labels per unit that image-conditioned explanations choose from."""


@torch.no_grad()
def explain(
    model: nn.Module,
    images: Any,
    dissection: Dissection | str | os.PathLike | None = None,
    *,
    policy: str = "argmax",
    threshold: float = DEFAULT_THRESHOLD,
    top: int | None = DEFAULT_TOP,
    class_names: Sequence[str] | None = None,
    layers: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    targets: Sequence[int] | None = None,
    transform: Callable | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    allow_mismatch: bool = False,
    sae: SAE | str | os.PathLike | None = None,
    embedder: Any = None,
    candidates: int = DEFAULT_CANDIDATES,
    min_percentile: float | str | None = "default",
) -> list[Explanation]:
    """Explain each image's prediction through the units that fired (one forward pass).

    Args:
        model: a CVN (LWTA layers) or a dense model.
        images: preprocessed float inputs ``(N, C, H, W)``/``(C, H, W)``, or raw images (file
            paths, PIL images, ``uint8`` tensors) that go through ``transform`` (default: the
            model's evaluation transform, ``model.data_config``).
        dissection: a :class:`~discover.dissection.result.Dissection` of this model, or the folder
            it was saved to; its labels and poolings are used for the layers it covers.
        policy: LWTA evaluation policy (``argmax`` is reproducible; ``sample`` draws the
            winners, seeded with ``seed``).
        threshold: dense layers: a unit is active when ``|activation| > threshold``.
        top: winners (and contributions) listed per layer; ``None`` lists all.
        class_names: label of each class index (default: ``class <i>``).
        layers: layers to explain (default: every LWTA layer; for a dense model the layers
            the dissection covers, else its activation modules).
        names: a name per image (default: the file path or ``image[i]``).
        targets: true class index per image, if known.
        allow_mismatch: use a dissection that does not describe ``model`` (other weights,
            layers or ``U``, see :meth:`~discover.dissection.result.Dissection.check_model`) with a
            warning instead of refusing it.
        sae: the SAE whose latents the dissection labels (default: the folder recorded in
            the dissection, ``meta["sae"]``); its layer is explained through its latents.
        embedder: condition the labels on each image (raw images only; see
            :mod:`discover.explanation`): an :class:`~discover.dissection.embedders.Embedder`
            or spec, e.g. the dissection's own (``Dissection.about.embedder_spec``), or an
            :class:`~discover.dissection.embedders.AnnotationEmbedder` (ground truth: an oracle).
        candidates: candidate labels per unit to condition on (its best concepts).
        min_percentile: a listed unit that fires on this image below this share of the probe
            (``probe_percentile``) is shown unlabelled (``"weak here"``): its label says what
            drives it strongly. ``"default"``: the value for the dissection's embedder kind
            (:data:`~discover.dissection.labels.LABEL_DEFAULTS`); ``None``: no such limit.

    Returns:
        one :class:`Explanation` per image.

    Raises:
        StaleDissectionError: the dissection was made for other weights, layers or ``U``.

    Example:
        >>> model, config = discover.load_run("runs/shapes-u4")  # doctest: +SKIP
        >>> dissection = discover.Dissection.load("runs/shapes-u4/dissection")  # doctest: +SKIP
        >>> [e] = explain(model, ["star.png"], dissection, class_names=config["class_names"])  # doctest: +SKIP
        >>> print(e)  # doctest: +SKIP
    """
    check_top_and_threshold(top, threshold)
    dissection = as_dissection(dissection, model, allow_mismatch)
    sae = dissected_sae(dissection, sae, allow_mismatch)
    min_percentile = checked_label_options(candidates, min_percentile, embedder, dissection)
    batch, names, raw = as_batch(model, images, names, transform)
    check_per_image(len(batch), raw, embedder, targets)
    classifier = find_classifier(model)
    modules, feeding_only = _layers_to_record(model, dissection, layers, classifier)
    lwta_policy = policy if lwta_layers(model) else None
    captured = _forward_with_capture(
        model, batch, modules, classifier, policy=lwta_policy, seed=seed, device=device, sae=sae
    )
    class_names = _checked_outputs(captured.logits, names, class_names, targets)
    settings = _Settings(
        top, threshold, min_percentile, lwta_policy, model_name(model), class_names
    )
    readout = _read(model, captured, modules, feeding_only, classifier, dissection, sae, settings)
    explanations = [
        readout.explanation(i, name, None if targets is None else int(targets[i]))
        for i, name in enumerate(names)
    ]
    if embedder is not None:
        condition(explanations, raw, dissection, embedder, candidates)
    return explanations


# -- the layers to record --------------------------------------------------------------------
def _layers_to_record(
    model: nn.Module,
    dissection: Dissection | None,
    layers: Sequence[str] | None,
    classifier: tuple[str, nn.Linear] | None,
) -> tuple[dict[str, nn.Module], list[str]]:
    """The modules to record by name, and which of them are recorded only as possible inputs
    of the classifier: dissected layers that are not explained (a ViT's final norm)."""
    layer_names = list(layers) if layers is not None else explained_layers(model, dissection)
    named = dict(model.named_modules())
    dissected = dissection.layers if dissection is not None and layers is None else []
    feeding_only = [
        n
        for n in dissected
        if n in named and n not in layer_names and (classifier is None or n != classifier[0])
    ]
    return resolve_layers(model, layer_names + feeding_only), feeding_only


# -- the forward pass ------------------------------------------------------------------------
@dataclass
class _Captured:
    """What the forward pass recorded."""

    logits: torch.Tensor  # (N, classes), float
    outputs: dict[str, list[torch.Tensor]]  # every output of each recorded module
    classifier_calls: list[tuple[torch.Tensor, torch.Tensor]]  # its (input, output)
    masks: dict[str, torch.Tensor]  # LWTA winner masks of the explained layers
    last_spatial: tuple[str, int] | None  # see last_spatial_layer
    evidence: list[dict[str, Any]]  # Grad-CAM of each image's predicted class


@contextlib.contextmanager
def _capture(
    model: nn.Module, modules: dict[str, nn.Module], classifier: tuple[str, nn.Linear] | None
) -> Iterator[tuple[dict[str, list], list]]:
    """Forward hooks keeping every output of ``modules`` and the classifier's input/output."""
    outputs: dict[str, list] = {name: [] for name in modules}
    calls: list = []

    def keep(name: str, _m: nn.Module, _inputs: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            outputs[name].append(out.detach())

    def keep_call(_name: str, _m: nn.Module, inputs: Any, out: Any) -> None:
        calls.append((inputs[0].detach(), out.detach()))

    with (
        capture(model, modules, keep),
        capture(model, dict([classifier]) if classifier is not None else {}, keep_call),
    ):
        yield outputs, calls


def _forward_with_capture(
    model: nn.Module,
    batch: torch.Tensor,
    modules: dict[str, nn.Module],
    classifier: tuple[str, nn.Linear] | None,
    *,
    policy: str | None,
    seed: int,
    device: str | torch.device,
    sae: SAE | None,
) -> _Captured:
    """One forward pass in evaluation mode recording ``modules``, the LWTA winners, the
    classifier and the last spatial layer; then Grad-CAM of the predicted classes with the
    same winners. ``policy`` is the LWTA policy (``None``: a model without LWTA layers)."""
    device = torch.device(device)
    model.to(device)
    if sae is not None:
        sae.to(device).eval()

    def policy_ctx() -> contextlib.AbstractContextManager:
        return eval_policy(model, policy) if policy is not None else contextlib.nullcontext()

    with training_mode(model, False):
        with policy_ctx():
            last_spatial = last_spatial_layer(model, batch[:1].to(device))
        recorded = dict(modules)
        if last_spatial is not None:  # its maps show where the classifier's features fired
            recorded.setdefault(last_spatial[0], dict(model.named_modules())[last_spatial[0]])
        torch.manual_seed(seed)
        with (
            policy_ctx(),
            capture_winners(model) as captured,
            _capture(model, recorded, classifier) as (outputs, calls),
        ):
            logits = forward_logits(model, batch.to(device))
            masks = {n: captured[n].last_mask.clone() for n in modules if n in captured}
        torch.manual_seed(seed)  # the same winners as the pass above
        with policy_ctx():
            classes = [int(c) for c in logits.argmax(dim=1)]
            evidence = class_evidence(model, batch.to(device), classes, last_spatial)
    return _Captured(logits, outputs, calls, masks, last_spatial, evidence)


def _checked_outputs(
    logits: torch.Tensor,
    names: list[str],
    class_names: Sequence[str] | None,
    targets: Sequence[int] | None,
) -> list[str]:
    """Check the logits (and the class names and targets against them); the class names."""
    if logits.dim() != 2:
        raise InputError(
            f"explain: the model returned shape {tuple(logits.shape)}, expected (N, classes)"
        )
    broken = (~torch.isfinite(logits)).any(dim=1)
    if broken.any():
        which = [names[i] for i in broken.nonzero()[:, 0].tolist()]
        raise NonFiniteError(
            f"explain: the model's outputs are NaN or infinite for {len(which)} image(s) "
            f"({', '.join(map(str, which[:3]))}): its numbers are broken (check its weights "
            "and inputs), so no prediction or contribution would mean anything"
        )
    num_classes = logits.shape[1]
    if class_names is not None and len(class_names) != num_classes:
        raise InputError(
            f"explain: {len(class_names)} class names for a model with {num_classes} outputs"
        )
    if targets is not None and any(not 0 <= int(t) < num_classes for t in targets):
        raise InputError(f"explain: targets must be class indices in [0, {num_classes})")
    if class_names is None:
        return [f"class {i}" for i in range(num_classes)]
    return list(class_names)


# -- reading the pass ------------------------------------------------------------------------
@dataclass(frozen=True)
class _Settings:
    """What every explanation of the call shares: explain's options, the model's name and
    the class names."""

    top: int | None
    threshold: float
    min_percentile: float | None
    policy: str | None  # the LWTA policy; None for a model without LWTA layers
    model: str
    class_names: list[str]


@dataclass
class _Layer:
    """An explained layer: what its units did over the batch, and how its rows read."""

    name: str
    kind: str  # "lwta", "dense" or "sae"
    U: int | None  # LWTA competition size (blocks of winners); None otherwise
    described: dict[int, Any] | None  # the dissection's descriptions of its units
    activity: LayerActivity
    maps: torch.Tensor | None  # (N, K, h, w) on the cpu; None without spatial extent
    maps_note: str


def _read(
    model: nn.Module,
    captured: _Captured,
    modules: dict[str, nn.Module],
    feeding_only: list[str],
    classifier: tuple[str, nn.Linear] | None,
    dissection: Dissection | None,
    sae: SAE | None,
    settings: _Settings,
) -> _Readout:
    """What each layer's units did, the classifier's features, and their maps."""
    descriptions: dict[str, dict[int, Any]] = {}
    for u in dissection.units if dissection is not None else []:
        descriptions.setdefault(u.layer, {})[u.unit] = u
    activity: dict[str, LayerActivity] = {}
    for name in modules:
        outputs = captured.outputs[name]
        if name in feeding_only and len(outputs) != 1:
            continue  # cannot be the classifier's input
        activity[name] = layer_activity(
            name,
            _single_output(name, outputs),
            model,
            dissection=dissection,
            described=descriptions.get(name),
            sae=sae,
            mask=captured.masks.get(name),
            threshold=settings.threshold,
        )
    spatial = _spatial_maps(model, captured.outputs, sae)
    head = classifier_features(
        captured.classifier_calls, captured.logits, classifier, activity, settings.threshold
    )
    layers = [
        _explained_layer(name, module, captured, sae, descriptions.get(name), activity, spatial)
        for name, module in modules.items()
        if name not in feeding_only
    ]
    return _Readout(
        settings,
        captured.logits,
        captured.evidence,
        layers,
        head,
        head_labels=descriptions.get(head.layer, {}) if head is not None else {},
        head_percentile=activity[head.layer].percentile
        if head is not None and head.layer in activity
        else None,
        head_maps=_head_maps(head, spatial, captured.last_spatial) if head is not None else None,
    )


def _single_output(name: str, outputs: list[torch.Tensor]) -> torch.Tensor:
    """The one output of layer ``name`` in the pass (one that runs twice or never: an error)."""
    if not outputs:
        raise InputError(
            f"explain: layer {name!r} produced no tensor output in the forward pass "
            "(not used by this model's forward, or it returns a tuple?)"
        )
    if len(outputs) != 1:
        raise InputError(
            f"explain: layer {name!r} ran {len(outputs)} times in one forward pass; "
            "choose a layer that runs once (e.g. a SharedActivation's numbered children)"
        )
    return outputs[0]


def _spatial_maps(
    model: nn.Module, outputs: dict[str, list[torch.Tensor]], sae: SAE | None
) -> dict[str, torch.Tensor]:
    """The maps ``(N, K, h, w)`` of every recorded layer that ran once and has spatial extent
    (an SAE's layer is shown through its latents: no maps)."""
    spatial = {}
    for name, found in outputs.items():
        if len(found) == 1 and not (sae is not None and name == sae.layer):
            maps = spatial_maps(found[0].float(), model)
            if maps is not None:
                spatial[name] = maps.cpu()
    return spatial


def _head_maps(
    head: ClassifierFeatures, spatial: dict[str, torch.Tensor], last: tuple[str, int] | None
) -> torch.Tensor | None:
    """The classifier's features before pooling: the maps of their layer, else of the last
    spatial layer, when those have one map per feature."""
    width = head.features.shape[1]
    for name in [head.layer] + ([last[0]] if last else []):
        if name in spatial and spatial[name].shape[1] == width:
            return spatial[name]
    return None


def _explained_layer(
    name: str,
    module: nn.Module,
    captured: _Captured,
    sae: SAE | None,
    described: dict[int, Any] | None,
    activity: dict[str, LayerActivity],
    spatial: dict[str, torch.Tensor],
) -> _Layer:
    """Layer ``name``'s kind, LWTA blocks and maps, with what its units did."""
    kind = "lwta" if name in captured.masks else "dense"
    kind = "sae" if sae is not None and name == sae.layer else kind
    U = module.U if isinstance(module, LWTA) and module.U > 1 and kind != "sae" else None
    maps = spatial.get(name)
    if maps is not None:
        h, w = maps.shape[-2:]
        shape = "conv map" if captured.outputs[name][0].dim() == 4 else "patch grid"
        note = f"{shape} {h}x{w}"
    elif kind == "sae":
        note = "no spatial maps: SAE latents"
    else:
        note = "no spatial map: this layer has no spatial extent"
    return _Layer(name, kind, U, described, activity[name], maps, note)


# -- one explanation per image ---------------------------------------------------------------
@dataclass
class _Readout:
    """The pass read for the whole batch, split into one :class:`Explanation` per image."""

    settings: _Settings
    logits: torch.Tensor
    evidence: list[dict[str, Any]]
    layers: list[_Layer]
    head: ClassifierFeatures | None
    head_labels: dict[int, Any]  # the dissection's descriptions of the head's features
    head_percentile: torch.Tensor | None  # their probe percentiles (N, K)
    head_maps: torch.Tensor | None  # their maps before pooling (N, K, h, w)
    probs: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.probs = self.logits.softmax(dim=1)

    def explanation(self, i: int, image: str, target: int | None) -> Explanation:
        """Image ``i``'s explanation."""
        names = self.settings.class_names
        predicted = int(self.logits[i].argmax())
        evidence = self.evidence[i]
        return Explanation(
            image=image,
            model=self.settings.model,
            prediction={
                "index": predicted,
                "label": names[predicted],
                "probability": float(self.probs[i, predicted]),
            },
            target=None if target is None else {"index": target, "label": names[target]},
            policy=self.settings.policy,
            layers=[self._layer_row(layer, i) for layer in self.layers],
            contributions=self._contributions(i, predicted),
            class_evidence={**evidence, "class": names[predicted]}
            if "map" in evidence
            else evidence,
        )

    def _layer_row(self, layer: _Layer, i: int) -> LayerExplanation:
        """Image ``i``'s strongest winners of ``layer``, labelled, with their maps."""
        values, active = layer.activity.pooled[i], layer.activity.active[i]
        percentile = layer.activity.percentile
        winners = [
            winner(
                unit,
                float(values[unit]),
                layer.U,
                layer.described,
                None if percentile is None else float(percentile[i, unit]),
                self.settings.min_percentile,
            )
            for unit in strongest(values, active, self.settings.top)
        ]
        if layer.maps is not None:
            for w in winners:
                w.map = as_grid(layer.maps[i, w.unit])
        return LayerExplanation(
            layer=layer.name,
            kind=layer.kind,
            units=int(layer.activity.pooled.shape[1]),
            active=int(active.sum()),
            active_fraction=float(layer.activity.fraction[i]),
            threshold=float(self.settings.threshold) if layer.kind == "dense" else None,
            winners=winners,
            maps=layer.maps_note,
        )

    def _contributions(self, i: int, predicted: int) -> Contributions | None:
        """Image ``i``'s predicted logit split over the classifier's features, with maps."""
        if self.head is None:
            return None
        found = contributions(
            self.head,
            i,
            predicted,
            self.settings.class_names[predicted],
            self.head_labels,
            self.settings.top,
            self.head_percentile,
            self.settings.min_percentile,
        )
        if self.head_maps is not None:
            for u in found.units:
                u.map = as_grid(self.head_maps[i, u.unit])
        return found
