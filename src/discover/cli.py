"""The ``discover`` command line: a thin layer over the Python API.

Every subcommand is a pair of functions registered with :func:`command`: one adds its
arguments, the other parses them, calls the public API and prints the result. The API holds
every default: an option the user does not give is ``None`` and is not passed, so the API's
default applies, and help texts read those defaults from the API's signatures
(:func:`_default`). User mistakes (unknown names, bad shapes, missing files) end in a
one-line ``error:`` message and exit status 2, with the API parameters it names shown as the
command's flags (:data:`_FLAGS`); set ``DISCOVER_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import re
import sys
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from discover._utils import check_writable, printable
from discover.data.registry import build_probe
from discover.demo import DEMO_DATA, DemoConfig, run_demo
from discover.dissection.core import Dissection, default_dissection_dir, dissect
from discover.dissection.labels import LABEL_DEFAULTS
from discover.dissection.recording import list_layers
from discover.dissection.sae import PROBE_SPLIT, SAE, SITES, default_sae_dir, train_sae
from discover.dissection.shards import dissect_distributed, dissect_shard, merge_shards
from discover.dissection.similarity import (
    SIMILARITIES,
    nest_similarity_params,
)
from discover.errors import DiscoverError, InputError
from discover.evaluation.classification import EVAL_FILE, evaluate_run
from discover.evaluation.descriptions import evaluate_descriptions
from discover.evaluation.groundtruth import REPORT_CSV, REPORT_JSON, evaluate_groundtruth
from discover.evaluation.localization import (
    LOCALIZATION_CSV,
    LOCALIZATION_JSON,
    evaluate_localization,
    iou_labelled,
)
from discover.evaluation.planted import VARIANTS, PlantedConfig, planted_recovery_on_probe
from discover.evaluation.sparsity import photo_sparsity
from discover.explanation import explain, explain_run, print_explanations
from discover.nn.checkpoints import count_parameters, save_checkpoint
from discover.nn.lwta import EVAL_POLICIES, lwta_layers
from discover.nn.models import create_model, list_models
from discover.training.clip import ShapesCLIPConfig, train_shapes_clip
from discover.training.export import export_run
from discover.training.recipes import RECIPES
from discover.training.runs import load_run
from discover.training.trainer import NonFiniteLossError, TrainConfig, train
from discover.version import __version__

__all__ = ["main", "command"]

# API parameter -> flag, where the flag is not ``--`` + the parameter with dashes. An error
# message names a parameter as ``parameter: ...`` (at its start) or ``parameter=True`` /
# ``parameter='VALUE'``; the command line shows the flag instead (see :func:`_with_flags`).
_FLAGS = {
    "U": "-U",
    "model_kwargs": "--model-arg",
    "dataset_kwargs": "--data-arg",
    "similarity_params": "--similarity-arg",
    "allow_mismatch": "--allow-stale-dissection",
    "include_timm": "--builtin",
    "pattern": "--filter",
    "progress": "--quiet",
}


@dataclass
class _Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


_COMMANDS: dict[str, _Command] = {}


def say(*values: Any, file: Any = None, end: str = "\n", flush: bool = False) -> None:
    """``print`` for the command line: user-supplied text in a message (concept and class
    names, labels, file names) is shown, never obeyed as terminal control codes."""
    print(printable(" ".join(str(v) for v in values)), file=file, end=end, flush=flush)


def command(
    name: str,
    help: str,
    arguments: Callable[[argparse.ArgumentParser], None],  # noqa: A002
) -> Callable:
    """Register ``run(args) -> exit status`` as subcommand ``name``; ``arguments`` adds its flags."""

    def decorator(run: Callable[[argparse.Namespace], int | None]):
        if name in _COMMANDS:
            raise InputError(f"a discover subcommand named {name!r} already exists")
        _COMMANDS[name] = _Command(name, help, arguments, run)
        return run

    return decorator


# -- parsing helpers -------------------------------------------------------------------------
def _default(api: Callable, name: str) -> str:
    """``"default: X"`` for a help text, ``X`` the default of ``api``'s parameter ``name``
    read from its signature: help and behaviour cannot disagree."""
    value = inspect.signature(api).parameters[name].default
    if value is inspect.Parameter.empty or isinstance(value, type(dataclasses.MISSING)):
        raise TypeError(f"{api.__qualname__}: parameter {name} has no default")  # a bug
    if isinstance(value, (list, tuple)):
        value = " ".join(str(v) for v in value)
    return f"default: {value}".replace("%", "%%")


def _label_defaults_text(field: str = "similarity") -> str:
    """``"annotations: cos, vlm: corr"``: a label default of every embedder kind."""
    return ", ".join(f"{kind}: {getattr(d, field)}" for kind, d in LABEL_DEFAULTS.items())


def _number_or_none(text: str, flag: str) -> float | None:
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{flag}: expected a number or 'none', got {text!r}") from None
    return value


def _given(args: argparse.Namespace, *names: str, **renamed: str) -> dict[str, Any]:
    """The options the user gave, by API parameter name: ``names`` are options whose
    destination is the parameter's name, ``renamed`` maps parameter -> destination. An
    option not given is ``None`` and left out, so the API's default applies."""
    pairs = [(n, n) for n in names] + list(renamed.items())
    return {p: getattr(args, d) for p, d in pairs if getattr(args, d, None) is not None}


def _key_values(pairs: Sequence[str] | None, flag: str) -> dict:
    """``["n=2000", "widths=[8,16]"]`` -> ``{"n": 2000, "widths": [8, 16]}`` (JSON values,
    plain strings otherwise)."""
    values = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"{flag} expects KEY=VALUE, got {pair!r}")
        try:
            values[key] = json.loads(value)
        except json.JSONDecodeError:
            values[key] = value
    return values


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-U",
        type=int,
        default=None,
        help=f"competitors per LWTA block, 1 = dense ({_default(create_model, 'U')})",
    )
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument("--checkpoint", default=None, help="local weights file")
    parser.add_argument(
        "--model-arg",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="extra keyword for the model builder (JSON value), repeatable",
    )


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", help="model name: small_resnet, small_vit, any timm name, or torchvision:<name>"
    )
    _add_model_options(parser)


