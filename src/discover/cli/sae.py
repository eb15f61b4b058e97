"""``discover sae train`` and ``sae dissect``: a TopK sparse autoencoder on a layer of a run,
and its latents labelled."""

from __future__ import annotations

import argparse

from torch import nn

from discover.cli.common import (
    add_api_options,
    add_policy_option,
    add_probe_arguments,
    add_weights_option,
    api_default,
    command,
    given,
    probe_from_args,
    say,
)
from discover.cli.dissect import add_dissect_options, dissect_options
from discover.dissection.core import dissect
from discover.dissection.sae import PROBE_SPLIT, SAE, SITES, default_sae_dir, train_sae
from discover.training.runs import load_run

__all__: list[str] = []  # the command registers itself with discover.cli.command


def _add_run_and_probe(parser: argparse.ArgumentParser, split: str | None = None) -> None:
    """The training run whose layer it is, and the probe set (both actions)."""
    parser.add_argument("--run", required=True, help="a training run directory (`discover train`)")
    add_weights_option(parser, load_run)
    add_probe_arguments(parser, split)


def _add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """``sae train``: the options of :func:`~discover.dissection.sae.train_sae`."""
    _add_run_and_probe(parser, f"default: {PROBE_SPLIT}")
    add_policy_option(parser, train_sae, "LWTA eval policy while recording")
    add_api_options(parser, train_sae, seed=int, device=str)
    parser.add_argument("--layer", required=True, help="dotted layer name (see `discover layers`)")
    parser.add_argument("--k", type=int, required=True, help="latents kept per vector")
    parser.add_argument("--expansion", type=int, required=True, help="latents per input feature")
    parser.add_argument(
        "--sites", choices=SITES, help=f"what it trains on ({api_default(train_sae, 'sites')})"
    )
    parser.add_argument(
        "--positions-per-image",
        type=int,
        help="positions sampled per image with --sites positions, 0: all "
        f"({api_default(train_sae, 'positions_per_image')})",
    )
    parser.add_argument(
        "--pooling",
        help=f"the layer's pooling for dissection ({api_default(train_sae, 'pooling')})",
    )
    add_api_options(parser, train_sae, epochs=int, batch_size=int, lr=float)
    parser.add_argument(
        "--aux-coef",
        type=float,
        help=f"AuxK weight, 0: off ({api_default(train_sae, 'aux_coef')})",
    )
    parser.add_argument(
        "--out", help=f"output folder (default: {default_sae_dir('RUN', 'LAYER', 'K', 'E')})"
    )
    parser.add_argument(
        "--resume", action="store_true", default=None, help="continue the training in --out"
    )


def _add_dissect_arguments(parser: argparse.ArgumentParser) -> None:
    """``sae dissect``: a trained SAE and the options of :func:`~discover.dissection.core.dissect`."""
    _add_run_and_probe(parser)
    parser.add_argument("--sae", required=True, help="SAE folder (`discover sae train`)")
    add_dissect_options(parser)


def _sae_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="sae_action", metavar="ACTION", required=True)
    _add_train_arguments(
        actions.add_parser(
            "train",
            help="train a TopK SAE on a layer's activations over a probe set",
            description="train a TopK SAE on a layer's activations over a probe set (resumable)",
        )
    )
    _add_dissect_arguments(
        actions.add_parser(
            "dissect",
            help="label every latent of a trained SAE with a concept",
            description="label every latent of a trained SAE with a concept (its layer's "
            "dissection)",
        )
    )


@command(
    "sae",
    arguments=_sae_arguments,
    help="sparse autoencoders: `sae train` one on a layer, `sae dissect` its latents",
)
def _sae(args: argparse.Namespace) -> int:
    model = load_run(args.run, **given(args, "weights")).model
    if args.sae_action == "train":
        return _train_sae(model, args)
    return _dissect_sae(model, args)


def _train_sae(model: nn.Module, args: argparse.Namespace) -> int:
    """``sae train``: fit it, print its quality."""
    out = args.out or default_sae_dir(args.run, args.layer, args.k, args.expansion)
    options = given(args, "sites", "pooling", "epochs", "batch_size", "lr", "aux_coef")
    options.update(given(args, "policy", "seed", "device", "resume"))
    if args.positions_per_image is not None:  # 0 on the command line: every position
        options["positions_per_image"] = args.positions_per_image or None
    probe = probe_from_args(args, split=PROBE_SPLIT)
    sae = train_sae(model, args.layer, probe, args.k, args.expansion, out=out, **options)
    c, m = sae.config, sae.config.metrics
    fve = "-" if m["fve"] is None else f"{m['fve']:.3f}"
    say(
        f"SAE of {c.layer}: {c.latents} latents ({c.expansion} x width {c.width}), k {c.k}, "
        f"trained on {c.sites} ({c.training['rows_train']} vectors), pooling {c.pooling}; "
        f"held-out variance explained {fve}, {m['dead_latents']} dead latents"
    )
    say(f"written: {out}")
    return 0


def _dissect_sae(model: nn.Module, args: argparse.Namespace) -> int:
    """``sae dissect``: label its latents, print them."""
    sae = SAE.load(args.sae)
    result = dissect(model, [sae.layer], probe_from_args(args), sae=sae, **dissect_options(args))
    out = result.save(args.out)
    labels = result.labels(sae.layer)
    shown = ", ".join(labels[:8]) + (" ..." if len(labels) > 8 else "")
    say(f"{sae.layer} SAE ({len(labels)} latents, k {sae.config.k}): {shown}")
    say(f"written: {out / 'descriptions.csv'} and {out / 'dissection.json'}")
    return 0
