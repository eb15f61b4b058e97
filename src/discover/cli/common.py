"""What the commands share: their registry, printing, defaults read from the API, and the
options that several commands take (a model by name, a probe set, an LWTA policy, ...)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from discover._utils import printable
from discover.data.registry import build_probe
from discover.dissection.labels import LABEL_DEFAULTS
from discover.errors import InputError
from discover.nn.lwta import EVAL_POLICIES
from discover.nn.models import create_model

__all__ = [
    "COMMANDS",
    "PROBE_OPTIONS",
    "Command",
    "add_api_options",
    "add_key_values",
    "add_model_arguments",
    "add_model_options",
    "add_policy_option",
    "add_probe_arguments",
    "add_quiet_option",
    "add_weights_option",
    "api_default",
    "command",
    "given",
    "key_values",
    "label_defaults_text",
    "model_from_args",
    "model_options",
    "number_or_none",
    "probe_from_args",
    "say",
]


# -- the commands ----------------------------------------------------------------------------
@dataclass
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


COMMANDS: dict[str, Command] = {}


def command(
    name: str,
    help: str,
    arguments: Callable[[argparse.ArgumentParser], None],  # noqa: A002
) -> Callable:
    """Register ``run(args) -> exit status`` as subcommand ``name``; ``arguments`` adds its flags."""

    def decorator(run: Callable[[argparse.Namespace], int | None]):
        if name in COMMANDS:
            raise InputError(f"a discover subcommand named {name!r} already exists")
        COMMANDS[name] = Command(name, help, arguments, run)
        return run

    return decorator


def say(*values: Any, file: Any = None, end: str = "\n", flush: bool = False) -> None:
    """``print`` for the command line: user-supplied text in a message (concept and class
    names, labels, file names) is shown, never obeyed as terminal control codes."""
    print(printable(" ".join(str(v) for v in values)), file=file, end=end, flush=flush)


# -- reading the arguments -------------------------------------------------------------------
def api_default(api: Callable, name: str) -> str:
    """``"default: X"`` for a help text, ``X`` the default of ``api``'s parameter ``name``
    read from its signature: help and behaviour cannot disagree."""
    value = inspect.signature(api).parameters[name].default
    if value is inspect.Parameter.empty or isinstance(value, type(dataclasses.MISSING)):
        raise TypeError(f"{api.__qualname__}: parameter {name} has no default")  # a bug
    if isinstance(value, (list, tuple)):
        value = " ".join(str(v) for v in value)
    return f"default: {value}".replace("%", "%%")


def label_defaults_text(field: str = "similarity") -> str:
    """``"annotations: cos, vlm: corr"``: a label default of every embedder kind."""
    return ", ".join(f"{kind}: {getattr(d, field)}" for kind, d in LABEL_DEFAULTS.items())


def number_or_none(text: str, flag: str) -> float | None:
    """``"0.05"`` -> 0.05 and ``"none"`` -> ``None``: a threshold that can be switched off."""
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{flag}: expected a number or 'none', got {text!r}") from None
    return value


def given(args: argparse.Namespace, *names: str, **renamed: str) -> dict[str, Any]:
    """The options the user gave, by API parameter name: ``names`` are options whose
    destination is the parameter's name, ``renamed`` maps parameter -> destination. An
    option not given is ``None`` and left out, so the API's default applies."""
    pairs = [(n, n) for n in names] + list(renamed.items())
    return {p: getattr(args, d) for p, d in pairs if getattr(args, d, None) is not None}


def key_values(pairs: Sequence[str] | None, flag: str) -> dict:
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


# -- options several commands take -----------------------------------------------------------
def add_key_values(
    parser: argparse.ArgumentParser, flag: str, help_text: str, metavar: str = "KEY=VALUE"
) -> None:
    """A repeatable ``flag KEY=VALUE`` option, read with :func:`key_values`."""
    parser.add_argument(flag, action="append", default=None, metavar=metavar, help=help_text)