def _model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keywords of :func:`~discover.nn.models.create_model` the user gave."""
    return {
        **_given(args, "U", "num_classes", "checkpoint"),
        **_key_values(args.model_arg, "--model-arg"),
    }


def _build_model(args: argparse.Namespace):
    return create_model(args.model, **_model_options(args))


def _add_probe_arguments(parser: argparse.ArgumentParser, split: str | None = None) -> None:
    parser.add_argument(
        "--probe",
        default=None,
        help="probe data set: shapes, fashion-mnist, imagefolder, cifar100, ... "
        f"({_default(build_probe, 'name')})",
    )
    parser.add_argument(
        "--probe-split",
        default=None,
        help=f"data set split ({split or _default(build_probe, 'split')})",
    )
    parser.add_argument("--probe-root", help="folder of the probe data set, where it needs one")
    parser.add_argument(
        "--probe-arg",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="probe data set keyword (JSON value), e.g. n=2000, repeatable",
    )
    parser.add_argument("--probe-limit", type=int, help="use the first N probe images")


def _build_probe(args: argparse.Namespace, **unless_given: Any):
    """:func:`~discover.data.registry.build_probe` with the probe options the user gave
    (``unless_given``: API values for the options not given)."""
    options = {
        **unless_given,
        **_given(args, name="probe", split="probe_split", root="probe_root", limit="probe_limit"),
    }
    return build_probe(**options, **_key_values(args.probe_arg, "--probe-arg"))


def _add_dissect_options(parser: argparse.ArgumentParser) -> None:
    """The options of :func:`~discover.dissection.core.dissect` (``dissect``, ``sae dissect``)."""
    parser.add_argument(
        "--concepts", help=f"concept set name or file path ({_default(dissect, 'concepts')})"
    )
    parser.add_argument(
        "--embedder",
        help="conse, annotations, open_clip:ARCH:WEIGHTS, hf:DIR "
        f"({_default(dissect, 'embedder')})",
    )
    parser.add_argument(
        "--similarity",
        help=f"one of: {', '.join(SIMILARITIES)} (default: per embedder kind, "
        f"{_label_defaults_text()}; the paper's is soft_wpmi)",
    )
    parser.add_argument(
        "--similarity-arg",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="keyword of the similarity function (JSON value), repeatable",
    )
    parser.add_argument(
        "--policy",
        choices=EVAL_POLICIES,
        help=f"LWTA eval policy while recording ({_default(dissect, 'policy')})",
    )
    parser.add_argument("--seed", type=int, help=_default(dissect, "seed"))
    parser.add_argument("--batch-size", type=int, help=_default(dissect, "batch_size"))
    parser.add_argument("--device", help=_default(dissect, "device"))
    parser.add_argument(
        "--cache-dir",
        help=f"cache folder ({_default(dissect, 'cache_dir')}: $DISCOVER_CACHE or "
        "~/.cache/discover)",
    )
    parser.add_argument(
        "--no-cache", action="store_true", default=None, help="switch the cache off"
    )
    parser.add_argument(
        "--keep-scores",
        action="store_true",
        default=None,
        help="also save the full unit x concept score matrices (scores.safetensors), for exact "
        "ranks in `discover eval-descriptions`",
    )
    parser.add_argument(
        "--null-repeats",
        type=int,
        help="shuffled-image draws behind each label's significance (z, p_null columns; 0 "
        f"skips them; {_default(dissect, 'null_repeats')})",
    )
    parser.add_argument(
        "--significance-similarity",
        help="the similarity function that judges each label for that significance "
        f"({_default(dissect, 'significance_similarity')}; 'same': --similarity's)",
    )
    parser.add_argument(
        "--abstain-p",
        help="show a unit unlabelled when its label's p_null is above this; 'none': never "
        f"(default: per embedder kind, {_label_defaults_text('abstain_p')})",
    )
    parser.add_argument(
        "--min-match",
        help="show a unit unlabelled when its label's match (Pearson r with the unit over the "
        f"probe) is below this; 'none': never (default: per embedder kind, "
        f"{_label_defaults_text('min_match')})",
    )
    parser.add_argument(
        "--allow-nonfinite",
        action="store_true",
        default=None,
        help="record NaN or infinite activations with a warning instead of stopping; those "
        "units stay unlabelled ('not finite')",
    )
    parser.add_argument(
        "--shard",
        metavar="I/N",
        help="record shard I of N of the probe into --out (from 0; e.g. one Slurm array task "
        "each), then `discover merge` the shards; under torchrun each process takes its own",
    )
    parser.add_argument(
        "--stream",
        choices=["auto", "on", "off"],
        help="compute P block by block from cached image vectors instead of holding it "
        "whole (the same labels; default: auto, by the size of P: see discover.dissect)",
    )
    parser.add_argument("--out", required=True, help="output directory")


def _dissect_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keywords of :func:`~discover.dissection.core.dissect` the user gave."""
    options = _given(
        args, "concepts", "embedder", "similarity", "policy", "seed", "batch_size", "device"
    )
    options.update(_given(args, "pooling", "keep_scores", "null_repeats", "allow_nonfinite"))
    if args.significance_similarity is not None:
        same = args.significance_similarity == "same"
        options["significance_similarity"] = None if same else args.significance_similarity
    if args.similarity_arg:
        options["similarity_params"] = _key_values(args.similarity_arg, "--similarity-arg")
    if args.abstain_p is not None:
        options["abstain_p"] = _number_or_none(args.abstain_p, "--abstain-p")
    if args.min_match is not None:
        options["min_match"] = _number_or_none(args.min_match, "--min-match")
    if args.stream is not None:
        options["stream"] = {"on": True, "off": False}.get(args.stream, args.stream)
    if args.no_cache:
        options["cache_dir"] = None
    elif args.cache_dir is not None:
        options["cache_dir"] = args.cache_dir
    return options


# -- discover models -------------------------------------------------------------------------


def _models_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "pattern",
        nargs="?",
        default=None,
        help=f"glob filter, e.g. 'deit_*' ({_default(list_models, 'pattern')})",
    )
    parser.add_argument(
        "--builtin",
        dest="include_timm",
        action="store_false",
        default=None,
        help="only discover's own networks",
    )


@command("models", arguments=_models_arguments, help="list model names that create_model accepts")
def _models(args: argparse.Namespace) -> int:
    names = list_models(**_given(args, "pattern", "include_timm"))
    say("\n".join(names) if names else f"no model matches {args.pattern!r}")
    return 0


# -- discover convert ------------------------------------------------------------------------


