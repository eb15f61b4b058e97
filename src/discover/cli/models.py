"""``discover models``, ``convert``, ``layers`` and ``sparsity``: a model built by name,
looked at."""

from __future__ import annotations

import argparse
import json

from discover.cli.common import (
    add_model_arguments,
    add_policy_option,
    api_default,
    command,
    given,
    model_from_args,
    model_options,
    say,
)
from discover.dissection.layers import list_layers
from discover.evaluation.sparsity import photo_sparsity
from discover.nn.checkpoints import count_parameters, save_checkpoint
from discover.nn.lwta import lwta_layers
from discover.nn.models import list_models

__all__: list[str] = []  # the commands register themselves with discover.cli.command


# -- discover models -------------------------------------------------------------------------
def _models_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "pattern",
        nargs="?",
        default=None,
        help=f"glob filter, e.g. 'deit_*' ({api_default(list_models, 'pattern')})",
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
    names = list_models(**given(args, "pattern", "include_timm"))
    say("\n".join(names) if names else f"no model matches {args.pattern!r}")
    return 0


# -- discover convert ------------------------------------------------------------------------
def _convert_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--save", default=None, help="write the weights as .safetensors")


@command(
    "convert",
    arguments=_convert_arguments,
    help="build a model as a CVN and show what LWTA replaced",
)
def _convert(args: argparse.Namespace) -> int:
    model = model_from_args(args)
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
    add_model_arguments(parser)
    add_policy_option(parser, photo_sparsity)
    parser.add_argument(
        "--seed",
        type=int,
        help=f"seeds the model's weights and the winners ({api_default(photo_sparsity, 'seed')})",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


@command(
    "sparsity",
    arguments=_sparsity_arguments,
    help="run real photos through a model and print per-layer sparsity",
)
def _sparsity(args: argparse.Namespace) -> int:
    result = photo_sparsity(args.model, **given(args, "policy", "seed"), **model_options(args))
    if args.json:
        say(json.dumps([r.to_dict() for r in result.rows], indent=2))
        return 0
    say(result.summary())
    return 0 if result.check.exact else 1  # exit 1: an LWTA layer is not exactly 1/U active


# -- discover layers -------------------------------------------------------------------------
def _layers_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
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
        help="glob on layer names, e.g. 'blocks.*.mlp.act' "
        f"({api_default(list_layers, 'pattern')})",
    )


@command(
    "layers",
    arguments=_layers_arguments,
    help="list every addressable layer: dotted name, output shape, suggested pooling",
)
def _layers(args: argparse.Namespace) -> int:
    infos = list_layers(model_from_args(args), args.input_size, **given(args, "pattern"))
    say(f"{'layer':<36} {'type':<22} {'output':<16} pooling")
    for info in infos:
        say(info)
    return 0
