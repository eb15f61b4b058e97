"""The ``discover`` command line: a thin layer over the Python API.

Every subcommand is a pair of functions registered with :func:`command`: one adds its
arguments, the other parses them, calls the public API and prints the result. The commands
live by family (``models``, ``train``, ``dissect``, ``sae``, ``evaluate``, ``explain``,
``demo``), the options they share in :mod:`discover.cli.common`. The API holds every default:
an option the user does not give is ``None`` and is not passed, so the API's default applies,
and help texts read those defaults from the API's signatures
(:func:`~discover.cli.common.api_default`). User mistakes (unknown names, bad shapes, missing
files) end in a one-line ``error:`` message and exit status 2, with the API parameters it
names shown as the command's flags (:data:`_FLAGS`); set ``DISCOVER_DEBUG=1`` to see the
traceback instead.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Callable, Collection, Sequence

from discover._utils import check_writable

# The command modules register their commands on import.
from discover.cli import demo, dissect, evaluate, explain, models, sae, train  # noqa: F401
from discover.cli.common import COMMANDS, Command, command, say
from discover.errors import DiscoverError, InputError
from discover.version import __version__

__all__ = ["main", "command", "say"]

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

# The order ``discover --help`` lists the commands in; commands registered elsewhere follow.
_HELP_ORDER = (
    "models",
    "convert",
    "sparsity",
    "train",
    "evaluate",
    "layers",
    "dissect",
    "merge",
    "export",
    "explain",
    "demo",
    "train-clip",
    "eval-descriptions",
    "planted",
    "sae",
)


# -- the parser ------------------------------------------------------------------------------
def _help_position(cmd: Command) -> int:
    return _HELP_ORDER.index(cmd.name) if cmd.name in _HELP_ORDER else len(_HELP_ORDER)


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
    """The ``discover`` parser with every registered subcommand."""
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
    for cmd in sorted(COMMANDS.values(), key=_help_position):
        sub_parser = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(sub_parser)
        sub_parser.set_defaults(_run=cmd.run, _flags=frozenset(_option_strings(sub_parser)))
    return parser


# -- the entry point -------------------------------------------------------------------------
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


# -- checks before any work ------------------------------------------------------------------
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


# -- errors ----------------------------------------------------------------------------------
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