def _convert_arguments(parser: argparse.ArgumentParser) -> None:
    _add_model_arguments(parser)
    parser.add_argument("--save", default=None, help="write the weights as .safetensors")


@command(
    "convert",
    arguments=_convert_arguments,
    help="build a model as a CVN and show what LWTA replaced",
)
def _convert(args: argparse.Namespace) -> int:
    model = _build_model(args)
    layers = lwta_layers(model)
    say(
        f"{args.model}: U={model.cvn_config.U}, {count_parameters(model):,} parameters, "
        f"{len(layers)} LWTA layer(s)"
    )
    for name, layer in layers.items():
        say(f"  {name}  ({layer.extra_repr()})")
    if args.save:
        say(f"saved {save_checkpoint(model, args.save)}")
    return 0


# -- discover sparsity -----------------------------------------------------------------------


def _sparsity_arguments(parser: argparse.ArgumentParser) -> None:
    _add_model_arguments(parser)
    parser.add_argument(
        "--policy",
        choices=EVAL_POLICIES,
        help=f"LWTA evaluation policy ({_default(photo_sparsity, 'policy')})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        help=f"seeds the model's weights and the winners ({_default(photo_sparsity, 'seed')})",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


@command(
    "sparsity",
    arguments=_sparsity_arguments,
    help="run real photos through a model and print per-layer sparsity",
)
def _sparsity(args: argparse.Namespace) -> int:
    result = photo_sparsity(args.model, **_given(args, "policy", "seed"), **_model_options(args))
    if args.json:
        say(json.dumps([r.to_dict() for r in result.rows], indent=2))
        return 0
    say(result.summary())
    return 0 if result.check.exact else 1  # exit 1: an LWTA layer is not exactly 1/U active


# -- discover train --------------------------------------------------------------------------
def _train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file of training options (flags override it)")
    parser.add_argument("--model", help=f"model name ({_default(TrainConfig, 'model')})")
    parser.add_argument(
        "-U",
        type=int,
        help=f"competitors per LWTA block, 1 = dense twin ({_default(TrainConfig, 'U')})",
    )
    parser.add_argument(
        "--model-arg",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="model builder keyword (JSON value), repeatable",
    )
    parser.add_argument(
        "--dataset",
        help=f"shapes, fashion-mnist, imagefolder, cifar10, ... ({_default(TrainConfig, 'dataset')})",
    )
    parser.add_argument("--data-root", help="data set folder (where the data set needs one)")
    parser.add_argument(
        "--data-arg",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="data set keyword (JSON value), e.g. n=4000, repeatable",
    )
    parser.add_argument(
        "--recipe", help=f"one of: {', '.join(RECIPES)} ({_default(TrainConfig, 'recipe')})"
    )
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int, help="global batch over all processes")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--label-smoothing", type=float)
    parser.add_argument("--warmup-epochs", type=int)
    parser.add_argument("--warmup-lr", type=float, help="lr of the warm-up epochs")
    parser.add_argument("--augment", choices=["basic", "randaugment", "none"])
    parser.add_argument(
        "--holdout",
        type=float,
        help=f"fraction of train held out for selection ({_default(TrainConfig, 'holdout')})",
    )
    parser.add_argument("--train-subset", type=int, help="train on a random subset of N images")
    parser.add_argument(
        "--tau", type=float, help=f"Gumbel-softmax temperature ({_default(TrainConfig, 'tau')})"
    )
    parser.add_argument(
        "--temperature",
        type=float,
        help="LWTA competition temperature T, winners ~ softmax(h/T) "
        f"({_default(TrainConfig, 'temperature')}: the reference)",
    )
    parser.add_argument(
        "--temperature-final",
        type=float,
        help="anneal T to this value so deterministic winners lose nothing "
        "(default: the recipe's; cvn_small 0.02, the others keep T constant)",
    )
    parser.add_argument(
        "--temperature-anneal",
        type=float,
        help=f"fraction of training spent annealing ({_default(TrainConfig, 'temperature_anneal')})",
    )
    parser.add_argument("--temperature-shape", choices=["cosine", "linear", "exp"])
    parser.add_argument("--eval-policy", choices=EVAL_POLICIES)
    parser.add_argument("--eval-samples", type=int, help="passes averaged at validation")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument(
        "--device", help=f"auto, cpu, cuda, cuda:1 ({_default(TrainConfig, 'device')})"
    )
    parser.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mixed precision (default: on for CUDA)",
    )
    parser.add_argument("--max-steps-per-epoch", type=int, help="cap steps (smoke runs)")
    parser.add_argument("--out", help=f"run directory ({_default(TrainConfig, 'out')})")
    parser.add_argument(
        "--resume", action="store_true", default=None, help="continue the run in --out"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        default=None,
        help="replace the run in --out (the old run stays until the new one has a checkpoint)",
    )
    parser.add_argument(
        "--quiet", dest="progress", action="store_false", default=None, help="no progress bar"
    )


_TRAIN_OPTIONS = [f.name for f in dataclasses.fields(TrainConfig)]


@command("train", arguments=_train_arguments, help="train a CVN (or its dense twin)")
def _train(args: argparse.Namespace) -> int:
    options = _given(args, *(name for name in _TRAIN_OPTIONS if hasattr(args, name)))
    if args.model_arg:
        options["model_kwargs"] = _key_values(args.model_arg, "--model-arg")
    if args.data_arg:
        options["dataset_kwargs"] = _key_values(args.data_arg, "--data-arg")
    config = (
        TrainConfig.from_yaml(args.config, **options)
        if args.config
        else TrainConfig.from_dict(options)
    )
    try:
        result = train(config, **_given(args, "progress"))
    except NonFiniteLossError as exc:  # a failed run, not a user mistake: exit status 1
        say(f"error: {exc}", file=sys.stderr)
        return 1
    last = result.history[-1] if result.history else {}
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, one process prints
        say(
            f"trained {result.epochs_run} epoch(s): train top-1 {last.get('train_top1', float('nan')):.4f}, "
            f"held-out top-1 {last.get('val_top1', float('nan')):.4f}, best {result.best_top1:.4f}"
        )
        if result.skipped_images:
            say(
                f"skipped {result.skipped_images} unreadable image(s) (listed in the data set's log)"
            )
        say(f"run directory: {result.out}")
    return 0


