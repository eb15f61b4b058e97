"""``discover train``, ``train-clip`` and ``export``: training runs made and exported."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from discover.cli.common import (
    add_api_options,
    add_key_values,
    add_quiet_option,
    add_weights_option,
    api_default,
    command,
    given,
    key_values,
    say,
)
from discover.nn.lwta import EVAL_POLICIES
from discover.training.clip import ShapesCLIPConfig, train_shapes_clip
from discover.training.config import TrainConfig
from discover.training.export import export_run
from discover.training.loop import NonFiniteLossError
from discover.training.recipes import RECIPES
from discover.training.trainer import train

__all__: list[str] = []  # the commands register themselves with discover.cli.command


# -- discover train --------------------------------------------------------------------------
def _add_model_and_data_arguments(parser: argparse.ArgumentParser) -> None:
    """What is trained on what: the model, the data set, the recipe."""
    parser.add_argument("--config", help="YAML file of training options (flags override it)")
    parser.add_argument("--model", help=f"model name ({api_default(TrainConfig, 'model')})")
    parser.add_argument(
        "-U",
        type=int,
        help=f"competitors per LWTA block, 1 = dense twin ({api_default(TrainConfig, 'U')})",
    )
    add_key_values(parser, "--model-arg", "model builder keyword (JSON value), repeatable")
    parser.add_argument(
        "--dataset",
        help="shapes, fashion-mnist, imagefolder, cifar10, ... "
        f"({api_default(TrainConfig, 'dataset')})",
    )
    parser.add_argument("--data-root", help="data set folder (where the data set needs one)")
    add_key_values(parser, "--data-arg", "data set keyword (JSON value), e.g. n=4000, repeatable")
    parser.add_argument(
        "--recipe", help=f"one of: {', '.join(RECIPES)} ({api_default(TrainConfig, 'recipe')})"
    )


def _add_optimisation_arguments(parser: argparse.ArgumentParser) -> None:
    """The recipe's values, overridden: schedule, regularisation, augmentation, data used."""
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
        help=f"fraction of train held out for selection ({api_default(TrainConfig, 'holdout')})",
    )
    parser.add_argument("--train-subset", type=int, help="train on a random subset of N images")


def _add_competition_arguments(parser: argparse.ArgumentParser) -> None:
    """The LWTA competition: its temperatures while training, its policy at validation."""
    parser.add_argument(
        "--tau", type=float, help=f"Gumbel-softmax temperature ({api_default(TrainConfig, 'tau')})"
    )
    parser.add_argument(
        "--temperature",
        type=float,
        help="LWTA competition temperature T, winners ~ softmax(h/T) "
        f"({api_default(TrainConfig, 'temperature')}: the reference)",
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
        help="fraction of training spent annealing "
        f"({api_default(TrainConfig, 'temperature_anneal')})",
    )
    parser.add_argument("--temperature-shape", choices=["cosine", "linear", "exp"])
    parser.add_argument("--eval-policy", choices=EVAL_POLICIES)
    parser.add_argument("--eval-samples", type=int, help="passes averaged at validation")


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """How and where the run happens: seed, workers, device, its folder."""
    parser.add_argument("--seed", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument(
        "--device", help=f"auto, cpu, cuda, cuda:1 ({api_default(TrainConfig, 'device')})"
    )
    parser.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mixed precision (default: on for CUDA)",
    )
    parser.add_argument("--max-steps-per-epoch", type=int, help="cap steps (smoke runs)")
    parser.add_argument("--out", help=f"run directory ({api_default(TrainConfig, 'out')})")
    parser.add_argument(
        "--resume", action="store_true", default=None, help="continue the run in --out"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        default=None,
        help="replace the run in --out (the old run stays until the new one has a checkpoint)",
    )
    add_quiet_option(parser, "no progress bar")


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    _add_model_and_data_arguments(parser)
    _add_optimisation_arguments(parser)
    _add_competition_arguments(parser)
    _add_run_arguments(parser)


_TRAIN_OPTIONS = [f.name for f in dataclasses.fields(TrainConfig)]


@command("train", arguments=_train_arguments, help="train a CVN (or its dense twin)")
def _train(args: argparse.Namespace) -> int:
    options = given(args, *(name for name in _TRAIN_OPTIONS if hasattr(args, name)))
    if args.model_arg:
        options["model_kwargs"] = key_values(args.model_arg, "--model-arg")
    if args.data_arg:
        options["dataset_kwargs"] = key_values(args.data_arg, "--data-arg")
    config = (
        TrainConfig.from_yaml(args.config, **options)
        if args.config
        else TrainConfig.from_dict(options)
    )
    try:
        result = train(config, **given(args, "progress"))
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


# -- discover train-clip ---------------------------------------------------------------------
def _train_clip_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", help="folder to write it to (default: the cache, $DISCOVER_CACHE/shapes_clip)"
    )
    add_api_options(parser, ShapesCLIPConfig, epochs=int, images=int, seed=int, lr=float)
    add_quiet_option(parser)


@command(
    "train-clip",
    arguments=_train_clip_arguments,
    help="train (or find in the cache) the Shapes world's small CLIP, offline; prints its "
    "--embedder spec",
)
def _train_clip(args: argparse.Namespace) -> int:
    config = ShapesCLIPConfig(**given(args, "epochs", "images", "seed", "lr"))
    result = train_shapes_clip(config, **given(args, "out", "progress"))
    say(result.summary())
    return 0


# -- discover export -------------------------------------------------------------------------
def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="training run directory (`discover train`)")
    parser.add_argument("--format", choices=["onnx"], help=api_default(export_run, "format"))
    parser.add_argument("--out", required=True, help="the exported file, e.g. model.onnx")
    add_weights_option(parser, export_run)
    parser.add_argument(
        "--policy",
        choices=["argmax", "sample"],
        help="LWTA winners in the export: only argmax (deterministic) can be exported "
        f"({api_default(export_run, 'policy')})",
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
    result = export_run(args.run, args.out, **given(args, "format", "weights", "policy", "limit"))
    say(result.summary())
    return 0
