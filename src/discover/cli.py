"""The ``discover`` command line: a thin layer over the Python API.

Every subcommand is a pair of functions registered with :func:`command`: one adds its
arguments, the other runs it by calling the public API. User mistakes (unknown names,
bad shapes, missing files) end in a one-line ``error:`` message and exit status 2; set
``DISCOVER_DEBUG=1`` to see the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from . import __version__

__all__ = ["main", "command"]


@dataclass
class _Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


_COMMANDS: dict[str, _Command] = {}


def command(
    name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None]  # noqa: A002
) -> Callable:
    """Register ``run(args) -> exit status`` as subcommand ``name``; ``arguments`` adds its flags."""

    def decorator(run: Callable[[argparse.Namespace], int | None]):
        if name in _COMMANDS:
            raise ValueError(f"a discover subcommand named {name!r} already exists")
        _COMMANDS[name] = _Command(name, help, arguments, run)
        return run

    return decorator


def _parse_model_kwargs(pairs: Sequence[str]) -> dict:
    kwargs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--model-arg expects KEY=VALUE, got {pair!r}")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return kwargs


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model name: small_resnet, small_vit, any timm name, "
                        "or torchvision:<name>")
    parser.add_argument("-U", type=int, default=1, help="competitors per LWTA block (1 = dense)")
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument("--checkpoint", default=None, help="local weights file")
    parser.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="extra keyword for the model builder (JSON value), repeatable")


def _build_model(args: argparse.Namespace):
    from .models import create_model

    return create_model(args.model, U=args.U, num_classes=args.num_classes,
                        checkpoint=args.checkpoint, **_parse_model_kwargs(args.model_arg))


# -- discover models -------------------------------------------------------------------------

def _models_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default="*", help="glob filter, e.g. 'deit_*'")
    parser.add_argument("--builtin", action="store_true", help="only discover's own networks")


@command("models", arguments=_models_arguments, help="list model names that create_model accepts")
def _models(args: argparse.Namespace) -> int:
    from .models import list_models

    names = list_models(args.pattern, include_timm=not args.builtin)
    print("\n".join(names) if names else f"no model matches {args.pattern!r}")
    return 0

# -- discover convert ------------------------------------------------------------------------

def _convert_arguments(parser: argparse.ArgumentParser) -> None:
    _add_model_arguments(parser)
    parser.add_argument("--save", default=None, help="write the weights as .safetensors")


@command("convert", arguments=_convert_arguments, help="build a model as a CVN and show what LWTA replaced")
def _convert(args: argparse.Namespace) -> int:
    from .lwta import lwta_layers
    from .models import count_parameters

    model = _build_model(args)
    layers = lwta_layers(model)
    print(f"{args.model}: U={args.U}, {count_parameters(model):,} parameters, "
          f"{len(layers)} LWTA layer(s)")
    for name, layer in layers.items():
        print(f"  {name}  ({layer.extra_repr()})")
    if args.save:
        from .models import save_checkpoint

        print(f"saved {save_checkpoint(model, args.save)}")
    return 0

# -- discover sparsity -----------------------------------------------------------------------

def _sparsity_arguments(parser: argparse.ArgumentParser) -> None:
    _add_model_arguments(parser)
    parser.add_argument("--policy", choices=["sample", "argmax"], default="sample",
                        help="LWTA evaluation policy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


@command("sparsity", arguments=_sparsity_arguments, help="run real photos through a model and print per-layer sparsity")
def _sparsity(args: argparse.Namespace) -> int:
    from .lwta import set_eval_policy
    from .photos import sample_photos
    from .sparsity import format_sparsity, measure_sparsity

    torch.manual_seed(args.seed)
    model = _build_model(args).eval()
    set_eval_policy(model, args.policy)
    names, batch = sample_photos(model)
    rows = measure_sparsity(model, batch)
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
        return 0
    print(f"{args.model} (U={args.U}, eval policy {args.policy!r}, seed {args.seed}) on "
          f"{len(names)} photos: {', '.join(names)}")
    print(format_sparsity(rows))
    lwta_rows = [r for r in rows if r.kind == "lwta"]
    if lwta_rows:
        exact = all(r.active * r.U == r.units for r in lwta_rows)
        print(f"\n{len(lwta_rows)} LWTA layers; every active fraction == 1/U = "
              f"{1 / args.U:.4f}: {'yes' if exact else 'NO'}")
        return 0 if exact else 1
    return 0


# -- entry point -----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="discover",
        description="Competitive Vision Networks (stochastic LWTA) and neuron dissection.",
    )
    parser.add_argument("--version", action="version", version=f"discover {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in _COMMANDS.values():
        sub_parser = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(sub_parser)
        sub_parser.set_defaults(_run=cmd.run)
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
    try:
        return int(args._run(args) or 0)
    except (ValueError, FileNotFoundError, NotADirectoryError) as exc:
        if os.environ.get("DISCOVER_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