# -- discover evaluate -----------------------------------------------------------------------
def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="training run directory (from `discover train`)")
    parser.add_argument("--split", help=_default(evaluate_run, "split"))
    parser.add_argument(
        "--data-root",
        help="where the data set's files are (default: the folder the run was trained from)",
    )
    parser.add_argument(
        "--weights", choices=["best", "last"], help=_default(evaluate_run, "weights")
    )
    parser.add_argument(
        "--policy",
        choices=EVAL_POLICIES,
        help=f"LWTA evaluation policy ({_default(evaluate_run, 'policy')})",
    )
    parser.add_argument(
        "--samples",
        type=int,
        help="stochastic passes averaged under --policy sample "
        f"({_default(evaluate_run, 'samples')}; reference: 6)",
    )
    parser.add_argument("--seed", type=int, help=_default(evaluate_run, "seed"))
    parser.add_argument("--batch-size", type=int, help=_default(evaluate_run, "batch_size"))
    parser.add_argument("--limit", type=int, help="evaluate the first N images only")
    parser.add_argument("--device", help=_default(evaluate_run, "device"))
    parser.add_argument(
        "--json", help=f"also write the result as JSON to this path (default: RUN/{EVAL_FILE})"
    )


@command(
    "evaluate", arguments=_evaluate_arguments, help="top-1/top-5 and per-layer sparsity of a run"
)
def _evaluate(args: argparse.Namespace) -> int:
    if args.json is None:
        _check_default_output(args.run, "the run folder", "--json PATH")
    result = evaluate_run(
        args.run,
        **_given(
            args, "split", "weights", "policy", "samples", "seed", "batch_size", "limit", "device"
        ),
        **_given(args, "data_root"),
        progress=True,  # a terminal shows progress; the API's default is quiet
    )
    target = result.save(args.json)
    say(result.summary())
    say(f"\nwritten: {target}")
    return 0


# -- discover layers ------------------------------------------------------------------------
def _layers_arguments(parser: argparse.ArgumentParser) -> None:
    _add_model_arguments(parser)
    parser.add_argument(
        "--input-size",
        type=int,
        nargs=3,
        metavar=("C", "H", "W"),
        help="input size for the dry run (default: the model's)",
    )
    parser.add_argument(
        "--filter",
        dest="pattern",
        help=f"glob on layer names, e.g. 'blocks.*.mlp.act' ({_default(list_layers, 'pattern')})",
    )


@command(
    "layers",
    arguments=_layers_arguments,
    help="list every addressable layer: dotted name, output shape, suggested pooling",
)
def _layers(args: argparse.Namespace) -> int:
    infos = list_layers(_build_model(args), args.input_size, **_given(args, "pattern"))
    say(f"{'layer':<36} {'type':<22} {'output':<16} pooling")
    for info in infos:
        say(info)
    return 0


# -- discover dissect -----------------------------------------------------------------------
def _dissect_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--run",
        "--run-folder",  # under torchrun, which takes --run for its own --run-path
        dest="run",
        help="a training run directory (model, weights, preprocessing); --run-folder under "
        "torchrun",
    )
    source.add_argument("--model", help="a model name (with -U, --checkpoint, --model-arg)")
    _add_model_options(parser)
    parser.add_argument(
        "--weights",
        choices=["best", "last"],
        help=f"which weights of --run ({_default(load_run, 'weights')})",
    )
    parser.add_argument(
        "--layers",
        nargs="+",
        required=True,
        help="dotted layer names, glob patterns (blocks.*.mlp.act), or lwta (every LWTA layer)",
    )
    _add_probe_arguments(parser)
    parser.add_argument(
        "--pooling",
        help=f"auto, avg, max, cls, mean, none ({_default(dissect, 'pooling')})",
    )
    parser.add_argument(
        "--sae",
        help="a TopK SAE folder (`discover sae train`) of the one layer in --layers: label "
        "its latents instead of the layer's units",
    )
    _add_dissect_options(parser)


@command(
    "dissect",
    arguments=_dissect_arguments,
    help="label every unit of the chosen layers with a concept",
)
def _dissect(args: argparse.Namespace) -> int:
    model = load_run(args.run, **_given(args, "weights")).model if args.run else _build_model(args)
    options = {**_dissect_options(args), **_given(args, "sae")}
    sharded = args.shard is not None or int(os.environ.get("WORLD_SIZE", "1")) > 1
    if sharded:  # shards record; the merge scores (streamed, with the cache of no use)
        if "sae" in options:
            raise InputError("--shard and torchrun dissect a model's layers, not an SAE's latents")
        for unused in ("cache_dir", "stream"):
            options.pop(unused, None)
    if args.shard is not None:
        folder = dissect_shard(model, args.layers, _build_probe(args), args.out, args.shard,
                               **options)  # fmt: skip
        say(f"shard {args.shard} written: {folder}; merge all shards with "
            f"`discover merge SHARD... --out DIR`")  # fmt: skip
        return 0
    if sharded:
        result = dissect_distributed(model, args.layers, _build_probe(args), args.out, **options)
        if result is None:  # not process 0: it recorded its shard
            return 0
        out = Path(args.out)
    else:
        result = dissect(model, args.layers, _build_probe(args), **options)
        out = result.save(args.out)
    _print_dissection(result, out)
    return 0


def _print_dissection(result: Dissection, out: Path) -> None:
    for layer in result.config.layers:
        labels = [label or "(unlabelled)" for label in result.shown_labels(layer)]
        info = result.layer_info(layer)
        shown = ", ".join(labels[:8]) + (" ..." if len(labels) > 8 else "")
        abstained = sum(label is None for label in result.shown_labels(layer))
        say(
            f"{layer} ({info.units} units, pooling {info.pooling}, {info.dead_units} never "
            f"active, {abstained} unlabelled): {shown}"
        )
    about = result.about
    skipped = len(about.skipped_images)
    listed = f", skipped {skipped} unreadable image(s) (listed in dissection.json)"
    say(f"probe: {about.probe_images} images{listed if skipped else ''}")
    say(f"written: {out / 'descriptions.csv'} and {out / 'dissection.json'}")


def _merge_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shards", nargs="+", metavar="SHARD", help="shard folders (any order)")
    parser.add_argument("--out", required=True, help="output directory of the dissection")


@command(
    "merge",
    arguments=_merge_arguments,
    help="merge the shards of `discover dissect --shard I/N` into one dissection",
)
def _merge(args: argparse.Namespace) -> int:
    result = merge_shards(args.shards, out=args.out)
    _print_dissection(result, Path(args.out))
    return 0


