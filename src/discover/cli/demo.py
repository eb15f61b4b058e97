"""``discover demo``: the whole pipeline on built-in data, ending in an HTML report."""

from __future__ import annotations

import argparse

from discover.cli.common import (
    add_api_options,
    add_policy_option,
    add_quiet_option,
    api_default,
    command,
    given,
    say,
)
from discover.demo import DEMO_DATA, DemoConfig, run_demo

__all__: list[str] = []  # the command registers itself with discover.cli.command


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help=f"output directory ({api_default(DemoConfig, 'out')})")
    parser.add_argument(
        "--fast",
        action="store_true",
        default=None,
        help="CI size: about a minute, rough labels",
    )
    parser.add_argument(
        "--data", choices=list(DEMO_DATA), help=api_default(DemoConfig.preset, "data")
    )
    parser.add_argument(
        "--embedder",
        choices=["annotations", "shapes-clip", "conse"],
        help="concept matrix: ground truth (shapes, the default there), the Shapes world's "
        "small CLIP (shapes; trained once, about 20 min, then cached) or ConSE (offline)",
    )
    add_policy_option(parser, DemoConfig)
    add_api_options(parser, DemoConfig, seed=int)
    parser.add_argument(
        "--threads", type=int, help=f"torch threads ({api_default(DemoConfig, 'threads')})"
    )
    add_quiet_option(parser)


@command(
    "demo",
    arguments=_demo_arguments,
    help="train, dissect and explain a CVN and its dense twin on built-in data; HTML report",
)
def _demo(args: argparse.Namespace) -> int:
    config = DemoConfig.preset(
        **given(args, "data", "fast", "out", "embedder", "policy", "seed", "threads")
    )
    result = run_demo(config, **given(args, "progress"), log=lambda line: say(line, flush=True))
    say()
    say(result.summary())
    return 0