def add_api_options(parser: argparse.ArgumentParser, api: Callable, **types: type) -> None:
    """``--name`` of type ``types[name]`` for parameters of ``api``, their help the API's
    default (``seed=int, batch_size=int`` adds ``--seed`` and ``--batch-size``)."""
    for name, kind in types.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, help=api_default(api, name))


def add_policy_option(
    parser: argparse.ArgumentParser, api: Callable, about: str = "LWTA evaluation policy"
) -> None:
    """``--policy``: how the LWTA layers pick their winners in ``api``."""
    parser.add_argument(
        "--policy", choices=EVAL_POLICIES, help=f"{about} ({api_default(api, 'policy')})"
    )


def add_weights_option(parser: argparse.ArgumentParser, api: Callable, about: str = "") -> None:
    """``--weights best|last``: which weights of a training run ``api`` loads."""
    default = api_default(api, "weights")
    help_text = f"{about} ({default})" if about else default
    parser.add_argument("--weights", choices=["best", "last"], help=help_text)


def add_quiet_option(parser: argparse.ArgumentParser, help_text: str = "no progress bars") -> None:
    """``--quiet``: the API's ``progress=False``."""
    parser.add_argument(
        "--quiet", dest="progress", action="store_false", default=None, help=help_text
    )


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The keywords of :func:`~discover.nn.models.create_model` (read by :func:`model_options`)."""
    parser.add_argument(
        "-U",
        type=int,
        default=None,
        help=f"competitors per LWTA block, 1 = dense ({api_default(create_model, 'U')})",
    )
    parser.add_argument("--num-classes", type=int, default=None)
    parser.add_argument("--checkpoint", default=None, help="local weights file")
    add_key_values(
        parser, "--model-arg", "extra keyword for the model builder (JSON value), repeatable"
    )


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """A model name and its options (read by :func:`model_from_args`)."""
    parser.add_argument(
        "model", help="model name: small_resnet, small_vit, any timm name, or torchvision:<name>"
    )
    add_model_options(parser)


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keywords of :func:`~discover.nn.models.create_model` the user gave."""
    return {
        **given(args, "U", "num_classes", "checkpoint"),
        **key_values(args.model_arg, "--model-arg"),
    }


def model_from_args(args: argparse.Namespace):
    """The model named by :func:`add_model_arguments`'s options."""
    return create_model(args.model, **model_options(args))


# Probe option (argparse dest) -> its flag: what :func:`add_probe_arguments` adds.
PROBE_OPTIONS = {
    "probe": "--probe",
    "probe_split": "--probe-split",
    "probe_root": "--probe-root",
    "probe_arg": "--probe-arg",
    "probe_limit": "--probe-limit",
}


def add_probe_arguments(parser: argparse.ArgumentParser, split: str | None = None) -> None:
    """The options of :func:`~discover.data.registry.build_probe` (read by
    :func:`probe_from_args`); ``split``: the help's default split, where the command's is not
    the API's."""
    parser.add_argument(
        "--probe",
        default=None,
        help="probe data set: shapes, fashion-mnist, imagefolder, cifar100, ... "
        f"({api_default(build_probe, 'name')})",
    )
    parser.add_argument(
        "--probe-split",
        default=None,
        help=f"data set split ({split or api_default(build_probe, 'split')})",
    )
    parser.add_argument("--probe-root", help="folder of the probe data set, where it needs one")
    add_key_values(
        parser, "--probe-arg", "probe data set keyword (JSON value), e.g. n=2000, repeatable"
    )
    parser.add_argument("--probe-limit", type=int, help="use the first N probe images")


def probe_from_args(args: argparse.Namespace, **unless_given: Any):
    """:func:`~discover.data.registry.build_probe` with the probe options the user gave
    (``unless_given``: API values for the options not given)."""
    options = {
        **unless_given,
        **given(args, name="probe", split="probe_split", root="probe_root", limit="probe_limit"),
    }
    return build_probe(**options, **key_values(args.probe_arg, "--probe-arg"))