# -- discover export -------------------------------------------------------------------------
def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="training run directory (`discover train`)")
    parser.add_argument("--format", choices=["onnx"], help=_default(export_run, "format"))
    parser.add_argument("--out", required=True, help="the exported file, e.g. model.onnx")
    parser.add_argument("--weights", choices=["best", "last"], help=_default(export_run, "weights"))
    parser.add_argument(
        "--policy",
        choices=["argmax", "sample"],
        help="LWTA winners in the export: only argmax (deterministic) can be exported "
        f"({_default(export_run, 'policy')})",
    )
    parser.add_argument(
        "--limit", type=int, help="check the export on the first N test images (default: all)"
    )


@command(
    "export",
    arguments=_export_arguments,
    help="export a run's model (deterministic winners) to ONNX, checked on its test split",
)
def _export(args: argparse.Namespace) -> int:
    result = export_run(args.run, args.out, **_given(args, "format", "weights", "policy", "limit"))
    say(result.summary())
    return 0


# -- discover explain -----------------------------------------------------------------------
def _explain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files to explain")
    parser.add_argument("--run", required=True, help="training run directory (`discover train`)")
    parser.add_argument(
        "--dissection",
        help=f"dissection directory (default: {default_dissection_dir('RUN')}, `discover dissect`)",
    )
    parser.add_argument(
        "--weights", choices=["best", "last"], help=_default(explain_run, "weights")
    )
    parser.add_argument(
        "--policy",
        choices=EVAL_POLICIES,
        help=f"LWTA evaluation policy ({_default(explain, 'policy')})",
    )
    parser.add_argument(
        "--top",
        type=int,
        help=f"winners listed per layer, 0: counts only ({_default(explain, 'top')})",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        help="dense layers: a unit is active when |activation| > threshold "
        f"({_default(explain, 'threshold')})",
    )
    parser.add_argument(
        "--seed", type=int, help=f"seed of the sampled winners ({_default(explain, 'seed')})"
    )
    parser.add_argument(
        "--embedder",
        help="condition each unit's label on the image: the vision-language model that "
        "looks at it ('dissection': the one the dissection was made with, or a spec such as "
        "open_clip:ARCH:WEIGHTS); default: global labels only",
    )
    parser.add_argument(
        "--candidates",
        type=int,
        help=f"candidate labels per unit to condition on ({_default(explain, 'candidates')})",
    )
    parser.add_argument(
        "--min-percentile",
        help="show a listed unit unlabelled when it fires on the image below this share of "
        "the probe; 'none': never (default: per embedder kind, "
        f"{_label_defaults_text('min_percentile')})",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument(
        "--labels",
        choices=["text", "iou"],
        help="text (unless given): the dissection's labels (image-text similarity); iou: each unit's "
        "best-IoU concept from the dissection's saved localization (Network Dissection; "
        "`discover eval-descriptions DISSECTION --localization` first)",
    )
    parser.add_argument(
        "--allow-stale-dissection",
        dest="allow_mismatch",
        action="store_true",
        default=None,
        help="use a dissection made for other weights, layers or U (warns instead of refusing)",
    )


@command(
    "explain",
    arguments=_explain_arguments,
    help="explain predictions through the labelled units that fired",
)
def _explain(args: argparse.Namespace) -> int:
    dissection = args.dissection
    if args.labels == "iou":  # the units' best-IoU concepts from the saved localization
        folder = dissection or default_dissection_dir(args.run)
        dissection = iou_labelled(Dissection.load(folder))
    result = explain_run(
        args.run,
        args.images,
        dissection,
        **_given(
            args,
            "weights",
            "allow_mismatch",
            "policy",
            "top",
            "threshold",
            "seed",
            "embedder",
            "candidates",
        ),
        **(
            {"min_percentile": _number_or_none(args.min_percentile, "--min-percentile")}
            if args.min_percentile is not None
            else {}
        ),
    )
    for path, reason in result.failures.items():
        say(f"error: cannot read image {path}: {reason}", file=sys.stderr)
    if result.explanations:
        if args.json:
            say(json.dumps([e.to_dict() for e in result.explanations], indent=2))
        else:
            print_explanations(result.explanations)
    if result.failures:
        read = len(args.images) - len(result.failures)
        say(
            f"error: {len(result.failures)} of {len(args.images)} image(s) could not be read"
            + (f"; explained the other {read}" if read else ""),
            file=sys.stderr,
        )
        return 2
    return 0


# -- discover demo --------------------------------------------------------------------------
def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help=f"output directory ({_default(DemoConfig, 'out')})")
    parser.add_argument(
        "--fast",
        action="store_true",
        default=None,
        help="CI size: about a minute, rough labels",
    )
    parser.add_argument("--data", choices=list(DEMO_DATA), help=_default(DemoConfig.preset, "data"))
    parser.add_argument(
        "--embedder",
        choices=["annotations", "shapes-clip", "conse"],
        help="concept matrix: ground truth (shapes, the default there), the Shapes world's "
        "small CLIP (shapes; trained once, about 20 min, then cached) or ConSE (offline)",
    )
    parser.add_argument(
        "--policy",
        choices=EVAL_POLICIES,
        help=f"LWTA evaluation policy ({_default(DemoConfig, 'policy')})",
    )
    parser.add_argument("--seed", type=int, help=_default(DemoConfig, "seed"))
    parser.add_argument(
        "--threads", type=int, help=f"torch threads ({_default(DemoConfig, 'threads')})"
    )
    parser.add_argument(
        "--quiet", dest="progress", action="store_false", default=None, help="no progress bars"
    )


@command(
    "demo",
    arguments=_demo_arguments,
    help="train, dissect and explain a CVN and its dense twin on built-in data; HTML report",
)
def _demo(args: argparse.Namespace) -> int:
    config = DemoConfig.preset(
        **_given(args, "data", "fast", "out", "embedder", "policy", "seed", "threads")
    )
    result = run_demo(config, **_given(args, "progress"), log=lambda line: say(line, flush=True))
    say()
    say(result.summary())
    return 0


# -- discover train-clip ----------------------------------------------------------------------
def _train_clip_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", help="folder to write it to (default: the cache, $DISCOVER_CACHE/shapes_clip)"
    )
    for name, kind in (("epochs", int), ("images", int), ("seed", int), ("lr", float)):
        parser.add_argument(f"--{name}", type=kind, help=_default(ShapesCLIPConfig, name))
    parser.add_argument(
        "--quiet", dest="progress", action="store_false", default=None, help="no progress bars"
    )


