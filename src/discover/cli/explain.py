"""``discover explain``: a run's predictions on image files, through the labelled units that
fired."""

from __future__ import annotations

import argparse
import json
import sys

from discover.cli.common import (
    add_policy_option,
    add_weights_option,
    api_default,
    command,
    given,
    label_defaults_text,
    number_or_none,
    say,
)
from discover.dissection.result import Dissection
from discover.dissection.storage import default_dissection_dir
from discover.evaluation.localization import iou_labelled
from discover.explanation import explain, explain_run, print_explanations

__all__: list[str] = []  # the command registers itself with discover.cli.command


def _add_label_arguments(parser: argparse.ArgumentParser) -> None:
    """Which label each listed unit shows: global, conditioned on the image, or by IoU."""
    parser.add_argument(
        "--embedder",
        help="condition each unit's label on the image: the vision-language model that "
        "looks at it ('dissection': the one the dissection was made with, or a spec such as "
        "open_clip:ARCH:WEIGHTS); default: global labels only",
    )
    parser.add_argument(
        "--candidates",
        type=int,
        help=f"candidate labels per unit to condition on ({api_default(explain, 'candidates')})",
    )
    parser.add_argument(
        "--min-percentile",
        help="show a listed unit unlabelled when it fires on the image below this share of "
        "the probe; 'none': never (default: per embedder kind, "
        f"{label_defaults_text('min_percentile')})",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument(
        "--labels",
        choices=["text", "iou"],
        help="text (unless given): the dissection's labels (image-text similarity); iou: each unit's "
        "best-IoU concept from the dissection's saved localization (Network Dissection; "
        "`discover eval-descriptions DISSECTION --localization` first)",
    )


def _explain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files to explain")
    parser.add_argument("--run", required=True, help="training run directory (`discover train`)")
    parser.add_argument(
        "--dissection",
        help=f"dissection directory (default: {default_dissection_dir('RUN')}, `discover dissect`)",
    )
    add_weights_option(parser, explain_run)
    add_policy_option(parser, explain)
    parser.add_argument(
        "--top",
        type=int,
        help=f"winners listed per layer, 0: counts only ({api_default(explain, 'top')})",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        help="dense layers: a unit is active when |activation| > threshold "
        f"({api_default(explain, 'threshold')})",
    )
    parser.add_argument(
        "--seed", type=int, help=f"seed of the sampled winners ({api_default(explain, 'seed')})"
    )
    _add_label_arguments(parser)
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
    options = given(args, "weights", "allow_mismatch", "policy", "top", "threshold", "seed")
    options.update(given(args, "embedder", "candidates"))
    if args.min_percentile is not None:
        options["min_percentile"] = number_or_none(args.min_percentile, "--min-percentile")
    result = explain_run(args.run, args.images, dissection, **options)
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
