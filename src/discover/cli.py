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

from discover import __version__

__all__ = ["main", "command"]


@dataclass
class _Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


_COMMANDS: dict[str, _Command] = {}


def command(
    name: str,
    help: str,
    arguments: Callable[[argparse.ArgumentParser], None],  # noqa: A002
) -> Callable:
    """Register ``run(args) -> exit status`` as subcommand ``name``; ``arguments`` adds its flags."""

    def decorator(run: Callable[[argparse.Namespace], int | None]):
        if name in _COMMANDS:
            raise ValueError(f"a discover subcommand named {name!r} already exists")
        _COMMANDS[name] = _Command(name, help, arguments, run)
        return run

    return decorator


def _key_values(pairs: Sequence[str], flag: str) -> dict:
    """``["n=2000", "widths=[8,16]"]`` -> ``{"n": 2000, "widths": [8, 16]}`` (JSON values,
    plain strings otherwise)."""
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} expects KEY=VALUE, got {pair!r}")
        try:
            values[key] = json.loads(value)
        except json.JSONDecodeError:
            values[key] = value
    return values


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", help="model name: small_resnet, small_vit, any timm name, or torchvision:<name>"
    )
    parser.add_argument("-U", type=int, default=1, help="competitors per LWTA block (1 = dense)")
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument("--checkpoint", default=None, help="local weights file")
    parser.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra keyword for the model builder (JSON value), repeatable",
    )


def _build_model(args: argparse.Namespace):
    from discover.nn.models import create_model

    return create_model(
        args.model,
        U=args.U,
        num_classes=args.num_classes,
        checkpoint=args.checkpoint,
        **_key_values(args.model_arg, "--model-arg"),
    )


# -- discover models -------------------------------------------------------------------------


def _models_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default="*", help="glob filter, e.g. 'deit_*'")
    parser.add_argument("--builtin", action="store_true", help="only discover's own networks")


@command("models", arguments=_models_arguments, help="list model names that create_model accepts")
def _models(args: argparse.Namespace) -> int:
    from discover.nn.models import list_models

    names = list_models(args.pattern, include_timm=not args.builtin)
    print("\n".join(names) if names else f"no model matches {args.pattern!r}")
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
    from discover.nn.lwta import lwta_layers
    from discover.nn.models import count_parameters

    model = _build_model(args)
    layers = lwta_layers(model)
    print(
        f"{args.model}: U={args.U}, {count_parameters(model):,} parameters, "
        f"{len(layers)} LWTA layer(s)"
    )
    for name, layer in layers.items():
        print(f"  {name}  ({layer.extra_repr()})")
    if args.save:
        from discover.nn.models import save_checkpoint

        print(f"saved {save_checkpoint(model, args.save)}")
    return 0


# -- discover sparsity -----------------------------------------------------------------------