@command(
    "train-clip",
    arguments=_train_clip_arguments,
    help="train (or find in the cache) the Shapes world's small CLIP, offline; prints its "
    "--embedder spec",
)
def _train_clip(args: argparse.Namespace) -> int:
    config = ShapesCLIPConfig(**_given(args, "epochs", "images", "seed", "lr"))
    result = train_shapes_clip(config, **_given(args, "out", "progress"))
    say(result.summary())
    return 0


# -- discover eval-descriptions -------------------------------------------------------------
def _eval_descriptions_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dissection", help="dissection directory (`discover dissect --out`)")
    parser.add_argument(
        "--classes",
        help="final-layer protocol: class names in class order: a concept set (shapes_classes, "
        "imagenet_labels), a text file (one per line) or a data set name (fashion-mnist)",
    )
    parser.add_argument(
        "--ground-truth",
        action="store_true",
        default=None,
        help="score every dissected layer's labels against the probe set's ground-truth "
        "annotations (AUPRC, held-out IoU / F1, label = best concept, monosemanticity); give "
        "the probe options used to dissect (--probe, --probe-arg, ...)",
    )
    parser.add_argument(
        "--localization",
        action="store_true",
        default=None,
        help="Network-Dissection IoU of every spatial layer's units with the probe's pixel "
        "masks (best-IoU concept, unique detectors, label = best-IoU concept, with "
        "shuffled-mask and random-unit baselines); needs --run and the probe options used "
        "to dissect",
    )
    parser.add_argument("--run", help="with --localization: the training run the model comes from")
    _add_probe_arguments(parser)
    parser.add_argument(
        "--layer",
        help="the classifier layer (default: the last dissected); with --ground-truth or "
        "--localization, the one layer to score (default: all)",
    )
    parser.add_argument(
        "--embedder",
        help="embedder whose text space scores the matched cosine (the one used to dissect, "
        "e.g. conse); default: that figure is reported as n/a",
    )
    parser.add_argument(
        "--sentence-model",
        help="auto (mpnet if installed, else MiniLM), mpnet, minilm, a folder, or none "
        f"({_default(evaluate_descriptions, 'sentence_model')})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        help="seed of both baselines and of the ground-truth fit / held-out split "
        f"({_default(evaluate_descriptions, 'seed')})",
    )
    parser.add_argument(
        "--null-repeats",
        type=int,
        help=f"draws per baseline ({_default(evaluate_descriptions, 'null_repeats')})",
    )
    parser.add_argument(
        "--bar",
        type=float,
        help="with --ground-truth: a unit is monosemantic when its best concept's AUPRC is "
        f"above this ({_default(evaluate_groundtruth, 'bar')})",
    )
    parser.add_argument("--out", help="where to write the results (default: DISSECTION)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


_PROBE_OPTIONS = {
    "probe": "--probe",
    "probe_split": "--probe-split",
    "probe_root": "--probe-root",
    "probe_arg": "--probe-arg",
    "probe_limit": "--probe-limit",
}


@command(
    "eval-descriptions",
    arguments=_eval_descriptions_arguments,
    help="score descriptions: a classifier layer's against its classes (--classes), every "
    "layer's against the probe's ground truth (--ground-truth), where units fire against "
    "its pixel masks (--localization)",
)
def _eval_descriptions(args: argparse.Namespace) -> int:
    if args.classes is None and not args.ground_truth and not args.localization:
        raise InputError(
            "give --classes (the final-layer protocol: unit k should be class k), "
            "--ground-truth (scores against the probe set's annotations), --localization "
            "(IoU with the probe's pixel masks), or several"
        )
    stray = [flag for dest, flag in _PROBE_OPTIONS.items() if getattr(args, dest) is not None]
    if stray and not (args.ground_truth or args.localization):
        raise InputError(f"{', '.join(stray)}: only used with --ground-truth or --localization")
    if args.bar is not None and not args.ground_truth:
        raise InputError("--bar: only used with --ground-truth")
    if args.localization and args.run is None:
        raise InputError("--localization: give --run, the training run the dissected model is")
    if args.run is not None and not args.localization:
        raise InputError("--run: only used with --localization")
    if args.out is None:
        _check_default_output(args.dissection, "the dissection folder", "--out DIR")
    truth = scores = None
    if args.ground_truth:  # first: its probe check is quick, the sentence model is not
        options = _given(args, "seed", "bar")
        if args.layer is not None:
            options["layers"] = [args.layer]
        probe = _build_probe(args)
        truth = evaluate_groundtruth(args.dissection, probe, save=args.out is None, **options)
    located = None
    if args.localization:
        located = evaluate_localization(
            load_run(args.run).model,
            args.dissection,
            _build_probe(args),
            save=args.out is None,
            progress=True,
            **({"layers": [args.layer]} if args.layer is not None else {}),
            **_given(args, "seed"),
        )
    if args.classes is not None:
        scores = evaluate_descriptions(
            args.dissection,
            args.classes,
            **_given(args, "layer", "embedder", "sentence_model", "seed", "null_repeats"),
        )
    output: dict[str, Any] = {}
    if scores is not None:
        path = scores.save(args.out)
        output["descriptions"] = scores.to_dict()
        if not args.json:
            say(scores.summary())
            say(f"\nwritten: {path} (+ .csv tables)")
    if truth is not None:
        path = truth.save(args.out) if args.out is not None else truth.folder / REPORT_JSON
        output["ground_truth"] = truth.to_dict()
        if not args.json:
            say("\n" if scores is not None else "", end="")
            say(truth.table())
            dropped = truth.meta["dropped_concepts"]
            if dropped:
                say(
                    f"not scored ({len(dropped)} concepts absent from, or on every image of, "
                    f"the probe): {', '.join(dropped)}"
                )
            say(f"\nwritten: {path} and {path.parent / REPORT_CSV}")
    if located is not None:
        path = (
            located.save(args.out) if args.out is not None else located.folder / LOCALIZATION_JSON
        )
        output["localization"] = located.to_dict()
        if not args.json:
            say("\n" if len(output) > 1 else "", end="")
            say(located.table())
            say(f"\nwritten: {path} and {path.parent / LOCALIZATION_CSV}")
    if args.json:
        say(json.dumps(output if len(output) > 1 else next(iter(output.values())), indent=2))
    return 0


# -- discover planted -----------------------------------------------------------------------
def _planted_arguments(parser: argparse.ArgumentParser) -> None:
    _add_probe_arguments(parser)
    parser.add_argument(
        "--concepts",
        help=f"concept set name or file ({_default(planted_recovery_on_probe, 'concepts')})",
    )
    parser.add_argument(
        "--embedder",
        help="annotations, conse, open_clip:ARCH:WEIGHTS "
        f"({_default(planted_recovery_on_probe, 'embedder')})",
    )
    parser.add_argument(
        "--similarities", nargs="+", help="similarity functions (default: all registered)"
    )
    parser.add_argument(
        "--similarity-arg",
        action="append",
        default=None,
        metavar="SIM.KEY=VALUE",
        help="keyword of one similarity function (JSON value), e.g. soft_wpmi.top_k=50",
    )
    parser.add_argument("--noise", nargs="+", type=float, help=_default(PlantedConfig, "noise"))
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        help=_default(PlantedConfig, "variants"),
    )
    parser.add_argument(
        "--units", type=int, help=f"units per cell ({_default(PlantedConfig, 'units')})"
    )
    parser.add_argument(
        "-U", type=int, help=f"signed_sparse block size ({_default(PlantedConfig, 'U')})"
    )
    parser.add_argument(
        "--active-fraction", type=float, help=_default(PlantedConfig, "active_fraction")
    )
    parser.add_argument("--seed", type=int, help=_default(PlantedConfig, "seed"))
    parser.add_argument(
        "--batch-size", type=int, help=_default(planted_recovery_on_probe, "batch_size")
    )
    parser.add_argument("--out", help="write planted.csv, planted_ranking.csv, planted.json here")


