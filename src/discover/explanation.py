"""Per-image explanations: the few units that fired, with their labels (method.md §8).

:func:`explain` runs one forward pass and reads, for every LWTA layer, the units that won
their competition (from the winner **mask**, never from an argmax over the signed outputs:
a winner can be negative, and then an argmax lands on a loser). Each winner is listed with
its activation, pooled the way the dissection pooled that layer, and with the dissection's
label. For the features that feed the classifier it also gives each active unit's
contribution ``activation x weight`` to the predicted logit, and the share of the logit
(minus the bias) that the listed units explain.

Aggregation, per layer and image (documented here because the reference code has none for
conv maps):

* a unit is a feature (vectors), a channel (conv maps) or a token feature pooled as the
  dissection pooled it (``cls`` by default for ViTs);
* LWTA layers: a unit is *active* if it won at least once in the pooled region (the CLS
  token; any position of a conv map under ``avg``/``max``); its ``activation`` is the pooled
  output, e.g. for ``avg`` the mean over positions (zero where it lost);
* dense layers: a unit is active if ``|pooled activation| > threshold`` (the reference lists
  ``|a| > 1e-4``, nearly every unit of a dense network: that contrast is the point);
* ``active_fraction`` is measured on the raw output before pooling: the fraction of
  (unit, position) entries that won (exactly ``1/U`` for LWTA), or that exceed the threshold;
* winners are sorted by ``|activation|``, contributions by ``|contribution|``, both
  descending, and ``top`` keeps the first ones (``active`` always counts all of them);
* **labels**: a unit's ``label`` is the dissection's label, or ``None`` when the dissection
  shows the unit unlabelled (``abstained`` gives why; ``candidates`` lists its best
  concepts either way);
* **image-conditioned labels** (``embedder=``): for every listed unit, the vision-language
  model scores the unit's candidates in *this* image; each score is standardised by that
  concept's mean and spread over the dissection's probe (``Dissection.concept_stats``; a
  dissection without them keeps the raw score), and ``seen`` lists the candidates by that
  score, ``conditioned_label`` the first. It says which of the unit's meanings this image
  shows, next to the unit's global label;
* the layer of a sparse autoencoder whose latents were dissected (``dissect(..., sae=)``) is
  explained through its latents (kind ``sae``): a latent is active if it is nonzero after
  pooling (:meth:`~discover.dissection.sae.SAE.image_latents`), ``active_fraction`` is the
  share of nonzero (latent, position) entries (``k / latents`` per position);
* **where it fired**: each listed winner of a layer with spatial extent, and each listed
  contribution (the classifier's features before pooling), carries its ``map`` on the image
  (the layer's resolution; :func:`~discover.dissection.recording.spatial_maps`) and
  ``where``, the 3 x 3 part of the image holding the centre of its above-half-peak region;
  a layer without spatial extent says so in ``maps``. ``class_evidence`` is a Grad-CAM map
  of the predicted class (ReLU'd): at the last conv map (captum's ``LayerGradCam``), or for
  a ViT/DeiT at the input of its last block on the patch grid; or a note saying why there
  is none.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from discover._utils import cache_root, printable, write_atomic
from discover.data.folders import ImageTooLargeError, open_image
from discover.dissection.core import Dissection, StaleDissectionError
from discover.dissection.embedders import build_embedder
from discover.dissection.labels import LABEL_DEFAULTS
from discover.dissection.recording import (
    pool,
    pool_mask,
    resolve_layers,
    spatial_maps,
    suggested_pooling,
)
from discover.dissection.sae import SAE, as_sae
from discover.errors import InputError, NonFiniteError
from discover.nn.lwta import LWTA, capture_winners, eval_policy, lwta_layers
from discover.nn.models import default_input_size

__all__ = [
    "DEFAULT_THRESHOLD",
    "DEFAULT_TOP",
    "DEFAULT_CANDIDATES",
    "WEAK",
    "Winner",
    "LayerExplanation",
    "UnitContribution",
    "Contributions",
    "Explanation",
    "RunExplanations",
    "default_layers",
    "explain",
    "explain_run",
    "find_classifier",
    "read_images",
    "print_explanations",
    "explanations_to_json",
]

DEFAULT_THRESHOLD = 1e-4
"""Dense layers: a unit is active when ``|activation| > DEFAULT_THRESHOLD`` (reference value)."""
DEFAULT_TOP = 10
"""How many winners per layer (and contributions) an explanation lists by default."""
DEFAULT_CANDIDATES = 5
"""Candidate labels per unit that image-conditioned explanations choose from."""
WEAK = "weak here"
"""Why a listed unit is unlabelled in one image: it fires there below ``min_percentile``."""


@dataclass
class Winner:
    """One active unit of one layer for one image."""

    unit: int
    block: int | None  # LWTA block (unit // U); None for dense layers
    activation: float  # pooled like the dissection pooled the layer
    label: str | None = None  # None: not dissected, or shown unlabelled (see abstained)
    score: float | None = None
    probe_percentile: float | None = None
    """Share of the dissection's probe images on which this unit's pooled activation is
    lower (from the dissection's ``Q``): 0.99 means this image drives it like the top 1 %."""
    abstained: str | None = None  # why the dissection shows the unit unlabelled
    candidates: list[str] = field(default_factory=list)  # its best concepts, best first
    seen: list[tuple[str, float]] | None = None
    """The candidates by how strongly the embedder sees them in this image (standardised
    score, highest first); ``None`` without ``explain(embedder=...)``."""
    map: list[list[float]] | None = None
    """Where it fired on this image: its activation map (``h x w``, the layer's own
    resolution; see :func:`~discover.dissection.recording.spatial_maps`); ``None`` for a
    layer without spatial extent."""

    @property
    def conditioned_label(self) -> str | None:
        """The candidate this image shows most (``None`` without conditioning)."""
        return self.seen[0][0] if self.seen else None

    @property
    def where(self) -> str | None:
        """The 3 x 3 part of the image where it fired most (``"top left"``, ...)."""
        return _where(self.map)


@dataclass
class LayerExplanation:
    """The active units of one layer for one image."""

    layer: str
    kind: str  # "lwta", "dense" or "sae" (the latents of a dissected SAE)
    units: int
    active: int
    active_fraction: float
    threshold: float | None
    winners: list[Winner] = field(default_factory=list)
    maps: str | None = None
    """What the winners' maps are (``"conv map 8x8"``, a patch grid), or why there are none."""


@dataclass
class UnitContribution:
    """``activation x weight``: one feature's part of the predicted class logit."""

    unit: int
    label: str | None  # None: not dissected, or shown unlabelled (see abstained)
    activation: float
    weight: float
    contribution: float
    abstained: str | None = None
    candidates: list[str] = field(default_factory=list)
    seen: list[tuple[str, float]] | None = None  # as Winner.seen
    probe_percentile: float | None = None  # as Winner.probe_percentile
    map: list[list[float]] | None = None  # as Winner.map: the feature before pooling

    @property
    def conditioned_label(self) -> str | None:
        """The candidate this image shows most (``None`` without conditioning)."""
        return self.seen[0][0] if self.seen else None

    @property
    def where(self) -> str | None:
        """As :attr:`Winner.where`."""
        return _where(self.map)


@dataclass
class Contributions:
    """The predicted logit split over the classifier's input features."""

    layer: str
    class_index: int
    class_label: str
    logit: float
    bias: float
    explained_share: float  # sum of the listed contributions / (logit - bias)
    units: list[UnitContribution] = field(default_factory=list)


@dataclass
class Explanation:
    """Why the model predicted what it did for one image, through the units that fired.

    ``to_dict()`` gives the JSON schema the report reads; ``str()`` a plain-text table; in a
    ``rich`` console it renders as tables.
    """

    image: str
    model: str
    prediction: dict[str, Any]  # {"index", "label", "probability"}
    target: dict[str, Any] | None
    policy: str | None
    layers: list[LayerExplanation]
    contributions: Contributions | None = None
    class_evidence: dict[str, Any] | None = None
    """Where the image holds evidence for the predicted class: ``{"method", "layer",
    "class", "map"}`` (Grad-CAM, ``h x w``) or ``{"note"}`` saying why there is none."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (see the module docstring for the meaning of the fields)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Explanation:
        """Inverse of :meth:`to_dict`."""
        layers = [
            LayerExplanation(**{**l, "winners": [_with_pairs(Winner, w) for w in l["winners"]]})
            for l in data["layers"]  # noqa: E741
        ]
        contributions = data.get("contributions")
        if contributions is not None:
            contributions = Contributions(
                **{
                    **contributions,
                    "units": [_with_pairs(UnitContribution, u) for u in contributions["units"]],
                }
            )
        return cls(**{**data, "layers": layers, "contributions": contributions})

    def layer(self, name: str) -> LayerExplanation:
        """The explanation of layer ``name``."""
        for row in self.layers:
            if row.layer == name:
                return row
        raise InputError(
            f"no layer {name!r} in this explanation; it has "
            f"{', '.join(r.layer for r in self.layers) or 'no layers'}"
        )

    def headline(self) -> str:
        p = self.prediction
        target = f"  (true: {self.target['label']})" if self.target else ""
        policy = f", LWTA policy {self.policy}" if self.policy else ""
        return (
            f"{self.image}: {self.model} predicts {p['label']!r} "
            f"({100 * p['probability']:.1f} %){target}{policy}"
        )

    def to_text(self) -> str:
        """A plain-text rendering: one block of rows per layer, then the contributions."""
        lines = [self.headline()]
        for row in self.layers:
            lines.append(_layer_title(row))
            for w in row.winners:
                block = "" if w.block is None else f"block {w.block:>4}  "
                score = "" if w.score is None else f"  ({w.score:.3g})"
                pct = "" if w.probe_percentile is None else f"  p{100 * w.probe_percentile:.0f}"
                where = f"  [{w.where}]" if w.where else ""
                lines.append(
                    f"    unit {w.unit:>5}  {block}{w.activation:>+10.4f}{pct}  "
                    f"{_shown(w.label, w.abstained, w.candidates)}{score}{where}"
                    f"{_seen_text(w.seen)}"
                )
        c = self.contributions
        if c is not None:
            lines.append(_contributions_title(c))
            for u in c.units:
                where = f"  [{u.where}]" if u.where else ""
                lines.append(
                    f"    unit {u.unit:>5}  {u.activation:>+9.4f} x {u.weight:>+8.4f} = "
                    f"{u.contribution:>+9.4f}  {_shown(u.label, u.abstained, u.candidates)}"
                    f"{where}{_seen_text(u.seen)}"
                )
        evidence = self.class_evidence
        if evidence is not None:
            lines.append(
                f"  evidence for {self.prediction['label']!r} ({evidence['method']} at "
                f"{evidence['layer']}): strongest at the {_where(evidence['map'])}"
                if "map" in evidence
                else f"  evidence for {self.prediction['label']!r}: {evidence['note']}"
            )
        return printable("\n".join(lines))  # labels and file names are untrusted

    __str__ = to_text

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.table import Table

        parts: list[Any] = [f"[bold]{_escape(self.headline())}[/bold]"]
        for row in self.layers:
            table = Table(title=_escape(_layer_title(row).strip()), title_justify="left")
            conditioned = any(w.seen for w in row.winners)
            columns = ["unit", "block", "activation", "probe pct", "label", "score"]
            for name in columns + (["in this image"] if conditioned else []):
                table.add_column(
                    name, justify="left" if "label" in name or "image" in name else "right"
                )
            for w in row.winners:
                table.add_row(
                    str(w.unit),
                    "-" if w.block is None else str(w.block),
                    f"{w.activation:+.4f}",
                    "-" if w.probe_percentile is None else f"{100 * w.probe_percentile:.0f}",
                    _escape(_shown(w.label, w.abstained, w.candidates)),
                    "-" if w.score is None else f"{w.score:.3g}",
                    *([_escape(_seen_text(w.seen).strip())] if conditioned else []),
                )
            parts.append(table)
        c = self.contributions
        if c is not None:
            table = Table(title=_escape(_contributions_title(c).strip()), title_justify="left")
            conditioned = any(u.seen for u in c.units)
            columns = ["unit", "activation", "weight", "contribution", "label"]
            for name in columns + (["in this image"] if conditioned else []):
                table.add_column(
                    name, justify="left" if "label" in name or "image" in name else "right"
                )
            for u in c.units:
                table.add_row(
                    str(u.unit),
                    f"{u.activation:+.4f}",
                    f"{u.weight:+.4f}",
                    f"{u.contribution:+.4f}",
                    _escape(_shown(u.label, u.abstained, u.candidates)),
                    *([_escape(_seen_text(u.seen).strip())] if conditioned else []),
                )
            parts.append(table)
        return Group(*parts)


_ROWS, _COLUMNS = ("top", "middle", "bottom"), ("left", "center", "right")


def _where(grid: list[list[float]] | None) -> str | None:
    """The 3 x 3 part of a map where it fires: the centre of mass of its values at or above
    half its peak, named like Shapes positions (``"top left"``, ..., ``"center"``)."""
    if not grid or not grid[0]:
        return None
    values = torch.tensor(grid, dtype=torch.float64)
    peak = float(values.max())
    if peak <= 0:
        return None
    weights = torch.where(values >= peak / 2, values, torch.zeros_like(values))
    h, w = values.shape
    ys = (torch.arange(h, dtype=torch.float64) + 0.5)[:, None]
    xs = (torch.arange(w, dtype=torch.float64) + 0.5)[None, :]
    total = float(weights.sum())
    cy, cx = float((weights * ys).sum()) / total, float((weights * xs).sum()) / total
    name = f"{_ROWS[min(int(3 * cy / h), 2)]} {_COLUMNS[min(int(3 * cx / w), 2)]}"
    return "center" if name == "middle center" else name


def _as_grid(values: torch.Tensor) -> list[list[float]]:
    return [[round(float(v), 4) for v in row] for row in values.tolist()]


def _last_spatial_layer(model: nn.Module, example: torch.Tensor) -> tuple[str, int] | None:
    """The last leaf module (in execution order) whose output has spatial extent (more than
    one position), with its rank (4: a conv map, 3: tokens); ``None`` when none has."""
    order: list[tuple[str, int]] = []
    handles = []
    for name, module in model.named_modules():
        if not name or list(module.children()):
            continue

        def hook(_m, _i, out, name=name):
            maps = spatial_maps(out, model) if isinstance(out, torch.Tensor) else None
            if maps is not None and maps.shape[-2:].numel() > 1:  # not a pooled 1 x 1 map
                order.append((name, out.dim()))

        handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            _forward(model, example)  # inputs the model cannot take: a clear error
    finally:
        for handle in handles:
            handle.remove()
    return order[-1] if order else None


def _class_evidence(
    model: nn.Module, batch: torch.Tensor, classes: list[int], layer: tuple[str, int] | None
) -> list[dict[str, Any]]:
    """Grad-CAM of each image's class: at the last conv map with captum's ``LayerGradCam``;
    for a token model at the input of its last block (``*.norm1``: after it, only the class
    token reaches the classifier), as Grad-CAM for ViTs is usually taken, computed here on
    the patch grid because captum's ``LayerGradCam`` averages over the wrong axis of tokens."""
    if layer is None:
        return [{"note": "no layer with spatial extent: no map"}] * len(batch)
    name, rank = layer
    named = dict(model.named_modules())
    if rank == 4:
        from captum.attr import LayerGradCam

        with torch.enable_grad():
            cams = LayerGradCam(model, named[name]).attribute(
                batch.clone().requires_grad_(True), target=classes, relu_attributions=True
            )
        cams = cams[:, 0]
        method = "Grad-CAM"
    else:
        blocks = [n for n in named if n.endswith(".norm1")]
        if not blocks:
            note = f"the last spatial layer ({name}) is a token layer of no known block layout"
            return [{"note": note}] * len(batch)
        name = blocks[-1]
        kept: dict[str, torch.Tensor] = {}
        handle = named[name].register_forward_hook(lambda m, i, o: kept.update(out=o))
        try:
            with torch.enable_grad():
                logits = model(batch.clone().requires_grad_(True))
                chosen = logits.gather(1, torch.tensor(classes, device=logits.device)[:, None])
                (grads,) = torch.autograd.grad(chosen.sum(), kept["out"])
        finally:
            handle.remove()
        acts, grads = spatial_maps(kept["out"].detach(), model), spatial_maps(grads, model)
        if acts is None or grads is None:
            return [{"note": f"{name}: its tokens do not form a patch grid"}] * len(batch)
        cams = (grads.mean(dim=(2, 3), keepdim=True) * acts).sum(dim=1).clamp_min(0)
        method = "Grad-CAM (patch tokens)"
    return [
        {"method": method, "layer": name, "class": cls, "map": _as_grid(cam.detach())}
        for cls, cam in zip(classes, cams, strict=True)
    ]


def _with_pairs(cls: type, data: dict[str, Any]) -> Any:
    """``cls(**data)`` with ``seen`` as (concept, score) tuples again (JSON gives lists)."""
    seen = data.get("seen")
    return cls(**{**data, "seen": None if seen is None else [tuple(p) for p in seen]})


def _shown(label: str | None, abstained: str | None, candidates: Sequence[str]) -> str:
    """How a listed unit's label reads: the label, or why it is unlabelled and its
    candidates."""
    if label is not None:
        return label
    if abstained is None:
        return "-"
    listed = ", ".join(candidates[:3])
    return f"(unlabelled: {abstained}{'; ' + listed if listed else ''})"


def _seen_text(seen: list[tuple[str, float]] | None) -> str:
    if not seen:
        return ""
    return "  sees " + ", ".join(f"{c} ({z:+.1f})" for c, z in seen[:3])


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(printable(text))


def _layer_title(row: LayerExplanation) -> str:
    if row.kind == "lwta":
        what = f"{row.active} of {row.units} units won"
    elif row.kind == "sae":
        what = f"{row.active} of {row.units} SAE latents active"
    else:
        what = f"{row.active} of {row.units} units above |a| > {row.threshold:g}"
    shown = f", top {len(row.winners)} by |activation|" if len(row.winners) < row.active else ""
    return (
        f"  {row.layer} [{row.kind}]: {what}{shown}; active fraction "
        f"{100 * row.active_fraction:.2f} %"
    )


def _contributions_title(c: Contributions) -> str:
    return (
        f"  contributions of {c.layer} to the logit of {c.class_label!r}: logit "
        f"{c.logit:+.4f} = bias {c.bias:+.4f} + units; the {len(c.units)} listed explain "
        f"{100 * c.explained_share:.1f} % of logit - bias"
    )


def print_explanations(explanations: Sequence[Explanation], file: Any = None) -> None:
    """Print explanations as tables (``rich``; plain text when rich is unavailable).

    Example:
        >>> print_explanations(explain(model, images, dissection))  # doctest: +SKIP
    """
    try:
        from rich.console import Console
    except ImportError:  # pragma: no cover - rich is a dependency; plain text otherwise
        for e in explanations:
            print(e.to_text() + "\n", file=file)
        return
    console = Console(file=file, highlight=False, soft_wrap=True)
    for e in explanations:
        console.print(e)
        console.print()


# -- inputs -----------------------------------------------------------------------------------
def read_images(
    paths: Sequence[str | os.PathLike[str]],
) -> tuple[list[Any], list[str], dict[str, str]]:
    """Open image files with PIL: ``(images, names, failures)``.

    A file that cannot be read is reported in ``failures`` (path -> reason) and left out;
    the other images are still returned.

    Example:
        >>> images, names, failures = read_images(["a.png", "broken.jpg"])  # doctest: +SKIP
        >>> failures  # doctest: +SKIP
        {'broken.jpg': 'cannot identify image file'}
    """
    from PIL import Image

    images, names, failures = [], [], {}
    for path in paths:
        name = os.fspath(path)
        try:
            with open_image(name) as image:
                image.load()
                images.append(_rgb_or_grey(image))
            names.append(name)
        except FileNotFoundError:
            failures[name] = "no such file"
        except IsADirectoryError:
            failures[name] = "is a directory"
        except ImageTooLargeError as exc:
            failures[name] = f"too large: {exc}"
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            failures[name] = str(exc).replace(f"{name!r}", "").strip() or type(exc).__name__
    return images, names, failures


def _rgb_or_grey(image: Any) -> Any:
    """A PIL image in mode ``RGB`` or ``L`` (alpha dropped, palettes and CMYK converted)."""
    if image.mode in ("RGB", "L"):
        return image.copy()
    return image.convert("L" if image.mode in ("LA", "La", "I", "I;16", "F") else "RGB")


def _eval_transform(model: nn.Module) -> Callable:
    from discover.data.transforms import eval_transform

    try:
        return eval_transform(model)
    except ValueError as exc:
        raise InputError(
            f"explain: raw images need a transform and {exc}; pass transform= or "
            "preprocessed float tensors"
        ) from None


def _forward(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """``model(batch)`` as float logits; inputs the model cannot take are a clear error."""
    expected = default_input_size(model)
    if batch.shape[1] != expected[0]:
        raise InputError(
            f"explain: the model takes {expected[0]}-channel inputs (input size "
            f"{tuple(expected)}), the images are {tuple(batch.shape[1:])}"
        )
    try:
        return model(batch).float()
    except (RuntimeError, AssertionError) as exc:  # e.g. a timm ViT given another image size
        raise InputError(
            f"explain: the model cannot run on inputs of shape {tuple(batch.shape[1:])} "
            f"(its input size is {tuple(expected)}): {exc}"
        ) from exc


def _as_batch(
    model: nn.Module,
    images: Any,
    names: Sequence[str] | None,
    transform: Callable | None,
) -> tuple[torch.Tensor, list[str], list[Any] | None]:
    """Model inputs ``(N, C, H, W)``, a name per image and the raw images (``None`` when
    given preprocessed float tensors)."""
    raw: list[Any] | None = None
    if isinstance(images, torch.Tensor) and images.is_floating_point():
        batch = images.unsqueeze(0) if images.dim() == 3 else images
        if batch.dim() != 4:
            raise InputError(
                f"explain: a float tensor of images must be (C, H, W) or (N, C, H, W) model "
                f"inputs, got shape {tuple(images.shape)}"
            )
        default = [f"image[{i}]" for i in range(len(batch))]
    else:
        if isinstance(images, torch.Tensor):  # uint8 raw images
            items = [images] if images.dim() == 3 else list(images)
        elif isinstance(images, (str, os.PathLike)) or not isinstance(images, Sequence):
            items = [images]
        else:
            items = list(images)
        if not items:
            raise InputError("explain: no images given")
        tf = transform or _eval_transform(model)
        loaded, default, raw = [], [], []
        for i, item in enumerate(items):
            if isinstance(item, (str, os.PathLike)):
                read, _, failures = read_images([item])
                if failures:
                    raise InputError(
                        f"cannot read image {os.fspath(item)}: {failures[os.fspath(item)]}"
                    )
                item, label = read[0], os.fspath(item)
            else:
                label = f"image[{i}]"
                if hasattr(item, "mode") and hasattr(item, "convert"):  # a PIL image
                    item = _rgb_or_grey(item)
            try:
                loaded.append(tf(item))
            except (TypeError, ValueError, RuntimeError) as exc:
                raise InputError(
                    f"explain: cannot preprocess {label} ({type(item).__name__}): {exc}"
                ) from None
            default.append(label)
            raw.append(item)
        batch = torch.stack(loaded)
    if names is None:
        names = default
    if len(names) != len(batch):
        raise InputError(f"explain: {len(names)} names for {len(batch)} images")
    return batch, list(names), raw


# -- the model's classifier -------------------------------------------------------------------
def find_classifier(model: nn.Module) -> tuple[str, nn.Linear] | None:
    """The final ``nn.Linear`` (dotted name, module), or ``None``.

    timm models name it through ``get_classifier()``; otherwise the last ``nn.Linear`` in
    module order is taken. :func:`explain` checks that its output is the model's output
    before it splits a logit into contributions.

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


# -- explain ------------------------------------------------------------------------------------
def _model_name(model: nn.Module) -> str:
    config = getattr(model, "cvn_config", None)
    if config is None:
        return type(model).__name__
    return f"{config.name} (U={config.U})" if config.U > 1 else config.name


def _dissection_index(dissection: Dissection | None) -> dict[str, dict[int, Any]]:
    index: dict[str, dict[int, Any]] = {}
    if dissection is not None:
        for u in dissection.units:
            index.setdefault(u.layer, {})[u.unit] = u
    return index


def _pooling(
    dissection: Dissection | None, name: str, output: torch.Tensor, model: nn.Module
) -> str:
    """The pooling the dissection used for ``name`` (or the suggested one)."""
    chosen = dissection.pooling(name) if dissection is not None else None
    return chosen or suggested_pooling(tuple(output.shape[1:]), model) or "none"


def default_layers(
    model: nn.Module, dissection: Dissection | None = None, *, classifier: bool = False
) -> list[str]:
    """The layers :func:`explain` explains by default, and so the layers to dissect.

    Every LWTA layer; for a dense model the layers ``dissection`` labels (but its
    classifier), else the model's activation modules (the places LWTA would go). With
    ``classifier=True`` the classifier (:func:`find_classifier`) is appended: the layers a
    dissection should cover so that explanations get labels for the winners and for the
    features of the logit contributions.

    Example:
        >>> default_layers(create_model("small_resnet", U=4), classifier=True)[-2:]  # doctest: +SKIP
        ['layer3.1.act2', 'fc']
    """
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
    if not classifier:
        return names
    feeding = classifier_input_layer(model, names)
    extra = [feeding] if feeding is not None and feeding not in names else []
    return names + extra + ([head_name] if head_name and head_name not in names else [])


_NOT_FEATURES = (nn.Identity, nn.Dropout)


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


@contextlib.contextmanager
def _capture(
    modules: dict[str, nn.Module], classifier: tuple[str, nn.Linear] | None
) -> Iterator[dict[str, list]]:
    """Forward hooks keeping every output of ``modules`` and the classifier's input/output."""
    store: dict[str, list] = {name: [] for name in modules}
    store["#classifier"] = []
    handles = []
    try:
        for name, module in modules.items():
            handles.append(
                module.register_forward_hook(
                    lambda _m, _i, out, name=name: (
                        store[name].append(out.detach()) if isinstance(out, torch.Tensor) else None
                    )
                )
            )
        if classifier is not None:
            handles.append(
                classifier[1].register_forward_hook(
                    lambda _m, inputs, out: store["#classifier"].append(
                        (inputs[0].detach(), out.detach())
                    )
                )
            )
        yield store
    finally:
        for handle in handles:
            handle.remove()


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
        dissection: a :class:`~discover.dissection.core.Dissection` of this model, or the folder
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
            layers or ``U``, see :meth:`~discover.dissection.core.Dissection.check_model`) with a
            warning instead of refusing it.
        sae: the SAE whose latents the dissection labels (default: the folder recorded in
            the dissection, ``meta["sae"]``); its layer is explained through its latents.
        embedder: condition the labels on each image (see the module docstring): an
            :class:`~discover.dissection.embedders.Embedder` or spec that scores the listed
            units' candidates in the images (raw images only), e.g. the dissection's own
            (``Dissection.about.embedder_spec``). An
            :class:`~discover.dissection.embedders.AnnotationEmbedder` with a table of the
            images' concepts gives the ground truth instead (an oracle).
        candidates: candidate labels per unit to condition on (its best concepts).
        min_percentile: a listed unit that fires on this image below this share of the
            dissection's probe images (``probe_percentile``) is shown unlabelled, reason
            ``"weak here"``: its label says what drives it *strongly*, and it is not driven
            here. ``"default"``: the value for the dissection's embedder kind
            (:data:`~discover.dissection.labels.LABEL_DEFAULTS`); ``None`` labels every
            listed unit the dissection labels.

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
    if top is not None and top < 0:
        raise InputError(f"explain: top must be >= 0 or None, got {top}")
    if not threshold >= 0:
        raise InputError(f"explain: threshold must be >= 0, got {threshold}")
    if isinstance(dissection, (str, os.PathLike)):
        dissection = Dissection.load(dissection)
    elif dissection is not None and not isinstance(dissection, Dissection):
        raise TypeError(
            "explain: dissection must be a Dissection, the folder one was saved to, or None; "
            f"got {type(dissection).__name__}"
        )
    if dissection is not None:
        dissection.check_model(model, allow_mismatch=allow_mismatch)
    sae = _dissected_sae(dissection, sae, allow_mismatch)
    if candidates < 1:
        raise InputError(f"explain: candidates must be >= 1, got {candidates}")
    if isinstance(min_percentile, str):
        if min_percentile != "default":
            raise InputError(
                f"explain: min_percentile must be a number, None or 'default', got {min_percentile!r}"
            )
        min_percentile = _default_min_percentile(dissection)
    if min_percentile is not None and not 0 <= min_percentile <= 1:
        raise InputError(f"explain: min_percentile must be in [0, 1] or None, got {min_percentile}")
    if embedder is not None and dissection is None:
        raise InputError("explain: embedder= conditions a dissection's labels; pass dissection=")
    batch, names, raw = _as_batch(model, images, names, transform)
    if embedder is not None and raw is None:
        raise InputError(
            "explain: embedder= needs the raw images (files, PIL images or uint8 tensors) to "
            "show them to the embedder, not preprocessed float tensors"
        )
    if targets is not None and len(targets) != len(batch):
        raise InputError(f"explain: {len(targets)} targets for {len(batch)} images")
    lwta = lwta_layers(model)
    classifier = find_classifier(model)
    layer_names = list(layers) if layers is not None else default_layers(model, dissection)
    # a dissected layer that is not explained may still be the classifier's input (a ViT's
    # final norm): recorded for the contribution table only
    named = dict(model.named_modules())
    feeding_only = [
        n
        for n in (dissection.layers if dissection is not None and layers is None else [])
        if n in named and n not in layer_names and (classifier is None or n != classifier[0])
    ]
    modules = resolve_layers(model, layer_names + feeding_only)
    index = _dissection_index(dissection)

    device = torch.device(device)
    was_training = model.training
    model.to(device).eval()
    if sae is not None:
        sae.to(device).eval()

    def policy_ctx() -> contextlib.AbstractContextManager:
        return eval_policy(model, policy) if lwta else contextlib.nullcontext()

    try:
        with policy_ctx():
            last_spatial = _last_spatial_layer(model, batch[:1].to(device))
        recorded = dict(modules)
        if last_spatial is not None:  # its maps show where the classifier's features fired
            recorded.setdefault(last_spatial[0], named[last_spatial[0]])
        torch.manual_seed(seed)
        with (
            policy_ctx(),
            capture_winners(model) as captured,
            _capture(recorded, classifier) as store,
        ):
            logits = _forward(model, batch.to(device))
            masks = {n: captured[n].last_mask.clone() for n in modules if n in captured}
        torch.manual_seed(seed)  # the same winners as the pass above
        with policy_ctx():
            evidence = _class_evidence(
                model, batch.to(device), [int(c) for c in logits.argmax(dim=1)], last_spatial
            )
    finally:
        model.train(was_training)
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
    class_names = (
        list(class_names) if class_names is not None else [f"class {i}" for i in range(num_classes)]
    )
    if targets is not None and any(not 0 <= int(t) < num_classes for t in targets):
        raise InputError(f"explain: targets must be class indices in [0, {num_classes})")
    probs = logits.softmax(dim=1)

    per_layer: dict[str, dict[str, torch.Tensor]] = {}
    for name in modules:
        outputs = store[name]
        if name in feeding_only and len(outputs) != 1:
            continue  # cannot be the classifier's input
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
        out = outputs[0].float()
        pooling = _pooling(dissection, name, out, model)
        latents = sae is not None and name == sae.layer
        pooled = sae.image_latents(out) if latents else pool(out, pooling, name)
        if name in index and len(index[name]) != pooled.shape[1]:
            raise InputError(
                f"explain: the dissection describes {len(index[name])} units of {name!r}, the "
                f"model's output has {pooled.shape[1]}: was it made for another model?"
            )
        if latents:
            active = pooled > 0
            raw_active = sae.latent_map(out) > 0 if sae.config.sites == "positions" else active
        elif name in masks:
            mask = masks[name]
            active = pool_mask(mask, pooling, name) > 0
            raw_active = mask
        else:
            active = pooled.abs() > threshold
            raw_active = out.abs() > threshold
        per_layer[name] = {
            "pooled": pooled,
            "active": active,
            "fraction": raw_active.reshape(len(batch), -1).float().mean(dim=1),
        }

    spatial: dict[str, torch.Tensor] = {}
    for name in recorded:
        if len(store[name]) == 1 and not (sae is not None and name == sae.layer):
            found = spatial_maps(store[name][0].float(), model)
            if found is not None:
                spatial[name] = found.cpu()
    head = _classifier_features(store, logits, classifier, per_layer, threshold)
    head_maps = None
    if head is not None:
        width = head["features"].shape[1]
        candidates_maps = [head["layer"]] + ([last_spatial[0]] if last_spatial else [])
        for name in candidates_maps:
            if name in spatial and spatial[name].shape[1] == width:
                head_maps = spatial[name]  # the classifier's features before pooling
                break
    for name, data in per_layer.items():  # each unit's share of the probe below it, at once
        probe_q = dissection.activations.get(name) if dissection is not None else None
        data["percentile"] = _percentiles(probe_q, data["pooled"])
    explanations = []
    for i in range(len(batch)):
        rows = []
        for name, module in modules.items():
            if name in feeding_only:
                continue
            data = per_layer[name]
            kind = "lwta" if name in masks else "dense"
            kind = "sae" if sae is not None and name == sae.layer else kind
            U = module.U if isinstance(module, LWTA) and module.U > 1 and kind != "sae" else None
            values, active = data["pooled"][i], data["active"][i]
            listed = _strongest(values, active, top)
            percentile = data["percentile"]
            winners = [
                _winner(
                    unit,
                    float(values[unit]),
                    U,
                    index.get(name),
                    None if percentile is None else float(percentile[i, unit]),
                    min_percentile,
                )
                for unit in listed
            ]
            if name in spatial:
                for w in winners:
                    w.map = _as_grid(spatial[name][i, w.unit])
                h, w_ = spatial[name].shape[-2:]
                maps_note = f"{'conv map' if store[name][0].dim() == 4 else 'patch grid'} {h}x{w_}"
            elif kind == "sae":
                maps_note = "no spatial maps: SAE latents"
            else:
                maps_note = "no spatial map: this layer has no spatial extent"
            rows.append(
                LayerExplanation(
                    layer=name,
                    kind=kind,
                    units=int(data["pooled"].shape[1]),
                    active=int(active.sum()),
                    active_fraction=float(data["fraction"][i]),
                    threshold=float(threshold) if kind == "dense" else None,
                    winners=winners,
                    maps=maps_note,
                )
            )
        predicted = int(logits[i].argmax())
        contributions = (
            None
            if head is None
            else _contributions(
                head,
                i,
                predicted,
                class_names,
                index,
                top,
                per_layer[head["layer"]]["percentile"] if head["layer"] in per_layer else None,
                min_percentile,
            )
        )
        if contributions is not None and head_maps is not None:
            for u in contributions.units:
                u.map = _as_grid(head_maps[i, u.unit])
        explanations.append(
            Explanation(
                image=names[i],
                model=_model_name(model),
                prediction={
                    "index": predicted,
                    "label": class_names[predicted],
                    "probability": float(probs[i, predicted]),
                },
                target=None
                if targets is None
                else {"index": int(targets[i]), "label": class_names[int(targets[i])]},
                policy=policy if lwta else None,
                layers=rows,
                contributions=contributions,
                class_evidence={**evidence[i], "class": class_names[predicted]}
                if "map" in evidence[i]
                else evidence[i],
            )
        )
    if embedder is not None:
        _condition(explanations, raw, dissection, embedder, candidates)
    return explanations


def _listed(explanation: Explanation) -> list[Any]:
    """Every listed winner and contribution of an explanation (the rows that show labels)."""
    rows: list[Any] = [w for layer in explanation.layers for w in layer.winners]
    if explanation.contributions is not None:
        rows += explanation.contributions.units
    return rows


def _condition(
    explanations: list[Explanation],
    raw: list[Any],
    dissection: Dissection,
    embedder: Any,
    candidates: int,
) -> None:
    """Fill ``seen`` of every listed row: its candidates scored in its image."""
    emb = build_embedder(embedder)
    wanted = list(
        dict.fromkeys(
            c for e in explanations for row in _listed(e) for c in row.candidates[:candidates]
        )
    )
    if not wanted:
        return
    scores = emb.concept_matrix(raw, wanted, progress=False).float()
    if tuple(scores.shape) != (len(raw), len(wanted)):
        raise InputError(
            f"explain: embedder {emb.name!r} returned scores of shape {tuple(scores.shape)} "
            f"for {len(raw)} images and {len(wanted)} candidate concepts"
        )
    stats = dissection.concept_stats
    if stats is not None and set(wanted) <= set(stats.names):
        scores = stats.standardise(wanted, scores)
    column = {c: j for j, c in enumerate(wanted)}
    table = scores.tolist()
    for i, explanation in enumerate(explanations):
        image = table[i]
        for row in _listed(explanation):
            if row.candidates:
                pairs = [(c, image[column[c]]) for c in row.candidates[:candidates]]
                row.seen = sorted(pairs, key=lambda pair: (-pair[1], pair[0]))


def _dissected_sae(
    dissection: Dissection | None, sae: SAE | str | os.PathLike | None, allow_mismatch: bool
) -> SAE | None:
    """The SAE whose latents ``dissection`` labels: ``sae``, else the recorded folder."""
    recorded = (dissection.about.sae or {}) if dissection is not None else {}
    if sae is None and not recorded:
        return None
    if sae is None:
        folder = recorded.get("folder")
        if not folder or not (Path(folder) / "sae.json").is_file():
            raise FileNotFoundError(
                f"explain: the dissection labels the latents of an SAE of layer "
                f"{recorded.get('layer')!r}, saved in {folder or 'no folder'}, which is not "
                "there any more; pass sae= (the SAE folder)"
            )
        sae = folder
    sae = as_sae(sae, "explain: sae")
    if recorded.get("sha256") and recorded["sha256"] != sae.fingerprint():
        message = (
            f"explain: the SAE of {sae.layer!r} ({sae.folder or 'given'}) is not the one the "
            "dissection labelled (other weights or settings); dissect it again with "
            "`discover sae dissect --sae DIR ...`"
        )
        if not allow_mismatch:
            raise StaleDissectionError(message)
        warnings.warn(message, UserWarning, stacklevel=3)
    return sae


def _default_min_percentile(dissection: Dissection | None) -> float | None:
    """The ``min_percentile`` default for a dissection's embedder kind (``None`` without one)."""
    kind = dissection.about.embedder_kind if dissection is not None else None
    return LABEL_DEFAULTS[kind].min_percentile if kind in LABEL_DEFAULTS else None


def _percentiles(probe_q: torch.Tensor | None, pooled: torch.Tensor) -> torch.Tensor | None:
    """``(B, K)``: for every image and unit, the share of the probe on which the unit is less
    active (``None`` without the dissection's probe activations, or for another width)."""
    if probe_q is None or not len(probe_q) or probe_q.shape[1] != pooled.shape[1]:
        return None
    ordered = probe_q.float().T.contiguous().sort(dim=1).values  # (K, N)
    below = torch.searchsorted(ordered, pooled.float().T.contiguous(), side="left")  # (K, B)
    return (below.T.double() / probe_q.shape[0]).float()


def _strongest(values: torch.Tensor, active: torch.Tensor, top: int | None) -> list[int]:
    """The active units by decreasing ``|value|`` (ties: lower unit first), the first ``top``."""
    units = active.nonzero().flatten()
    if top is not None and len(units) > top:
        magnitude = values[units].abs()
        kth = magnitude.topk(top).values[-1]
        units = units[magnitude >= kth]  # the top ones and any tie at the boundary
    order = sorted(units.tolist(), key=lambda u: (-abs(float(values[u])), u))
    return order if top is None else order[:top]


def _label(
    described: Any, percentile: float | None, min_percentile: float | None
) -> tuple[str | None, str | None, list[str]]:
    """``(label, why unlabelled, candidates)`` of a listed unit in this image: the
    dissection's verdict, and ``"weak here"`` when the unit fires on this image below
    ``min_percentile`` of the probe (its label describes what drives it strongly)."""
    if described is None:
        return None, None, []
    if described.abstained:
        return None, described.abstained, described.candidates
    if min_percentile is not None and percentile is not None and percentile < min_percentile:
        return None, WEAK, described.candidates
    return described.label, None, described.candidates


def _winner(
    unit: int,
    activation: float,
    U: int | None,
    labels: dict[int, Any] | None,
    percentile: float | None,
    min_percentile: float | None,
) -> Winner:
    described = labels.get(unit) if labels else None
    label, why, candidates = _label(described, percentile, min_percentile)
    return Winner(
        unit=unit,
        block=unit // U if U else None,
        activation=activation,
        label=label,
        score=float(described.score) if described is not None else None,
        probe_percentile=percentile,
        abstained=why,
        candidates=candidates,
    )


def _classifier_features(
    store: dict[str, list],
    logits: torch.Tensor,
    classifier: tuple[str, nn.Linear] | None,
    per_layer: dict[str, dict[str, torch.Tensor]],
    threshold: float,
) -> dict[str, Any] | None:
    """The classifier's input features, the layer they come from, and which are active.

    ``None`` when the model has no final ``nn.Linear`` whose output is the model's output.
    """
    calls = store["#classifier"]
    if classifier is None or len(calls) != 1:
        return None
    features, output = calls[0]
    if features.dim() != 2 or output.shape != logits.shape:
        return None
    if not torch.allclose(output.float(), logits, rtol=1e-4, atol=1e-5):
        return None
    features = features.float()
    source, active = f"{classifier[0]} input", features.abs() > threshold
    for name, data in per_layer.items():  # e.g. the last LWTA layer, average-pooled
        pooled = data["pooled"]
        if pooled.shape == features.shape and torch.allclose(
            pooled, features, rtol=1e-4, atol=1e-6
        ):
            source, active = name, data["active"]
            break
    linear = classifier[1]
    return {
        "layer": source,
        "features": features,
        "active": active,
        "weight": linear.weight.detach().float().cpu(),
        "bias": None if linear.bias is None else linear.bias.detach().float().cpu(),
        "logits": logits,
    }


def _contributions(
    head: dict[str, Any],
    i: int,
    cls: int,
    class_names: Sequence[str],
    index: dict[str, dict[int, Any]],
    top: int | None,
    percentile: torch.Tensor | None,
    min_percentile: float | None,
) -> Contributions:
    x = head["features"][i].cpu()
    w = head["weight"][cls]
    bias = float(head["bias"][cls]) if head["bias"] is not None else 0.0
    logit = float(head["logits"][i, cls])
    labels = index.get(head["layer"], {})
    listed = []
    for unit in _strongest(x * w, head["active"][i], top):
        pct = None if percentile is None else float(percentile[i, unit])
        label, why, candidates = _label(labels.get(unit), pct, min_percentile)
        listed.append(
            UnitContribution(
                unit=unit,
                label=label,
                activation=float(x[unit]),
                weight=float(w[unit]),
                contribution=float(x[unit] * w[unit]),
                abstained=why,
                candidates=candidates,
                probe_percentile=pct,
            )
        )
    explained = math.fsum(u.contribution for u in listed)
    denominator = logit - bias
    share = explained / denominator if abs(denominator) > 1e-12 else float(abs(explained) < 1e-12)
    return Contributions(
        layer=head["layer"],
        class_index=cls,
        class_label=class_names[cls],
        logit=logit,
        bias=bias,
        explained_share=share,
        units=listed,
    )


@dataclass
class RunExplanations:
    """What :func:`explain_run` returns."""

    explanations: list[Explanation]
    failures: dict[str, str]  # image file -> why it could not be read (left out)
    dissection: Path | None  # the folder of the dissection used


def explain_run(
    run: str | os.PathLike[str],
    images: Sequence[str | os.PathLike[str]],
    dissection: Dissection | str | os.PathLike[str] | None = None,
    *,
    weights: str = "best",
    allow_mismatch: bool = False,
    embedder: Any = None,
    **options: Any,
) -> RunExplanations:
    """Explain image files with a training run's model, labelled by the run's dissection.

    The run is read with :func:`~discover.training.runs.load_run`, its dissection from
    ``dissection`` or else from ``RUN/dissection``
    (:func:`~discover.dissection.core.default_dissection_dir`). Files that cannot be read are
    listed in ``failures`` and the others are explained (:func:`explain`) with the run's
    class names.

    Args:
        run: a training run folder (``discover train``).
        images: image files.
        dissection: a :class:`~discover.dissection.core.Dissection` of the run's model, or its
            folder (default ``RUN/dissection``).
        weights: ``best`` or ``last`` (see :func:`~discover.training.runs.load_run`).
        allow_mismatch: use a dissection made for other weights, layers or ``U`` (a warning
            instead of :class:`~discover.dissection.core.StaleDissectionError`).
        embedder: condition the labels on each image (:func:`explain`); ``"dissection"``
            rebuilds the vision-language model the dissection was made with.
        options: further keywords of :func:`explain` (``policy``, ``top``, ``threshold``,
            ``seed``, ``layers``, ``candidates``, ...).

    Raises:
        FileNotFoundError: the run has no dissection at the default place; the message gives
            the ``discover dissect`` command that makes one (layers: :func:`default_layers`).
        StaleDissectionError: the dissection does not describe the run's model.

    Example:
        >>> result = explain_run("runs/demo/cvn", ["star.png", "broken.jpg"])  # doctest: +SKIP
        >>> print_explanations(result.explanations); result.failures  # doctest: +SKIP
        {'broken.jpg': 'cannot identify image file'}
    """
    from discover.dissection.core import default_dissection_dir
    from discover.training.runs import load_run

    loaded = load_run(run, weights)
    if isinstance(dissection, Dissection):
        found = dissection
    else:
        folder = Path(dissection) if dissection is not None else default_dissection_dir(run)
        if dissection is None and not (folder / "dissection.json").is_file():
            layers = " ".join(default_layers(loaded.model, classifier=True))
            raise FileNotFoundError(
                f"run {run} has no dissection (looked for {folder / 'dissection.json'}); "
                f"create one with `discover dissect --run {run} --layers {layers} "
                f"--probe {loaded.dataset} --out {folder}` (choose --concepts and --embedder "
                "for your data, see `discover dissect --help`), or pass dissection='DIR'"
            )
        found = Dissection.load(folder)
    found.check_model(loaded.model, allow_mismatch=allow_mismatch, run=os.fspath(run))
    if isinstance(embedder, str) and embedder == "dissection":
        embedder = _dissection_embedder(found)
    pictures, names, failures = read_images(images)
    options.setdefault("class_names", loaded.class_names)
    explanations = (
        explain(
            loaded.model,
            pictures,
            found,
            names=names,
            allow_mismatch=allow_mismatch,
            embedder=embedder,
            **options,
        )
        if pictures
        else []
    )
    return RunExplanations(explanations, failures, found.folder)


def _dissection_embedder(dissection: Dissection) -> str:
    """The spec of the vision-language model a dissection was made with, for conditioning."""
    about = dissection.about
    if about.embedder_kind == "annotations":
        raise InputError(
            f"the dissection in {dissection.folder} was made with ground-truth annotations, "
            "which cannot look at new images; pass another embedder (e.g. open_clip:ARCH:WEIGHTS)"
        )
    spec = about.embedder_spec
    if not spec:
        raise InputError(
            f"the dissection in {dissection.folder} does not record how to rebuild its embedder "
            f"({about.embedder or 'unknown'}); pass the embedder spec instead"
        )
    # A dissection folder is untrusted data: the spec it records may not open a file of its
    # choosing outside the folder and discover's cache (pass such a spec yourself instead).
    kind, _, rest = str(spec).partition(":")
    named = rest if kind == "hf" else rest.partition(":")[2] if kind == "open_clip" else ""
    if named and (kind == "hf" or "/" in named or os.sep in named or Path(named).suffix):
        where = Path(named).expanduser().resolve()
        allowed = [Path(dissection.folder).resolve()] if dissection.folder else []
        allowed.append(cache_root().resolve())
        if not any(where.is_relative_to(root) for root in allowed):
            raise InputError(
                f"the dissection in {dissection.folder} records the embedder {printable(spec)!r}, "
                f"which would open {where}, outside the dissection folder and discover's cache; "
                "a dissection may not choose files to open: pass --embedder with that spec "
                "yourself if you trust it"
            )
    return spec


def explanations_to_json(explanations: Sequence[Explanation], path: str | Path) -> Path:
    """Write ``[e.to_dict(), ...]`` as JSON, atomically."""
    import json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, json.dumps([e.to_dict() for e in explanations], indent=2))
