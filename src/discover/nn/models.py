"""Building Competitive Vision Networks (CVNs).

* :func:`to_cvn` turns any ``nn.Module`` into a CVN in place: activation modules chosen by
  module-name pattern are replaced by :class:`~discover.nn.lwta.LWTA` layers.
* :func:`create_model` builds a model by name (discover's own small networks, any timm
  architecture, or ``torchvision:<name>``), converts it where the paper puts LWTA and
  optionally loads local weights.

Both keep the parameter count: LWTA has no parameters.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from discover._utils import Registry, check_options
from discover.errors import InputError
from discover.nn.checkpoints import load_checkpoint
from discover.nn.hooks import capture
from discover.nn.lwta import LWTA, EvalPolicy, lwta_layers
from discover.nn.sparse import sparsify_mlps

__all__ = [
    "ACTIVATION_TYPES",
    "default_input_size",
    "register_activation",
    "register_model",
    "register_placement",
    "list_models",
    "create_model",
    "to_cvn",
    "ConversionReport",
    "ReplacedSite",
    "CVNConfig",
    "SharedActivation",
    "activation_sites",
]

# -- activation types ------------------------------------------------------------------------
ACTIVATION_TYPES: list[type[nn.Module]] = [
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.LeakyReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.Hardswish,
    nn.Softplus,
]
try:  # timm ships its own activation classes (e.g. what get_act_layer("gelu") returns)
    from timm.layers import activations as _timm_act

    ACTIVATION_TYPES += [
        getattr(_timm_act, n)
        for n in ("GELU", "GELUTanh", "QuickGELU", "Swish", "Mish", "HardSwish", "HardMish")
        if hasattr(_timm_act, n)
    ]
except ImportError:  # pragma: no cover - timm is a dependency
    pass


def register_activation(cls: type[nn.Module]) -> type[nn.Module]:
    """Let :func:`to_cvn` replace modules of type ``cls`` (usable as a class decorator).

    Only parameter-free activations belong here, or the parameter count would change.

    Example:
        >>> @register_activation
        ... class Squash(nn.Module):
        ...     def forward(self, x): return x / (1 + x.abs())
    """
    if cls not in ACTIVATION_TYPES:
        ACTIVATION_TYPES.append(cls)
    return cls


# -- conversion ------------------------------------------------------------------------------
@dataclass
class ReplacedSite:
    """One activation replaced by LWTA: its dotted name, what it was and how often it runs."""

    name: str
    original: str
    calls: int | None = None  # calls per forward pass when known
    width: int | None = None  # K or C when a dry run measured it


@dataclass
class ConversionReport:
    """What :func:`to_cvn` replaced."""

    U: int
    replaced: list[ReplacedSite] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # activations left alone by the patterns
    call_counting: str = "none"  # "dry-run", "fx" or "none"

    @property
    def names(self) -> list[str]:
        return [site.name for site in self.replaced]

    def __len__(self) -> int:
        return len(self.replaced)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        lines = [f"LWTA (U={self.U}) replaced {len(self.replaced)} activation site(s):"]
        for site in self.replaced:
            extra = f"  width={site.width}" if site.width is not None else ""
            lines.append(f"  {site.name:<40} {site.original}{extra}")
        if self.skipped:
            lines.append(f"left unchanged by include/exclude: {', '.join(self.skipped)}")
        return "\n".join(lines)


class SharedActivation(nn.ModuleList):
    """A single activation module that its owner calls at several sites, split per site.

    torchvision's ``BasicBlock`` calls one ``relu`` twice. After conversion its sites are
    separate LWTA layers addressable as ``layer1.0.relu.0`` and ``layer1.0.relu.1``; the
    n-th call within one forward of the owner goes to site n (the owner's forward pre-hook
    resets the counter).
    """

    def __init__(self, sites: Sequence[nn.Module]) -> None:
        super().__init__(sites)
        self._calls = 0

    def reset_calls(self, *_: Any) -> None:
        self._calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        site = self[self._calls % len(self)]
        self._calls += 1
        return site(x)


def _is_activation(module: nn.Module) -> bool:
    return isinstance(module, tuple(ACTIVATION_TYPES)) and not isinstance(module, LWTA)


def _matches(name: str, patterns: Sequence[str] | None) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns or ())


def activation_sites(
    model: nn.Module, include: Sequence[str] | None = None, exclude: Sequence[str] | None = None
) -> list[str]:
    """Dotted names of the activation modules ``to_cvn`` would replace.

    Patterns are shell-style globs on dotted module names (``"blocks.*.mlp.act"``,
    ``"layer4.*"``). ``include=None`` means every registered activation type.

    Example:
        >>> import torchvision
        >>> activation_sites(torchvision.models.resnet18(), include=["layer4.*"])
        ['layer4.0.relu', 'layer4.1.relu']
    """
    names = [n for n, m in model.named_modules(remove_duplicate=False) if n and _is_activation(m)]
    return [
        n for n in names if (include is None or _matches(n, include)) and not _matches(n, exclude)
    ]


def _unit_width(shape: torch.Size) -> int | None:
    if len(shape) == 4:
        return shape[1]
    return shape[-1] if len(shape) >= 1 else None


def _dry_run(model: nn.Module, names: list[str], example_input: torch.Tensor) -> dict[str, list]:
    """Run ``model`` once and record the output shape of every call of the named modules."""
    shapes: dict[str, list] = {n: [] for n in names}

    def hook(name: str, _m: nn.Module, _inputs: Any, out: Any) -> None:
        shapes[name].append(tuple(out.shape) if isinstance(out, torch.Tensor) else None)

    with capture(model, names, hook, mode=False), torch.no_grad():
        model(example_input)
    return shapes


def _fx_call_counts(model: nn.Module) -> Counter | None:
    """Calls per module name from a torch.fx trace (no input needed); ``None`` if untraceable."""
    import torch.fx

    class _Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return _is_activation(m) or isinstance(m, LWTA) or super().is_leaf_module(m, qualname)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = _Tracer().trace(model)
    except Exception:  # noqa: BLE001 - any tracing failure just means "unknown"
        return None
    return Counter(node.target for node in graph.nodes if node.op == "call_module")


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def to_cvn(
    model: nn.Module,
    U: int,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    *,
    tau: float = 1.67,
    temperature: float = 1.0,
    eval_policy: EvalPolicy = "sample",
    example_input: torch.Tensor | None = None,
) -> ConversionReport:
    """Turn ``model`` into a Competitive Vision Network in place.

    Every activation module (ReLU, GELU, SiLU, ... see :data:`ACTIVATION_TYPES`) whose dotted
    name matches ``include`` (default: all) and not ``exclude`` is replaced by an
    :class:`LWTA` with ``U`` competitors per block. An activation module that its owner calls
    at several sites (torchvision's ResNet blocks) is split into one LWTA per site.

    ``tau`` is the Gumbel-softmax relaxation temperature, ``temperature`` the competition
    temperature ``T`` (winners ~ ``softmax(h_b / T)``; see :class:`LWTA`).

    A timm ``Mlp`` whose activation became an LWTA is wrapped in a
    :class:`~discover.nn.sparse.SparseLWTAMlp` (same submodules and state dict): under the
    ``"argmax"`` policy, in inference, its second product reads only the winners' weights.

    With ``example_input`` a dry run counts the call sites and checks that ``U`` divides every
    layer's width *before* anything is changed; without it, call sites come from a torch.fx
    trace when the model is traceable and widths are checked at the first forward.

    Returns:
        A :class:`ConversionReport` listing what was replaced.

    Raises:
        ValueError: ``U < 1``, nothing matched, or ``U`` does not divide a layer's width.

    Example:
        >>> import torchvision
        >>> net = torchvision.models.resnet18()
        >>> report = to_cvn(net, U=4, example_input=torch.randn(1, 3, 64, 64))
        >>> report.names[:3]
        ['relu', 'layer1.0.relu.0', 'layer1.0.relu.1']
    """
    if isinstance(U, bool) or not isinstance(U, int) or U < 1:
        raise InputError(f"to_cvn: U must be an integer >= 1, got {U!r}")
    names, skipped = _select_sites(model, include, exclude)
    report = ConversionReport(U=U, skipped=skipped)
    shapes: dict[str, list] = {}
    if example_input is not None:
        shapes = _dry_run(model, names, example_input)
        _check_widths(shapes, U)
        calls = {n: len(s) for n, s in shapes.items()}
        report.call_counting = "dry-run"
    else:
        counts = _fx_call_counts(model)
        report.call_counting = "fx" if counts is not None else "none"
        calls = {n: counts.get(n, 0) for n in names} if counts is not None else {}
    options = dict(tau=tau, temperature=temperature, eval_policy=eval_policy)
    report.replaced = _replace_sites(model, names, calls, shapes, U, options)
    sparsify_mlps(model)  # winners-only second products under "argmax", where measured faster
    return report


def _select_sites(
    model: nn.Module, include: Sequence[str] | None, exclude: Sequence[str] | None
) -> tuple[list[str], list[str]]:
    """The activation sites to replace and those the patterns leave alone; none is an error."""
    all_sites = activation_sites(model)
    names = activation_sites(model, include, exclude)
    if not names:
        existing = len(lwta_layers(model))
        hint = (
            f" The model already has {existing} LWTA layer(s)."
            if existing
            else f" Activation modules in this model: {', '.join(all_sites[:12]) or 'none'}"
            f"{' ...' if len(all_sites) > 12 else ''}."
        )
        raise InputError(
            f"to_cvn: no activation module matched include={list(include or ['*'])} "
            f"exclude={list(exclude or [])}.{hint}"
        )
    return names, [n for n in all_sites if n not in names]


def _check_widths(shapes: dict[str, list], U: int) -> None:
    """Raise when ``U`` does not divide the width of a call measured by the dry run."""
    for n, call_shapes in shapes.items():
        for shape in call_shapes:
            if shape is None:
                continue
            width = _unit_width(shape)
            if width is not None and width % U:
                raise InputError(
                    f"to_cvn: layer {n!r} has {'C' if len(shape) == 4 else 'K'}={width} "
                    f"units (output shape {shape}), which U={U} does not divide. Choose a "
                    f"U that divides {width}, or exclude the layer with exclude=[{n!r}]."
                )


def _replace_sites(
    model: nn.Module,
    names: list[str],
    calls: dict[str, int],
    shapes: dict[str, list],
    U: int,
    options: dict[str, Any],
) -> list[ReplacedSite]:
    """Put an LWTA (``options``: its keyword arguments) in place of each named activation;
    one called at several sites of its owner becomes a :class:`SharedActivation`."""
    modules = dict(model.named_modules(remove_duplicate=False))
    owners = {id(m): 0 for m in modules.values()}
    for n in names:
        owners[id(modules[n])] += 1
    replaced: list[ReplacedSite] = []
    for n in names:
        original = modules[n]
        n_calls = calls.get(n)
        width = next((_unit_width(s) for s in shapes.get(n, []) if s is not None), None)
        act = original if U == 1 else None
        shared_by_names = owners[id(original)] > 1
        if n_calls and n_calls > 1 and not shared_by_names:
            _split_shared(model, n, n_calls, U, act, options)
            replaced += [
                ReplacedSite(f"{n}.{i}", type(original).__name__, 1, width) for i in range(n_calls)
            ]
        else:
            _set_submodule(model, n, LWTA(U, activation=act, name=n, **options))
            replaced.append(ReplacedSite(n, type(original).__name__, n_calls, width))
    return replaced


def _split_shared(
    model: nn.Module,
    name: str,
    n_calls: int,
    U: int,
    activation: nn.Module | None,
    options: dict[str, Any],
) -> None:
    """Replace the activation ``name``, called ``n_calls`` times per forward of its owner,
    by one LWTA per call site; the owner's forward pre-hook restarts the count."""
    sites = [LWTA(U, activation=activation, name=f"{name}.{i}", **options) for i in range(n_calls)]
    shared = SharedActivation(sites)
    _set_submodule(model, name, shared)
    owner_name = name.rpartition(".")[0]
    owner = model.get_submodule(owner_name) if owner_name else model
    owner.register_forward_pre_hook(shared.reset_calls)


# -- model registry --------------------------------------------------------------------------
MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
PLACEMENTS: Registry[tuple[list[str] | None, list[str] | None]] = Registry("LWTA placement")
"""Where LWTA goes by model class name: ``(include, exclude)`` patterns (:func:`register_placement`)."""


def register_model(name: str | None = None) -> Callable:
    """Register a model builder under ``name`` (default: the function's name).

    The builder takes ``num_classes`` and keyword arguments and returns a *dense* model;
    :func:`create_model` converts it. Registering a name twice raises.

    Example:
        >>> @register_model("tiny_mlp")
        ... def tiny_mlp(num_classes=10, **kw):
        ...     return nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(),
        ...                          nn.Linear(64, num_classes))
    """

    return MODELS.register(name)


def register_placement(
    class_name: str,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    *,
    overwrite: bool = False,
) -> None:
    """Declare where LWTA goes in models of class ``class_name`` (used by :func:`create_model`).

    Declaring a class twice raises unless ``overwrite`` is true.

    Example:
        >>> register_placement("ConvNeXt", include=["stages.*.mlp.act"])
    """
    placement = (list(include) if include else None, list(exclude) if exclude else None)
    PLACEMENTS.register(class_name, placement, overwrite=overwrite)


# The paper's placements (docs/method.md §3): ViT/DeiT MLP activation only; ResNets every ReLU
# (the default: every activation module), including the one after the residual addition.
register_placement("VisionTransformer", include=["*mlp.act", "*.mlp.1"])


def list_models(pattern: str = "*", include_timm: bool = True) -> list[str]:
    """Model names :func:`create_model` accepts: discover's own, then timm's (glob filter).

    Example:
        >>> list_models("small_*")
        ['small_resnet', 'small_vit']
    """
    names = MODELS.list(pattern)
    if include_timm:
        import timm

        names += [n for n in timm.list_models(pattern) if n not in MODELS]
    return names


@dataclass
class CVNConfig:
    """How a model was built; saved with checkpoints and results."""

    name: str
    U: int = 1
    num_classes: int | None = None
    tau: float = 1.67
    eval_policy: str = "sample"
    temperature: float = 1.0
    include: list[str] | None = None
    exclude: list[str] | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    input_size: tuple[int, int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CVNConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        if data.get("input_size") is not None:
            data["input_size"] = tuple(data["input_size"])
        return cls(**data)


def _build_dense(name: str, num_classes: int | None, kwargs: dict[str, Any]) -> nn.Module:
    extra = {} if num_classes is None else {"num_classes": num_classes}
    if name in MODELS:
        return _call_builder(f"model {name!r}", MODELS[name], {**extra, **kwargs})
    if name.startswith("torchvision:"):
        import torchvision

        tv_name = name.split(":", 1)[1]
        available = torchvision.models.list_models()
        if tv_name not in available:
            close = difflib.get_close_matches(tv_name, available, n=5, cutoff=0.5)
            raise InputError(
                f"unknown torchvision model {tv_name!r}. Closest names: "
                f"{', '.join('torchvision:' + c for c in close) or 'none'}"
            )
        return _call_builder(
            f"model {name!r}",
            torchvision.models.get_model,
            {"name": tv_name, "weights": None, **extra, **kwargs},
        )
    import timm

    if timm.is_model(name):
        return _call_builder(
            f"model {name!r}",
            timm.create_model,
            {"model_name": name, "pretrained": False, **extra, **kwargs},
        )
    candidates = list(MODELS) + timm.list_models()
    close = difflib.get_close_matches(name, candidates, n=6, cutoff=0.55)
    raise InputError(
        f"unknown model name {name!r}. Closest names: {', '.join(close) or 'none'}. "
        "See `discover models` (or discover.list_models()); torchvision models take the "
        "prefix 'torchvision:'."
    )


def _call_builder(
    what: str, builder: Callable[..., nn.Module], kwargs: dict[str, Any]
) -> nn.Module:
    """``builder(**kwargs)``; arguments it rejects are a ValueError naming them."""
    check_options(builder, kwargs, what)
    try:
        return builder(**kwargs)
    except (TypeError, ValueError, AssertionError) as error:
        shown = {k: v for k, v in kwargs.items() if k not in ("name", "model_name", "weights")}
        raise InputError(
            f"{what} rejected its arguments {shown}: {type(error).__name__}: {error}"
        ) from None


def _input_size(model: nn.Module, kwargs: dict[str, Any]) -> tuple[int, int, int]:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = tuple(cfg.get("input_size", (3, 224, 224)))
    in_chans = kwargs.get("in_chans", size[0])
    img = kwargs.get("img_size")
    patch_embed = getattr(model, "patch_embed", None)
    if img is None and patch_embed is not None and getattr(patch_embed, "img_size", None):
        img = patch_embed.img_size
    if img is not None:
        h, w = (img, img) if isinstance(img, int) else tuple(img)
        return (in_chans, h, w)
    return (in_chans, size[1], size[2])


def create_model(
    name: str,
    U: int = 1,
    num_classes: int | None = None,
    checkpoint: str | Path | None = None,
    *,
    tau: float = 1.67,
    temperature: float = 1.0,
    eval_policy: EvalPolicy = "sample",
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a model by name and make it a CVN with ``U`` competitors per LWTA block.

    ``name`` is one of discover's networks (``small_resnet``, ``small_vit``), any timm
    architecture (random init; nothing is downloaded) or ``torchvision:<name>``. LWTA goes
    where the paper puts it: every activation of a ResNet (including the one after the
    residual add), the MLP activation of a ViT/DeiT; ``include``/``exclude`` override that.
    ``U=1`` gives the standard network. ``temperature`` is the LWTA competition temperature
    (1 = the reference method; see :class:`LWTA`). ``checkpoint`` loads weights from a local
    ``.safetensors``/``.pt``/``.pth`` file. The build settings are kept as
    ``model.cvn_config`` (a :class:`CVNConfig`).

    Example:
        >>> model = create_model("deit_tiny_patch16_224", U=8, num_classes=10)
        >>> len(lwta_layers(model))
        12
    """
    if isinstance(U, bool) or not isinstance(U, int) or U < 1:
        raise InputError(f"create_model: U must be an integer >= 1, got {U!r}")
    model = _build_dense(name, num_classes, dict(kwargs))
    cls = type(model).__name__
    placement_inc, placement_exc = PLACEMENTS[cls] if cls in PLACEMENTS else (None, None)
    include = list(include) if include is not None else placement_inc
    exclude = list(exclude) if exclude is not None else placement_exc
    input_size = _input_size(model, kwargs)
    if U > 1:
        to_cvn(
            model,
            U,
            include,
            exclude,
            tau=tau,
            temperature=temperature,
            eval_policy=eval_policy,
            example_input=torch.zeros(1, *input_size),
        )
    if num_classes is None:
        num_classes = getattr(model, "num_classes", None)
    model.cvn_config = CVNConfig(
        name=name,
        U=U,
        num_classes=num_classes,
        tau=tau,
        eval_policy=eval_policy,
        temperature=temperature,
        include=include,
        exclude=exclude,
        model_kwargs=dict(kwargs),
        input_size=input_size,
    )
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model


def default_input_size(model: nn.Module) -> tuple[int, int, int]:
    """The ``(C, H, W)`` input a model expects (its build config, else its timm config).

    Example:
        >>> default_input_size(create_model("small_resnet", img_size=32))
        (3, 32, 32)
    """
    config = getattr(model, "cvn_config", None)
    if config is not None and config.input_size:
        return tuple(config.input_size)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("input_size", (3, 224, 224)))