def _sparsity_arguments(parser: argparse.ArgumentParser) -> None:
    _add_model_arguments(parser)
    parser.add_argument(
        "--policy", choices=["sample", "argmax"], default="sample", help="LWTA evaluation policy"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


@command(
    "sparsity",
    arguments=_sparsity_arguments,
    help="run real photos through a model and print per-layer sparsity",
)
def _sparsity(args: argparse.Namespace) -> int:
    from discover.data.photos import sample_photos
    from discover.evaluation.sparsity import format_sparsity, measure_sparsity
    from discover.nn.lwta import set_eval_policy

    torch.manual_seed(args.seed)
    model = _build_model(args).eval()
    set_eval_policy(model, args.policy)
    names, batch = sample_photos(model)
    rows = measure_sparsity(model, batch)
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
        return 0
    print(
        f"{args.model} (U={args.U}, eval policy {args.policy!r}, seed {args.seed}) on "
        f"{len(names)} photos: {', '.join(names)}"
    )
    print(format_sparsity(rows))
    lwta_rows = [r for r in rows if r.kind == "lwta"]
    if lwta_rows:
        exact = all(r.active * r.U == r.units for r in lwta_rows)
        print(
            f"\n{len(lwta_rows)} LWTA layers; every active fraction == 1/U = "
            f"{1 / args.U:.4f}: {'yes' if exact else 'NO'}"
        )
        return 0 if exact else 1
    return 0


# -- discover train --------------------------------------------------------------------------
def _train_arguments(parser: argparse.ArgumentParser) -> None:
    from discover.training.recipes import RECIPES

    parser.add_argument("--config", help="YAML file of training options (flags override it)")
    parser.add_argument("--model", help="model name (default small_resnet)")
    parser.add_argument("-U", type=int, help="competitors per LWTA block (1 = dense twin)")
    parser.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model builder keyword (JSON value), repeatable",
    )
    parser.add_argument("--dataset", help="shapes, fashion-mnist, imagefolder, cifar10, ...")
    parser.add_argument("--data-root", help="data set folder (where the data set needs one)")
    parser.add_argument(
        "--data-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="data set keyword (JSON value), e.g. n=4000, repeatable",
    )
    parser.add_argument("--recipe", help=f"one of: {', '.join(RECIPES)} (default resnet_small)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int, help="global batch over all processes")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--label-smoothing", type=float)
    parser.add_argument("--warmup-epochs", type=int)
    parser.add_argument("--warmup-lr", type=float, help="lr of the warm-up epochs")
    parser.add_argument("--augment", choices=["basic", "randaugment", "none"])
    parser.add_argument("--holdout", type=float, help="fraction of train held out for selection")
    parser.add_argument("--train-subset", type=int, help="train on a random subset of N images")
    parser.add_argument("--tau", type=float, help="Gumbel-softmax temperature (default 1.67)")
    parser.add_argument(
        "--temperature",
        type=float,
        help="LWTA competition temperature T, winners ~ softmax(h/T) (default 1: the reference)",
    )
    parser.add_argument(
        "--temperature-final",
        type=float,
        help="anneal T to this value (e.g. 0.05) so deterministic winners lose nothing",
    )
    parser.add_argument(
        "--temperature-anneal", type=float, help="fraction of training spent annealing (0.75)"
    )
    parser.add_argument("--temperature-shape", choices=["cosine", "linear", "exp"])
    parser.add_argument("--eval-policy", choices=["sample", "argmax"])
    parser.add_argument("--eval-samples", type=int, help="passes averaged at validation")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--device", help="auto (default), cpu, cuda, cuda:1")
    parser.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mixed precision (default: on for CUDA)",
    )
    parser.add_argument("--max-steps-per-epoch", type=int, help="cap steps (smoke runs)")
    parser.add_argument("--out", help="run directory (default runs/train)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in --out (the old run stays until the new one has a checkpoint)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


@command("train", arguments=_train_arguments, help="train a CVN (or its dense twin)")
def _train(args: argparse.Namespace) -> int:
    from discover.training.trainer import NonFiniteLossError, TrainConfig, train

    options = {
        key: getattr(args, key)
        for key in (
            "model",
            "U",
            "dataset",
            "data_root",
            "recipe",
            "epochs",
            "batch_size",
            "lr",
            "weight_decay",
            "label_smoothing",
            "warmup_epochs",
            "warmup_lr",
            "augment",
            "holdout",
            "train_subset",
            "tau",
            "temperature",
            "temperature_final",
            "temperature_anneal",
            "temperature_shape",
            "eval_policy",
            "eval_samples",
            "seed",
            "workers",
            "device",
            "amp",
            "max_steps_per_epoch",
            "out",
        )
        if getattr(args, key) is not None
    }
    if args.model_arg:
        options["model_kwargs"] = _key_values(args.model_arg, "--model-arg")
    if args.data_arg:
        options["dataset_kwargs"] = _key_values(args.data_arg, "--data-arg")
    if args.resume:
        options["resume"] = True
    if args.overwrite:
        options["overwrite"] = True
    config = (
        TrainConfig.from_yaml(args.config, **options)
        if args.config
        else TrainConfig.from_dict(options)
    )
    try:
        result = train(config, progress=not args.quiet)
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    last = result.history[-1] if result.history else {}
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"trained {result.epochs_run} epoch(s): train top-1 {last.get('train_top1', float('nan')):.4f}, "
            f"held-out top-1 {last.get('val_top1', float('nan')):.4f}, best {result.best_top1:.4f}"
        )
        if result.skipped_images:
            print(
                f"skipped {result.skipped_images} unreadable image(s) (listed in the data set's log)"
            )
        print(f"run directory: {result.out}")
    return 0