@command(
    "planted",
    arguments=_planted_arguments,
    help="rank the similarity functions by how often they recover concepts planted in "
    "synthetic neurons",
)
def _planted(args: argparse.Namespace) -> int:
    options = _given(
        args, "concepts", "embedder", "batch_size", "similarities", "noise", "variants"
    )
    options.update(_given(args, "units", "U", "active_fraction", "seed"))
    if args.similarity_arg:
        options["similarity_params"] = nest_similarity_params(
            _key_values(args.similarity_arg, "--similarity-arg")
        )
    result = planted_recovery_on_probe(_build_probe(args), **options)
    say(result.table())
    if args.out:
        say(f"\nwritten: {result.save(args.out)} (+ planted.csv, planted_ranking.csv)")
    return 0


# -- discover sae ---------------------------------------------------------------------------
def _sae_common_arguments(parser: argparse.ArgumentParser, split: str | None = None) -> None:
    parser.add_argument("--run", required=True, help="a training run directory (`discover train`)")
    parser.add_argument("--weights", choices=["best", "last"], help=_default(load_run, "weights"))
    _add_probe_arguments(parser, split)


def _sae_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="sae_action", metavar="ACTION", required=True)
    fit = actions.add_parser(
        "train",
        help="train a TopK SAE on a layer's activations over a probe set",
        description="train a TopK SAE on a layer's activations over a probe set (resumable)",
    )
    _sae_common_arguments(fit, f"default: {PROBE_SPLIT}")
    fit.add_argument(
        "--policy",
        choices=EVAL_POLICIES,
        help=f"LWTA eval policy while recording ({_default(train_sae, 'policy')})",
    )
    fit.add_argument("--seed", type=int, help=_default(train_sae, "seed"))
    fit.add_argument("--device", help=_default(train_sae, "device"))
    fit.add_argument("--layer", required=True, help="dotted layer name (see `discover layers`)")
    fit.add_argument("--k", type=int, required=True, help="latents kept per vector")
    fit.add_argument("--expansion", type=int, required=True, help="latents per input feature")
    fit.add_argument(
        "--sites", choices=SITES, help=f"what it trains on ({_default(train_sae, 'sites')})"
    )
    fit.add_argument(
        "--positions-per-image",
        type=int,
        help="positions sampled per image with --sites positions, 0: all "
        f"({_default(train_sae, 'positions_per_image')})",
    )
    fit.add_argument(
        "--pooling",
        help=f"the layer's pooling for dissection ({_default(train_sae, 'pooling')})",
    )
    fit.add_argument("--epochs", type=int, help=_default(train_sae, "epochs"))
    fit.add_argument("--batch-size", type=int, help=_default(train_sae, "batch_size"))
    fit.add_argument("--lr", type=float, help=_default(train_sae, "lr"))
    fit.add_argument(
        "--aux-coef", type=float, help=f"AuxK weight, 0: off ({_default(train_sae, 'aux_coef')})"
    )
    fit.add_argument(
        "--out", help=f"output folder (default: {default_sae_dir('RUN', 'LAYER', 'K', 'E')})"
    )
    fit.add_argument(
        "--resume", action="store_true", default=None, help="continue the training in --out"
    )

    label = actions.add_parser(
        "dissect",
        help="label every latent of a trained SAE with a concept",
        description="label every latent of a trained SAE with a concept (its layer's dissection)",
    )
    _sae_common_arguments(label)
    label.add_argument("--sae", required=True, help="SAE folder (`discover sae train`)")
    _add_dissect_options(label)


@command(
    "sae",
    arguments=_sae_arguments,
    help="sparse autoencoders: `sae train` one on a layer, `sae dissect` its latents",
)
def _sae(args: argparse.Namespace) -> int:
    model = load_run(args.run, **_given(args, "weights")).model
    if args.sae_action == "train":
        out = args.out or default_sae_dir(args.run, args.layer, args.k, args.expansion)
        options = _given(args, "sites", "pooling", "epochs", "batch_size", "lr", "aux_coef")
        options.update(_given(args, "policy", "seed", "device", "resume"))
        if args.positions_per_image is not None:  # 0 on the command line: every position
            options["positions_per_image"] = args.positions_per_image or None
        probe = _build_probe(args, split=PROBE_SPLIT)
        sae = train_sae(model, args.layer, probe, args.k, args.expansion, out=out, **options)
        c, m = sae.config, sae.config.metrics
        fve = "-" if m["fve"] is None else f"{m['fve']:.3f}"
        say(
            f"SAE of {c.layer}: {c.latents} latents ({c.expansion} x width {c.width}), k {c.k}, "
            f"trained on {c.sites} ({c.training['rows_train']} vectors), pooling {c.pooling}; "
            f"held-out variance explained {fve}, {m['dead_latents']} dead latents"
        )
        say(f"written: {out}")
        return 0
    sae = SAE.load(args.sae)
    result = dissect(model, [sae.layer], _build_probe(args), sae=sae, **_dissect_options(args))
    out = result.save(args.out)
    labels = result.labels(sae.layer)
    shown = ", ".join(labels[:8]) + (" ..." if len(labels) > 8 else "")
    say(f"{sae.layer} SAE ({len(labels)} latents, k {sae.config.k}): {shown}")
    say(f"written: {out / 'descriptions.csv'} and {out / 'dissection.json'}")
    return 0


