"""``discover evaluate``, ``eval-descriptions`` and ``planted``: how good a run is, how good
a dissection's descriptions are, and which similarity function recovers planted concepts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from discover._utils import check_writable
from discover.cli.common import (
    PROBE_OPTIONS,
    add_api_options,
    add_key_values,
    add_policy_option,
    add_probe_arguments,
    add_weights_option,
    api_default,
    command,
    given,
    key_values,
    probe_from_args,
    say,
)
from discover.dissection.similarity import nest_similarity_params
from discover.errors import InputError
from discover.evaluation.classification import EVAL_FILE, evaluate_run
from discover.evaluation.descriptions import DescriptionScores, evaluate_descriptions
from discover.evaluation.groundtruth import (
    REPORT_CSV,
    REPORT_JSON,
    GroundTruthReport,
    evaluate_groundtruth,
)
from discover.evaluation.localization import (
    LOCALIZATION_CSV,
    LOCALIZATION_JSON,
    LocalizationReport,
    evaluate_localization,
)
from discover.evaluation.planted import VARIANTS, PlantedConfig, planted_recovery_on_probe
from discover.training.runs import load_run

__all__: list[str] = []  # the commands register themselves with discover.cli.command


def _check_default_output(folder: str, what: str, option: str) -> None:
    """A command that writes into an input folder by default: refuse early if it cannot."""
    if Path(folder).is_dir():
        try:
            check_writable(folder, what)
        except InputError as error:
            raise InputError(f"{error}; pass {option} to write the result elsewhere") from None


# -- discover evaluate -----------------------------------------------------------------------
def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="training run directory (from `discover train`)")
    parser.add_argument("--split", help=api_default(evaluate_run, "split"))
    parser.add_argument(
        "--data-root",
        help="where the data set's files are (default: the folder the run was trained from)",
    )
    add_weights_option(parser, evaluate_run)
    add_policy_option(parser, evaluate_run)
    parser.add_argument(
        "--samples",
        type=int,
        help="stochastic passes averaged under --policy sample "
        f"({api_default(evaluate_run, 'samples')}; reference: 6)",
    )
    add_api_options(parser, evaluate_run, seed=int, batch_size=int)
    parser.add_argument("--limit", type=int, help="evaluate the first N images only")
    add_api_options(parser, evaluate_run, device=str)
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
        **given(
            args, "split", "weights", "policy", "samples", "seed", "batch_size", "limit", "device"
        ),
        **given(args, "data_root"),
        progress=True,  # a terminal shows progress; the API's default is quiet
    )
    target = result.save(args.json)
    say(result.summary())
    say(f"\nwritten: {target}")
    return 0


# -- discover eval-descriptions --------------------------------------------------------------
def _add_protocol_arguments(parser: argparse.ArgumentParser) -> None:
    """What the descriptions are scored against: classes, ground truth, pixel masks."""
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


def _add_scoring_arguments(parser: argparse.ArgumentParser) -> None:
    """How they are scored: the layer, the text models, the baselines."""
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
        f"({api_default(evaluate_descriptions, 'sentence_model')})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        help="seed of both baselines and of the ground-truth fit / held-out split "
        f"({api_default(evaluate_descriptions, 'seed')})",
    )
    parser.add_argument(
        "--null-repeats",
        type=int,
        help=f"draws per baseline ({api_default(evaluate_descriptions, 'null_repeats')})",
    )
    parser.add_argument(
        "--bar",
        type=float,
        help="with --ground-truth: a unit is monosemantic when its best concept's AUPRC is "
        f"above this ({api_default(evaluate_groundtruth, 'bar')})",
    )


def _eval_descriptions_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dissection", help="dissection directory (`discover dissect --out`)")
    _add_protocol_arguments(parser)
    add_probe_arguments(parser)
    _add_scoring_arguments(parser)
    parser.add_argument("--out", help="where to write the results (default: DISSECTION)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _check_protocols(args: argparse.Namespace) -> None:
    """At least one protocol, and no option that only another protocol uses."""
    if args.classes is None and not args.ground_truth and not args.localization:
        raise InputError(
            "give --classes (the final-layer protocol: unit k should be class k), "
            "--ground-truth (scores against the probe set's annotations), --localization "
            "(IoU with the probe's pixel masks), or several"
        )
    stray = [flag for dest, flag in PROBE_OPTIONS.items() if getattr(args, dest) is not None]
    if stray and not (args.ground_truth or args.localization):
        raise InputError(f"{', '.join(stray)}: only used with --ground-truth or --localization")
    if args.bar is not None and not args.ground_truth:
        raise InputError("--bar: only used with --ground-truth")
    if args.localization and args.run is None:
        raise InputError("--localization: give --run, the training run the dissected model is")
    if args.run is not None and not args.localization:
        raise InputError("--run: only used with --localization")


def _ground_truth(args: argparse.Namespace) -> GroundTruthReport:
    options = given(args, "seed", "bar")
    if args.layer is not None:
        options["layers"] = [args.layer]
    probe = probe_from_args(args)
    return evaluate_groundtruth(args.dissection, probe, save=args.out is None, **options)


def _localization(args: argparse.Namespace) -> LocalizationReport:
    return evaluate_localization(
        load_run(args.run).model,
        args.dissection,
        probe_from_args(args),
        save=args.out is None,
        progress=True,
        **({"layers": [args.layer]} if args.layer is not None else {}),
        **given(args, "seed"),
    )


def _show_descriptions(scores: DescriptionScores, args: argparse.Namespace) -> dict[str, Any]:
    """Save the class-protocol scores; print them (unless ``--json``)."""
    path = scores.save(args.out)
    if not args.json:
        say(scores.summary())
        say(f"\nwritten: {path} (+ .csv tables)")
    return scores.to_dict()


def _show_ground_truth(
    truth: GroundTruthReport, args: argparse.Namespace, first: bool
) -> dict[str, Any]:
    """Save the ground-truth report where asked (it is saved already otherwise); print it."""
    path = truth.save(args.out) if args.out is not None else truth.folder / REPORT_JSON
    if not args.json:
        say("" if first else "\n", end="")
        say(truth.table())
        dropped = truth.meta["dropped_concepts"]
        if dropped:
            say(
                f"not scored ({len(dropped)} concepts absent from, or on every image of, "
                f"the probe): {', '.join(dropped)}"
            )
        say(f"\nwritten: {path} and {path.parent / REPORT_CSV}")
    return truth.to_dict()


def _show_localization(
    located: LocalizationReport, args: argparse.Namespace, first: bool
) -> dict[str, Any]:
    """Save the localization report where asked (it is saved already otherwise); print it."""
    path = located.save(args.out) if args.out is not None else located.folder / LOCALIZATION_JSON
    if not args.json:
        say("" if first else "\n", end="")
        say(located.table())
        say(f"\nwritten: {path} and {path.parent / LOCALIZATION_CSV}")
    return located.to_dict()


@command(
    "eval-descriptions",
    arguments=_eval_descriptions_arguments,
    help="score descriptions: a classifier layer's against its classes (--classes), every "
    "layer's against the probe's ground truth (--ground-truth), where units fire against "
    "its pixel masks (--localization)",
)
def _eval_descriptions(args: argparse.Namespace) -> int:
    _check_protocols(args)
    if args.out is None:
        _check_default_output(args.dissection, "the dissection folder", "--out DIR")
    # ground truth first: its probe check is quick, the sentence model is not
    truth = _ground_truth(args) if args.ground_truth else None
    located = _localization(args) if args.localization else None
    scores = None
    if args.classes is not None:
        scores = evaluate_descriptions(
            args.dissection,
            args.classes,
            **given(args, "layer", "embedder", "sentence_model", "seed", "null_repeats"),
        )
    output: dict[str, Any] = {}
    if scores is not None:
        output["descriptions"] = _show_descriptions(scores, args)
    if truth is not None:
        output["ground_truth"] = _show_ground_truth(truth, args, first=not output)
    if located is not None:
        output["localization"] = _show_localization(located, args, first=not output)
    if args.json:
        say(json.dumps(output if len(output) > 1 else next(iter(output.values())), indent=2))
    return 0


# -- discover planted ------------------------------------------------------------------------
def _planted_arguments(parser: argparse.ArgumentParser) -> None:
    add_probe_arguments(parser)
    parser.add_argument(
        "--concepts",
        help=f"concept set name or file ({api_default(planted_recovery_on_probe, 'concepts')})",
    )
    parser.add_argument(
        "--embedder",
        help="annotations, conse, open_clip:ARCH:WEIGHTS "
        f"({api_default(planted_recovery_on_probe, 'embedder')})",
    )
    parser.add_argument(
        "--similarities", nargs="+", help="similarity functions (default: all registered)"
    )
    add_key_values(
        parser,
        "--similarity-arg",
        "keyword of one similarity function (JSON value), e.g. soft_wpmi.top_k=50",
        metavar="SIM.KEY=VALUE",
    )
    parser.add_argument("--noise", nargs="+", type=float, help=api_default(PlantedConfig, "noise"))
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        help=api_default(PlantedConfig, "variants"),
    )
    parser.add_argument(
        "--units", type=int, help=f"units per cell ({api_default(PlantedConfig, 'units')})"
    )
    parser.add_argument(
        "-U", type=int, help=f"signed_sparse block size ({api_default(PlantedConfig, 'U')})"
    )
    add_api_options(parser, PlantedConfig, active_fraction=float, seed=int)
    add_api_options(parser, planted_recovery_on_probe, batch_size=int)
    parser.add_argument("--out", help="write planted.csv, planted_ranking.csv, planted.json here")


@command(
    "planted",
    arguments=_planted_arguments,
    help="rank the similarity functions by how often they recover concepts planted in "
    "synthetic neurons",
)
def _planted(args: argparse.Namespace) -> int:
    options = given(args, "concepts", "embedder", "batch_size", "similarities", "noise", "variants")
    options.update(given(args, "units", "U", "active_fraction", "seed"))
    if args.similarity_arg:
        options["similarity_params"] = nest_similarity_params(
            key_values(args.similarity_arg, "--similarity-arg")
        )
    result = planted_recovery_on_probe(probe_from_args(args), **options)
    say(result.table())
    if args.out:
        say(f"\nwritten: {result.save(args.out)} (+ planted.csv, planted_ranking.csv)")
    return 0