# -- discover evaluate -----------------------------------------------------------------------
def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="training run directory (from `discover train`)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--weights", choices=["best", "last"], default="best")
    parser.add_argument(
        "--policy", choices=["sample", "argmax"], default="argmax", help="LWTA evaluation policy"
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=6,
        help="stochastic passes averaged under --policy sample (reference: 6)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--limit", type=int, help="evaluate the first N images only")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--json",
        help="also write the result as JSON to this path "
        "(default: RUN/eval-SPLIT-WEIGHTS-POLICY.json)",
    )


@command(
    "evaluate", arguments=_evaluate_arguments, help="top-1/top-5 and per-layer sparsity of a run"
)
def _evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from discover.evaluation.classification import evaluate_run

    result = evaluate_run(
        args.run,
        split=args.split,
        weights=args.weights,
        policy=args.policy,
        samples=args.samples,
        seed=args.seed,
        batch_size=args.batch_size,
        limit=args.limit,
        device=args.device,
        progress=True,
    )
    target = Path(
        args.json or Path(args.run) / f"eval-{args.split}-{args.weights}-{args.policy}.json"
    )
    target.write_text(json.dumps(result.to_dict(), indent=2))
    print(result.summary())
    print(f"\nwritten: {target}")
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
        "--filter", default="*", help="glob on layer names, e.g. 'blocks.*.mlp.act'"
    )


@command(
    "layers",
    arguments=_layers_arguments,
    help="list every addressable layer: dotted name, output shape, suggested pooling",
)
def _layers(args: argparse.Namespace) -> int:
    import fnmatch

    from discover.dissection.recording import list_layers

    infos = list_layers(_build_model(args), args.input_size)
    print(f"{'layer':<36} {'type':<22} {'output':<16} pooling")
    for info in infos:
        if fnmatch.fnmatchcase(info.name, args.filter):
            print(info)
    return 0