# -- entry point -----------------------------------------------------------------------------
def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every flag of ``parser`` and of its own subcommands."""
    flags = set()
    for action in parser._actions:
        flags.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= _option_strings(sub)
    return flags


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="discover",
        description="Competitive Vision Networks (stochastic LWTA) and neuron dissection.",
    )
    parser.add_argument("--version", action="version", version=f"discover {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error (also: DISCOVER_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in _COMMANDS.values():
        sub_parser = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(sub_parser)
        sub_parser.set_defaults(_run=cmd.run, _flags=frozenset(_option_strings(sub_parser)))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    debug = args.debug or bool(os.environ.get("DISCOVER_DEBUG"))
    try:
        _check_arguments(args)
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        say("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the one error boundary of the command line
        if debug:
            raise
        message = _user_error(exc)
        if message is not None:
            say(f"error: {_with_flags(message, getattr(args, '_flags', ()))}", file=sys.stderr)
            return 2
        say(
            f"internal error: {type(exc).__name__}: {exc}\n"
            "This is a bug in discover, not a mistake of yours; rerun with --debug for the "
            "traceback and report it.",
            file=sys.stderr,
        )
        return 1


_COUNT = (lambda v: v >= 1, "an integer >= 1")
_INDEX = (lambda v: v >= 0, "an integer >= 0")
_POSITIVE = (lambda v: v > 0, "a number > 0")
_NON_NEGATIVE = (lambda v: v >= 0, "a number >= 0")
_FRACTION = (lambda v: 0 <= v < 1, "a number in [0, 1)")
_PROBABILITY = (lambda v: 0 <= v <= 1, "a number in [0, 1]")
# The range of every numeric option (by its argparse dest), checked before any work.
_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    **dict.fromkeys(
        ["U", "num_classes", "probe_limit", "batch_size", "epochs", "train_subset", "limit"],
        _COUNT,
    ),
    **dict.fromkeys(
        ["eval_samples", "samples", "input_size", "candidates", "threads", "units", "k"], _COUNT
    ),
    **dict.fromkeys(["expansion", "max_steps_per_epoch"], _COUNT),
    **dict.fromkeys(
        ["seed", "workers", "null_repeats", "top", "positions_per_image", "warmup_epochs"],
        _INDEX,
    ),
    **dict.fromkeys(["lr", "tau", "temperature", "temperature_final", "warmup_lr"], _POSITIVE),
    **dict.fromkeys(["weight_decay", "threshold", "aux_coef", "noise"], _NON_NEGATIVE),
    **dict.fromkeys(["label_smoothing", "holdout"], _FRACTION),
    **dict.fromkeys(["temperature_anneal", "active_fraction", "bar"], _PROBABILITY),
}
# Where a command writes (argparse dest -> a folder?), checked before any work.
_OUTPUTS = {"out": True, "cache_dir": True, "save": False, "json": False}


def _check_arguments(args: argparse.Namespace) -> None:
    """Every numeric option in its range and every output writable, before any work."""
    for dest, value in vars(args).items():
        if value is None or isinstance(value, bool):
            continue
        flag = "-U" if dest == "U" else "--" + dest.replace("_", "-")
        if dest in _RANGES:
            accepts, expected = _RANGES[dest]
            for item in value if isinstance(value, list) else [value]:
                if not math.isfinite(item) or not accepts(item):
                    raise InputError(f"{flag}: expected {expected}, got {item}")
        if dest in _OUTPUTS and isinstance(value, str):
            check_writable(value, flag, folder=_OUTPUTS[dest])


def _check_default_output(folder: str, what: str, option: str) -> None:
    """A command that writes into an input folder by default: refuse early if it cannot."""
    if Path(folder).is_dir():
        try:
            check_writable(folder, what)
        except InputError as error:
            raise InputError(f"{error}; pass {option} to write the result elsewhere") from None


def _with_flags(message: str, flags: Collection[str]) -> str:
    """``message`` with the API parameters it names shown as the command's ``flags``: a
    leading ``parameter:``, and ``parameter=True`` / ``parameter='VALUE'`` anywhere
    (parameters the command has no flag for stay as they are).

    Example:
        >>> _with_flags("similarity_params: similarity 'cos': unknown option 'x'",
        ...             {"--similarity-arg"})
        "--similarity-arg: similarity 'cos': unknown option 'x'"
    """

    def flag(parameter: str) -> str | None:
        option = _FLAGS.get(parameter, "--" + parameter.replace("_", "-"))
        return option if option in flags else None

    def keyword(match: re.Match[str]) -> str:
        option = flag(match[1])
        if option is None:
            return match[0]
        return option if match[2] == "True" else f"{option} {match[2][1:-1]}"

    message = re.sub(r"(?<![\w.])(\w+)=(True|'[^']*')", keyword, message)
    head = re.match(r"(\w+):", message)
    if head and (option := flag(head[1])):
        message = option + message[head.end(1) :]
    return message


def _user_error(exc: BaseException) -> str | None:
    """The one-line message for a mistake or a condition the user can fix (a
    :class:`~discover.errors.DiscoverError`, or the file system refusing); ``None`` for bugs."""
    import errno

    if isinstance(exc, DiscoverError):
        return str(exc)
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        if exc.errno == errno.ENOSPC:
            return f"no space left on the device{where}; free some space and run again"
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return f"{exc.strerror or exc}{where}: not allowed to write or read there"
        if isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
            return (
                str(exc)
                if not exc.filename or str(exc.filename) in str(exc)
                else (f"{exc.strerror}: {exc.filename}")
            )
        return f"{exc.strerror or exc}{where}"
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
