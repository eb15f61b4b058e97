"""``discover dissect`` and ``merge``: every unit of a model's layers labelled, in one process
or in shards; the dissection options (:func:`add_dissect_options`) ``sae dissect`` shares."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from discover.cli.common import (
    add_api_options,
    add_key_values,
    add_model_options,
    add_policy_option,
    add_probe_arguments,
    add_weights_option,
    api_default,
    command,
    given,
    key_values,
    label_defaults_text,
    model_from_args,
    number_or_none,
    probe_from_args,
    say,
)
from discover.dissection.core import dissect
from discover.dissection.result import Dissection
from discover.dissection.shards import dissect_distributed, dissect_shard, merge_shards
from discover.dissection.similarity import SIMILARITIES
from discover.errors import InputError
from discover.training.runs import load_run

__all__ = ["add_dissect_options", "dissect_options", "print_dissection"]


# -- the options of discover.dissect ---------------------------------------------------------
def _add_concept_options(parser: argparse.ArgumentParser) -> None:
    """The concepts, their embedder and the similarity that matches them to units."""
    parser.add_argument(
        "--concepts", help=f"concept set name or file path ({api_default(dissect, 'concepts')})"
    )
    parser.add_argument(
        "--embedder",
        help="conse, annotations, open_clip:ARCH:WEIGHTS, hf:DIR "
        f"({api_default(dissect, 'embedder')})",
    )
    parser.add_argument(
        "--similarity",
        help=f"one of: {', '.join(SIMILARITIES)} (default: per embedder kind, "
        f"{label_defaults_text()}; the paper's is soft_wpmi)",
    )
    add_key_values(
        parser, "--similarity-arg", "keyword of the similarity function (JSON value), repeatable"
    )


def _add_recording_options(parser: argparse.ArgumentParser) -> None:
    """How the activations are recorded, and where the cache is."""
    add_policy_option(parser, dissect, "LWTA eval policy while recording")
    add_api_options(parser, dissect, seed=int, batch_size=int, device=str)
    parser.add_argument(
        "--cache-dir",
        help=f"cache folder ({api_default(dissect, 'cache_dir')}: $DISCOVER_CACHE or "
        "~/.cache/discover)",
    )
    parser.add_argument(
        "--no-cache", action="store_true", default=None, help="switch the cache off"
    )


def _add_label_options(parser: argparse.ArgumentParser) -> None:
    """What is kept of the scores, and when a unit's label is significant enough to show."""
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
        f"skips them; {api_default(dissect, 'null_repeats')})",
    )
    parser.add_argument(
        "--significance-similarity",
        help="the similarity function that judges each label for that significance "
        f"({api_default(dissect, 'significance_similarity')}; 'same': --similarity's)",
    )
    parser.add_argument(
        "--abstain-p",
        help="show a unit unlabelled when its label's p_null is above this; 'none': never "
        f"(default: per embedder kind, {label_defaults_text('abstain_p')})",
    )
    parser.add_argument(
        "--min-match",
        help="show a unit unlabelled when its label's match (Pearson r with the unit over the "
        f"probe) is below this; 'none': never (default: per embedder kind, "
        f"{label_defaults_text('min_match')})",
    )


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """How the dissection runs: non-finite activations, shards, streaming, its folder."""
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


def add_dissect_options(parser: argparse.ArgumentParser) -> None:
    """The options of :func:`~discover.dissection.core.dissect` (``dissect``, ``sae dissect``)."""
    _add_concept_options(parser)
    _add_recording_options(parser)
    _add_label_options(parser)
    _add_run_options(parser)


def dissect_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keywords of :func:`~discover.dissection.core.dissect` the user gave."""
    options = given(
        args, "concepts", "embedder", "similarity", "policy", "seed", "batch_size", "device"
    )
    options.update(given(args, "pooling", "keep_scores", "null_repeats", "allow_nonfinite"))
    if args.significance_similarity is not None:
        same = args.significance_similarity == "same"
        options["significance_similarity"] = None if same else args.significance_similarity
    if args.similarity_arg:
        options["similarity_params"] = key_values(args.similarity_arg, "--similarity-arg")
    if args.abstain_p is not None:
        options["abstain_p"] = number_or_none(args.abstain_p, "--abstain-p")
    if args.min_match is not None:
        options["min_match"] = number_or_none(args.min_match, "--min-match")
    if args.stream is not None:
        options["stream"] = {"on": True, "off": False}.get(args.stream, args.stream)
    if args.no_cache:
        options["cache_dir"] = None
    elif args.cache_dir is not None:
        options["cache_dir"] = args.cache_dir
    return options


def print_dissection(result: Dissection, out: Path) -> None:
    """Each layer's labels in a line, the probe, and the files written."""
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


# -- discover dissect ------------------------------------------------------------------------
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
    add_model_options(parser)
    add_weights_option(parser, load_run, "which weights of --run")
    parser.add_argument(
        "--layers",
        nargs="+",
        required=True,
        help="dotted layer names, glob patterns (blocks.*.mlp.act), or lwta (every LWTA layer)",
    )
    add_probe_arguments(parser)
    parser.add_argument(
        "--pooling",
        help=f"auto, avg, max, cls, mean, none ({api_default(dissect, 'pooling')})",
    )
    parser.add_argument(
        "--sae",
        help="a TopK SAE folder (`discover sae train`) of the one layer in --layers: label "
        "its latents instead of the layer's units",
    )
    add_dissect_options(parser)


@command(
    "dissect",
    arguments=_dissect_arguments,
    help="label every unit of the chosen layers with a concept",
)
def _dissect(args: argparse.Namespace) -> int:
    model = (
        load_run(args.run, **given(args, "weights")).model if args.run else model_from_args(args)
    )
    options = {**dissect_options(args), **given(args, "sae")}
    sharded = args.shard is not None or int(os.environ.get("WORLD_SIZE", "1")) > 1
    if sharded:  # shards record; the merge scores (streamed, with the cache of no use)
        if "sae" in options:
            raise InputError("--shard and torchrun dissect a model's layers, not an SAE's latents")
        for unused in ("cache_dir", "stream"):
            options.pop(unused, None)
    if args.shard is not None:
        folder = dissect_shard(model, args.layers, probe_from_args(args), args.out, args.shard,
                               **options)  # fmt: skip
        say(f"shard {args.shard} written: {folder}; merge all shards with "
            f"`discover merge SHARD... --out DIR`")  # fmt: skip
        return 0
    if sharded:
        result = dissect_distributed(model, args.layers, probe_from_args(args), args.out, **options)
        if result is None:  # not process 0: it recorded its shard
            return 0
        out = Path(args.out)
    else:
        result = dissect(model, args.layers, probe_from_args(args), **options)
        out = result.save(args.out)
    print_dissection(result, out)
    return 0


# -- discover merge --------------------------------------------------------------------------
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
    print_dissection(result, Path(args.out))
    return 0