# -- discover dissect -----------------------------------------------------------------------
def _dissect_arguments(parser: argparse.ArgumentParser) -> None:
    from discover.dissection.similarity import DEFAULT_SIMILARITY, SIMILARITIES

    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="a training run directory (model, weights, preprocessing)")
    source.add_argument("--model", help="a model name (with -U, --checkpoint, --model-arg)")
    parser.add_argument("-U", type=int, default=1)
    parser.add_argument("--num-classes", type=int)
    parser.add_argument("--checkpoint", help="local weights for --model")
    parser.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--weights", choices=["best", "last"], default="best", help="which weights of --run"
    )
    parser.add_argument(
        "--layers",
        nargs="+",
        required=True,
        help="dotted layer names, glob patterns (blocks.*.mlp.act), or lwta (every LWTA layer)",
    )
    parser.add_argument(
        "--probe",
        default="shapes",
        help="probe data set: shapes, fashion-mnist, imagefolder, cifar100, ...",
    )
    parser.add_argument("--probe-split", default="val")
    parser.add_argument("--probe-root", help="folder of the probe data set, where it needs one")
    parser.add_argument(
        "--probe-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="probe data set keyword, e.g. n=2000",
    )
    parser.add_argument("--probe-limit", type=int, help="use the first N probe images")
    parser.add_argument("--concepts", default="20k", help="concept set name or file path")
    parser.add_argument(
        "--embedder", default="conse", help="conse, annotations, open_clip:ARCH:WEIGHTS, hf:DIR"
    )
    parser.add_argument(
        "--similarity", default=DEFAULT_SIMILARITY, help=f"one of: {', '.join(SIMILARITIES)}"
    )
    parser.add_argument("--similarity-arg", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--pooling", default="auto", help="auto, avg, max, cls, mean, none")
    parser.add_argument(
        "--policy",
        choices=["argmax", "sample"],
        default="argmax",
        help="LWTA eval policy while recording",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--cache-dir", help="cache folder (default: $DISCOVER_CACHE or ~/.cache/discover)"
    )
    parser.add_argument("--no-cache", action="store_true", help="switch the cache off")
    parser.add_argument(
        "--keep-scores",
        action="store_true",
        help="also save the full unit x concept score matrices (scores.safetensors), for exact ranks "
        "in `discover eval-descriptions`",
    )
    parser.add_argument("--out", required=True, help="output directory")


@command(
    "dissect",
    arguments=_dissect_arguments,
    help="label every unit of the chosen layers with a concept",
)
def _dissect(args: argparse.Namespace) -> int:
    from discover.data.registry import build_dataset
    from discover.dissection.core import dissect
    from discover.dissection.embedders import cache_dir
    from discover.training.runs import load_run

    if args.run:
        model = load_run(args.run, args.weights).model
    else:
        model = _build_model(args)
    probe = build_dataset(
        args.probe,
        args.probe_split,
        root=args.probe_root,
        **_key_values(args.probe_arg, "--probe-arg"),
    )
    if args.probe_limit is not None:
        probe = torch.utils.data.Subset(probe, range(min(args.probe_limit, len(probe))))
    embedder = args.embedder
    if embedder == "annotations":
        from discover.dissection.embedders import AnnotationEmbedder

        embedder = AnnotationEmbedder()
    result = dissect(
        model,
        args.layers,
        probe,
        args.concepts,
        embedder,
        args.similarity,
        similarity_params=_key_values(args.similarity_arg, "--similarity-arg"),
        pooling=args.pooling,
        policy=args.policy,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        cache_dir=None if args.no_cache else (args.cache_dir or cache_dir()),
        keep_scores=args.keep_scores,
    )
    out = result.save(args.out)
    for layer in result.config.layers:
        labels = result.labels(layer)
        meta = result.meta["layers"][layer]
        shown = ", ".join(labels[:8]) + (" ..." if len(labels) > 8 else "")
        print(
            f"{layer} ({meta['units']} units, pooling {meta['pooling']}, "
            f"{meta['dead_units']} never active): {shown}"
        )
    probe_meta = result.meta["probe"]
    skipped = len(probe_meta["skipped_unreadable"])
    listed = f", skipped {skipped} unreadable image(s) (listed in dissection.json)"
    print(f"probe: {probe_meta['images']} images{listed if skipped else ''}")
    print(f"written: {out / 'descriptions.csv'} and {out / 'dissection.json'}")
    return 0


# -- discover explain -----------------------------------------------------------------------
def _explain_arguments(parser: argparse.ArgumentParser) -> None:
    from discover.explanation import DEFAULT_THRESHOLD, DEFAULT_TOP

    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files to explain")
    parser.add_argument("--run", required=True, help="training run directory (`discover train`)")
    parser.add_argument(
        "--dissection", help="dissection directory (default: RUN/dissection, `discover dissect`)"
    )
    parser.add_argument("--weights", choices=["best", "last"], default="best")
    parser.add_argument(
        "--policy", choices=["argmax", "sample"], default="argmax", help="LWTA evaluation policy"
    )
    parser.add_argument(
        "--top", type=int, default=DEFAULT_TOP, help="winners listed per layer (0: counts only)"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help="dense layers: a unit is active when |activation| > threshold",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled winners")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument(
        "--allow-stale-dissection",
        action="store_true",
        help="use a dissection made for other weights, layers or U (warns instead of refusing)",
    )


@command(
    "explain",
    arguments=_explain_arguments,
    help="explain predictions through the labelled units that fired",
)
def _explain(args: argparse.Namespace) -> int:
    from pathlib import Path

    from discover.dissection.core import Dissection
    from discover.explanation import explain, find_classifier, print_explanations, read_images
    from discover.nn.lwta import lwta_layers
    from discover.nn.models import activation_sites
    from discover.training.runs import load_run

    run = load_run(args.run, args.weights)
    model = run.model
    folder = Path(args.dissection) if args.dissection else Path(args.run) / "dissection"
    if args.dissection is None and not (folder / "dissection.json").is_file():
        layers = list(lwta_layers(model)) or activation_sites(model)
        classifier = find_classifier(model)
        layers += [classifier[0]] if classifier else []
        raise FileNotFoundError(
            f"run {args.run} has no dissection (looked for {folder / 'dissection.json'}); "
            f"create one with `discover dissect --run {args.run} --layers {' '.join(layers)} "
            f"--probe {run.dataset} --out {folder}` (choose --concepts and "
            "--embedder for your data, see `discover dissect --help`), or pass --dissection DIR"
        )
    dissection = Dissection.load(folder)
    dissection.check_model(model, allow_mismatch=args.allow_stale_dissection, run=args.run)
    images, names, failures = read_images(args.images)
    for path, reason in failures.items():
        print(f"error: cannot read image {path}: {reason}", file=sys.stderr)
    if images:
        explanations = explain(
            model,
            images,
            dissection,
            policy=args.policy,
            threshold=args.threshold,
            top=args.top,
            class_names=run.class_names,
            names=names,
            seed=args.seed,
            allow_mismatch=args.allow_stale_dissection,
        )
        if args.json:
            print(json.dumps([e.to_dict() for e in explanations], indent=2))
        else:
            print_explanations(explanations)
    if failures:
        print(
            f"error: {len(failures)} of {len(args.images)} image(s) could not be read"
            + (f"; explained the other {len(images)}" if images else ""),
            file=sys.stderr,
        )
        return 2
    return 0


# -- discover demo --------------------------------------------------------------------------
def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    from discover.demo import DEMO_DATA

    parser.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    parser.add_argument("--fast", action="store_true", help="CI size: about a minute, rough labels")
    parser.add_argument("--data", choices=list(DEMO_DATA), default="shapes")
    parser.add_argument(
        "--embedder",
        choices=["annotations", "conse"],
        help="concept matrix: ground truth (shapes, the default there) or ConSE (offline)",
    )
    parser.add_argument(
        "--policy", choices=["sample", "argmax"], help="LWTA evaluation policy (default sample)"
    )
    parser.add_argument("--seed", type=int)
    parser.add_argument("--threads", type=int, help="torch threads (default 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


@command(
    "demo",
    arguments=_demo_arguments,
    help="train, dissect and explain a CVN and its dense twin on built-in data; HTML report",
)
def _demo(args: argparse.Namespace) -> int:
    from discover.demo import DemoConfig, run_demo

    config = DemoConfig.preset(
        args.data,
        fast=args.fast,
        out=args.out,
        embedder=args.embedder,
        policy=args.policy,
        seed=args.seed,
        threads=args.threads,
    )
    result = run_demo(config, progress=not args.quiet, log=lambda line: print(line, flush=True))
    print()
    print(result.summary())
    return 0


# -- discover eval-descriptions -------------------------------------------------------------
def _eval_descriptions_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dissection", help="dissection directory (`discover dissect --out`)")
    parser.add_argument(
        "--classes",
        required=True,
        help="class names in class order: a concept set (shapes_classes, imagenet_labels), "
        "a text file (one per line) or a data set name (fashion-mnist)",
    )
    parser.add_argument("--layer", help="the classifier layer (default: the last dissected)")
    parser.add_argument(
        "--embedder",
        help="embedder whose text space scores the matched cosine (the one used to dissect, "
        "e.g. conse); default: that figure is reported as n/a",
    )
    parser.add_argument(
        "--sentence-model",
        default="auto",
        help="auto (mpnet if installed, else MiniLM), mpnet, minilm, a folder, or none",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of both baselines")
    parser.add_argument("--null-repeats", type=int, default=200, help="draws per baseline")
    parser.add_argument("--out", help="where to write the results (default: DISSECTION)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


@command(
    "eval-descriptions",
    arguments=_eval_descriptions_arguments,
    help="final-layer protocol: score a classifier layer's descriptions against its classes",
)
def _eval_descriptions(args: argparse.Namespace) -> int:
    from discover.evaluation.descriptions import evaluate_descriptions

    scores = evaluate_descriptions(
        args.dissection,
        args.classes,
        layer=args.layer,
        embedder=args.embedder,
        sentence_model=args.sentence_model,
        seed=args.seed,
        null_repeats=args.null_repeats,
    )
    path = scores.save(args.out or args.dissection)
    if args.json:
        print(json.dumps(scores.to_dict(), indent=2))
    else:
        print(scores.summary())
        print(f"\nwritten: {path} (+ .csv tables)")
    return 0


# -- discover planted -----------------------------------------------------------------------
def _planted_arguments(parser: argparse.ArgumentParser) -> None:
    from discover.evaluation.planted import VARIANTS, PlantedConfig

    defaults = PlantedConfig()
    parser.add_argument("--probe", default="shapes", help="probe data set (for P)")
    parser.add_argument("--probe-split", default="val")
    parser.add_argument("--probe-root", help="folder of the probe data set, where it needs one")
    parser.add_argument("--probe-arg", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--probe-limit", type=int, help="use the first N probe images")
    parser.add_argument("--concepts", default="shapes", help="concept set name or file")
    parser.add_argument(
        "--embedder", default="annotations", help="annotations, conse, open_clip:ARCH:WEIGHTS"
    )
    parser.add_argument(
        "--similarities", nargs="+", help="similarity functions (default: all registered)"
    )
    parser.add_argument("--similarity-arg", action="append", default=[], metavar="SIM.KEY=VALUE")
    parser.add_argument("--noise", nargs="+", type=float, default=list(defaults.noise))
    parser.add_argument(
        "--variants", nargs="+", choices=list(VARIANTS), default=list(defaults.variants)
    )
    parser.add_argument("--units", type=int, default=defaults.units, help="units per cell")
    parser.add_argument("-U", type=int, default=defaults.U, help="signed_sparse block size")
    parser.add_argument("--active-fraction", type=float, default=defaults.active_fraction)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", help="write planted.csv, planted_ranking.csv, planted.json here")


@command(
    "planted",
    arguments=_planted_arguments,
    help="rank the similarity functions by how often they recover concepts planted in "
    "synthetic neurons",
)
def _planted(args: argparse.Namespace) -> int:
    from discover.data.registry import build_dataset
    from discover.dissection.concepts import load_concepts
    from discover.dissection.embedders import build_embedder
    from discover.evaluation.planted import PlantedConfig, planted_recovery

    params: dict[str, dict] = {}
    for key, value in _key_values(args.similarity_arg, "--similarity-arg").items():
        sim, dot, param = key.partition(".")
        if not dot or not param:
            raise ValueError(f"--similarity-arg expects SIMILARITY.KEY=VALUE, got {key!r}")
        params.setdefault(sim, {})[param] = value
    config = PlantedConfig(
        noise=tuple(args.noise),
        variants=tuple(args.variants),
        units=args.units,
        active_fraction=args.active_fraction,
        U=args.U,
        similarities=tuple(args.similarities or ()),
        similarity_params=params,
        seed=args.seed,
    )
    probe = build_dataset(
        args.probe,
        args.probe_split,
        root=args.probe_root,
        **_key_values(args.probe_arg, "--probe-arg"),
    )
    if args.probe_limit is not None:
        probe = torch.utils.data.Subset(probe, range(min(args.probe_limit, len(probe))))
    concepts = load_concepts(args.concepts)
    embedder = build_embedder(args.embedder)
    P = embedder.concept_matrix(probe, concepts.concepts, batch_size=args.batch_size)
    result = planted_recovery(P, concepts.concepts, config)
    result.meta.update(probe=args.probe, concept_set=concepts.name, embedder=embedder.name)
    print(result.table())
    if args.out:
        print(f"\nwritten: {result.save(args.out)} (+ planted.csv, planted_ranking.csv)")
    return 0


# -- discover sae ---------------------------------------------------------------------------
def _sae_probe_arguments(parser: argparse.ArgumentParser, split: str) -> None:
    parser.add_argument("--run", required=True, help="a training run directory (`discover train`)")
    parser.add_argument("--weights", choices=["best", "last"], default="best")
    parser.add_argument(
        "--probe", default="shapes", help="probe data set: shapes, imagefolder, ..."
    )
    parser.add_argument("--probe-split", default=split)
    parser.add_argument("--probe-root", help="folder of the probe data set, where it needs one")
    parser.add_argument("--probe-arg", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--probe-limit", type=int, help="use the first N probe images")
    parser.add_argument(
        "--policy", choices=["argmax", "sample"], default="argmax", help="LWTA eval policy"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")


def _sae_arguments(parser: argparse.ArgumentParser) -> None:
    from discover.dissection.sae import SITES
    from discover.dissection.similarity import DEFAULT_SIMILARITY, SIMILARITIES

    actions = parser.add_subparsers(dest="sae_action", metavar="ACTION", required=True)
    train = actions.add_parser(
        "train",
        help="train a TopK SAE on a layer's activations over a probe set",
        description="train a TopK SAE on a layer's activations over a probe set (resumable)",
    )
    _sae_probe_arguments(train, "train")
    train.add_argument("--layer", required=True, help="dotted layer name (see `discover layers`)")
    train.add_argument("--k", type=int, required=True, help="latents kept per vector")
    train.add_argument("--expansion", type=int, required=True, help="latents per input feature")
    train.add_argument("--sites", choices=SITES, default="positions", help="what it trains on")
    train.add_argument(
        "--positions-per-image",
        type=int,
        default=16,
        help="positions sampled per image with --sites positions (0: all)",
    )
    train.add_argument("--pooling", default="auto", help="the layer's pooling for dissection")
    train.add_argument("--epochs", type=int, default=20)
    train.add_argument("--batch-size", type=int, default=256)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--aux-coef", type=float, default=1 / 32, help="AuxK weight (0: off)")
    train.add_argument("--out", help="output folder (default RUN/sae/LAYER-kK-xE)")
    train.add_argument("--resume", action="store_true", help="continue the training in --out")

    dissect = actions.add_parser(
        "dissect",
        help="label every latent of a trained SAE with a concept",
        description="label every latent of a trained SAE with a concept (its layer's dissection)",
    )
    _sae_probe_arguments(dissect, "val")
    dissect.add_argument("--sae", required=True, help="SAE folder (`discover sae train`)")
    dissect.add_argument("--concepts", default="20k", help="concept set name or file path")
    dissect.add_argument(
        "--embedder", default="conse", help="conse, annotations, open_clip:ARCH:WEIGHTS, hf:DIR"
    )
    dissect.add_argument(
        "--similarity", default=DEFAULT_SIMILARITY, help=f"one of: {', '.join(SIMILARITIES)}"
    )
    dissect.add_argument("--similarity-arg", action="append", default=[], metavar="KEY=VALUE")
    dissect.add_argument("--batch-size", type=int, default=64)
    dissect.add_argument("--cache-dir", help="cache folder (default: $DISCOVER_CACHE)")
    dissect.add_argument("--no-cache", action="store_true", help="switch the cache off")
    dissect.add_argument("--keep-scores", action="store_true", help="also save the score matrix")
    dissect.add_argument("--out", required=True, help="output directory")


def _sae_probe(args: argparse.Namespace):
    from discover.data.registry import build_dataset

    probe = build_dataset(
        args.probe,
        args.probe_split,
        root=args.probe_root,
        **_key_values(args.probe_arg, "--probe-arg"),
    )
    if args.probe_limit is not None:
        probe = torch.utils.data.Subset(probe, range(min(args.probe_limit, len(probe))))
    return probe


@command(
    "sae",
    arguments=_sae_arguments,
    help="sparse autoencoders: `sae train` one on a layer, `sae dissect` its latents",
)
def _sae(args: argparse.Namespace) -> int:
    from pathlib import Path

    from discover.dissection.core import dissect
    from discover.dissection.embedders import AnnotationEmbedder, cache_dir
    from discover.dissection.sae import SAE, train_sae
    from discover.training.runs import load_run

    model = load_run(args.run, args.weights).model
    if args.sae_action == "train":
        out = args.out or Path(args.run) / "sae" / f"{args.layer}-k{args.k}-x{args.expansion}"
        sae = train_sae(
            model,
            args.layer,
            _sae_probe(args),
            args.k,
            args.expansion,
            out=out,
            sites=args.sites,
            positions_per_image=args.positions_per_image or None,
            pooling=args.pooling,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            aux_coef=args.aux_coef,
            policy=args.policy,
            seed=args.seed,
            device=args.device,
            resume=args.resume,
        )
        c, m = sae.config, sae.config.metrics
        fve = "-" if m["fve"] is None else f"{m['fve']:.3f}"
        print(
            f"SAE of {c.layer}: {c.latents} latents ({c.expansion} x width {c.width}), k {c.k}, "
            f"trained on {c.sites} ({c.training['rows_train']} vectors), pooling {c.pooling}; "
            f"held-out variance explained {fve}, {m['dead_latents']} dead latents"
        )
        print(f"written: {out}")
        return 0
    sae = SAE.load(args.sae)
    embedder = AnnotationEmbedder() if args.embedder == "annotations" else args.embedder
    result = dissect(
        model,
        [sae.layer],
        _sae_probe(args),
        args.concepts,
        embedder,
        args.similarity,
        similarity_params=_key_values(args.similarity_arg, "--similarity-arg"),
        policy=args.policy,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        cache_dir=None if args.no_cache else (args.cache_dir or cache_dir()),
        keep_scores=args.keep_scores,
        sae=sae,
    )
    out = result.save(args.out)
    labels = result.labels(sae.layer)
    shown = ", ".join(labels[:8]) + (" ..." if len(labels) > 8 else "")
    print(f"{sae.layer} SAE ({len(labels)} latents, k {sae.config.k}): {shown}")
    print(f"written: {out / 'descriptions.csv'} and {out / 'dissection.json'}")
    return 0


# -- entry point -----------------------------------------------------------------------------
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
    debug = args.debug or bool(os.environ.get("DISCOVER_DEBUG"))
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the one error boundary of the command line
        if debug:
            raise
        message = _user_error(exc)
        if message is not None:
            print(f"error: {message}", file=sys.stderr)
            return 2
        print(
            f"internal error: {type(exc).__name__}: {exc}\n"
            "This is a bug in discover, not a mistake of yours; rerun with --debug for the "
            "traceback and report it.",
            file=sys.stderr,
        )
        return 1


def _user_error(exc: BaseException) -> str | None:
    """The one-line message for a mistake or a condition the user can fix; ``None`` for bugs."""
    import errno

    if isinstance(exc, (ValueError, LookupError)) and not isinstance(exc, UnicodeError):
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
