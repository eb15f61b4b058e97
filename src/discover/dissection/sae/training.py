"""Training a TopK SAE on a layer's recorded activations (:func:`train_sae`), resumable
from the state saved after every epoch."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from discover._utils import atomic_path, require_int
from discover.dissection.layers import resolve_layers
from discover.dissection.recording import dataset_fingerprint, model_fingerprint, model_view
from discover.dissection.sae.model import CONFIG_FILE, SAE, SITES, SAEConfig
from discover.dissection.sae.recording import record_sites
from discover.errors import InputError
from discover.nn.hooks import training_mode

__all__ = ["PROBE_SPLIT", "STATE_FILE", "default_sae_dir", "train_sae"]

PROBE_SPLIT = "train"
"""The data-set split ``discover sae train`` trains an SAE on unless told otherwise (the
probe of a dissection is the ``val`` split, :func:`discover.data.registry.build_probe`)."""
STATE_FILE = "train_state.pt"
# training settings a resumed run may change (everything else must match the saved run)
_RESUMABLE = {"epochs"}


def default_sae_dir(run: str | Path, layer: str, k: int, expansion: int) -> Path:
    """Where ``discover sae train`` keeps an SAE of a training run unless told otherwise:
    ``RUN/sae/LAYER-kK-xE``.

    Example:
        >>> default_sae_dir("runs/u8", "layer3.1.act2", 8, 4).as_posix()
        'runs/u8/sae/layer3.1.act2-k8-x4'
    """
    return Path(run) / "sae" / f"{layer}-k{k}-x{expansion}"


def train_sae(
    model: nn.Module,
    layer: str,
    probe: Dataset,
    k: int,
    expansion: int,
    *,
    out: str | Path | None = None,
    sites: str = "positions",
    positions_per_image: int | None = 16,
    pooling: str = "auto",
    epochs: int = 20,
    batch_size: int = 256,
    lr: float = 1e-3,
    val_fraction: float = 0.1,
    aux_k: int | None = None,
    aux_coef: float = 1 / 32,
    dead_after: int | None = None,
    policy: str = "argmax",
    seed: int = 0,
    transform: Callable | None = None,
    record_batch_size: int = 64,
    device: str = "cpu",
    resume: bool = False,
    progress: bool = True,
) -> SAE:
    """Train a TopK SAE on the activations of ``layer`` over the probe set; returns it in
    evaluation mode, with ``config.metrics``.

    The activations are recorded as :func:`~discover.dissection.core.dissect` records them
    (the probe through the model's evaluation transform, LWTA ``policy`` and ``seed``, the
    same pooling); see the module docstring for ``sites``. An image's rows are either all
    used for training or all held out (``val_fraction`` of the images, at least one).

    Args:
        model: any model (``discover.load_run(RUN).model`` for a training run).
        layer: the dotted layer name (see ``discover layers``).
        probe: raw probe images, like :func:`~discover.dissection.core.dissect`'s.
        k: latents kept per row.
        expansion: latents per input feature (``latents = expansion * width``).
        out: folder for ``sae.safetensors``, ``sae.json`` and the resume state
            ``train_state.pt`` (saved after every epoch); ``None`` keeps it in memory.
        sites: ``positions`` (per-position vectors) or ``pooled`` (one per image).
        positions_per_image: positions sampled per image for ``sites="positions"``
            (``None``: all of them).
        pooling: the layer's pooling for dissection (``auto``: as ``dissect`` chooses).
        aux_k: dead latents used by the auxiliary loss (default ``width // 2``);
            ``aux_coef=0`` switches it off. A latent is dead when it has not fired for
            ``dead_after`` training rows (default: one epoch).
        resume: continue the training state in ``out`` (to ``epochs`` in all).

    Example:
        >>> sae = train_sae(load_run("runs/shapes-u8").model, "layer3.1.act2",
        ...                 ShapesWorld(n=2000), k=8, expansion=8)  # doctest: +SKIP
        >>> sae.config.metrics["fve"]  # doctest: +SKIP
        0.87
    """
    started = time.time()
    _check_options(probe, k, expansion, epochs, batch_size, sites, val_fraction, lr)
    out = Path(out) if out is not None else None
    state_file = _check_out(out, resume)
    resolve_layers(model, [layer])  # an unknown layer fails before the recording
    rows, pooling, positions = record_sites(
        model, layer, model_view(model, probe, transform), pooling, sites, positions_per_image,
        seed=seed, progress=progress, batch_size=record_batch_size, device=device, policy=policy,
    )  # fmt: skip
    x_train, x_held = _held_out(rows, val_fraction, seed)
    training = {
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
        "val_fraction": val_fraction, "aux_k": int(rows.shape[2]) // 2 if aux_k is None else aux_k,
        "aux_coef": aux_coef, "dead_after": len(x_train) if dead_after is None else dead_after,
        "policy": policy, "probe": _probe_about(probe), "positions_per_output": positions,
        "rows_train": len(x_train), "rows_heldout": len(x_held),
    }  # fmt: skip
    config = SAEConfig(
        layer=layer, width=int(rows.shape[2]), k=k, expansion=expansion, pooling=pooling,
        sites=sites, positions_per_image=positions_per_image if sites == "positions" else None,
        model_sha256=model_fingerprint(model), training=training,
    )  # fmt: skip
    run = _start(config, x_train, lr, torch.device(device), state_file if resume else None)
    x_train = x_train.to(run.device)
    _train(run, x_train, x_held, progress=progress, state_file=state_file)
    config.metrics = _metrics(run, x_train, x_held, started)
    run.sae.cpu()
    if out is not None:
        run.sae.save(out)
    return run.sae


def _check_options(
    probe: Dataset, k: int, expansion: int, epochs: int, batch_size: int, sites: str,
    val_fraction: float, lr: float,
) -> None:  # fmt: skip
    """Refuse settings :func:`train_sae` cannot train with, before anything is recorded."""
    for name, value, low in (("k", k, 1), ("expansion", expansion, 1), ("epochs", epochs, 0)):
        require_int(value, f"train_sae: {name}", low)
    require_int(batch_size, "train_sae: batch_size")
    if sites not in SITES:
        raise InputError(f"train_sae: sites must be one of {SITES}, got {sites!r}")
    if not 0 <= val_fraction < 1:
        raise InputError(f"train_sae: val_fraction must be in [0, 1), got {val_fraction}")
    if batch_size < 1 or not lr > 0:
        raise InputError(f"train_sae: batch_size and lr must be positive ({batch_size}, {lr})")
    if len(probe) < 2:
        raise InputError(f"train_sae: the probe set needs at least 2 images, has {len(probe)}")


def _probe_about(probe: Dataset) -> dict[str, Any]:
    """What an SAE records about the probe set it was trained on."""
    return {
        "type": type(probe).__name__,
        "images": len(probe),
        "fingerprint": dataset_fingerprint(probe),
    }


def _split(images: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image indices ``(train, held out)``: held-out rows come from other images."""
    order = torch.randperm(images, generator=torch.Generator().manual_seed(seed + 1))
    held = min(max(1, round(images * val_fraction)), images - 1) if val_fraction > 0 else 0
    return order[held:].sort().values, order[:held].sort().values


def _held_out(
    rows: torch.Tensor, val_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training and the held-out rows, each ``(rows, width)``, from ``rows`` ``(images,
    per_image, width)``: all of an image's rows are on the same side."""
    train_idx, held_idx = _split(len(rows), val_fraction, seed)
    x_train = rows[train_idx].reshape(-1, rows.shape[2]).float()
    x_held = rows[held_idx].reshape(-1, rows.shape[2]).float()
    return x_train, x_held


@dataclass
class _Run:
    """An SAE in training: its optimizer, the training rows since each latent last fired,
    the history (one entry per epoch), the settings a resumed run must share, the device."""

    sae: SAE
    optimizer: torch.optim.Optimizer
    since_fired: torch.Tensor
    history: list[dict[str, Any]]
    setup: str
    device: torch.device


def _start(
    config: SAEConfig, x_train: torch.Tensor, lr: float, device: torch.device,
    resume_from: Path | None,
) -> _Run:  # fmt: skip
    """A new SAE on ``device`` (``b_pre``: the training rows' mean; ``scale``: their RMS
    distance from it) and its optimizer; with ``resume_from``, the state saved there."""
    sae = SAE(config, seed=config.training["seed"])
    with torch.no_grad():  # b_pre: the mean; scale: the rows' RMS distance from it
        mean = x_train.mean(0)
        sae.b_pre.copy_(mean)
        spread = float((x_train - mean).pow(2).sum(1).mean().sqrt())
        sae.scale.fill_(spread if spread > 0 else 1.0)
    sae.to(device)
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    since_fired = torch.zeros(config.latents, dtype=torch.long, device=device)
    run = _Run(sae, optimizer, since_fired, [], _resume_settings(config), device)
    if resume_from is not None:
        _resume(run, resume_from)
    return run


def _resume(run: _Run, path: Path) -> None:
    """Continue the training state saved in ``path``."""
    state = _load_state(path, run.setup, run.device)
    epochs = run.sae.config.training["epochs"]
    if epochs < state["epoch"]:
        raise InputError(
            f"train_sae: resume: the SAE in {path.parent} has trained {state['epoch']} epochs "
            f"already; epochs={epochs} must be at least that"
        )
    run.sae.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.since_fired = state["since_fired"].to(run.device)
    run.history = json.loads(state["history"])


def _train(
    run: _Run, x_train: torch.Tensor, x_held: torch.Tensor, *, progress: bool,
    state_file: Path | None,
) -> None:  # fmt: skip
    """The epochs still to run (to ``epochs`` in all), the state saved after each one."""
    sae, epochs, start = run.sae, run.sae.config.training["epochs"], len(run.history)
    epochs_bar: Iterable[int] = range(start, epochs)
    if progress:
        from tqdm.auto import tqdm

        epochs_bar = tqdm(
            epochs_bar, desc=f"sae {sae.layer}", initial=start, total=epochs, dynamic_ncols=True
        )
    sae.train()
    for epoch in epochs_bar:
        entry = _epoch(run, x_train, x_held, epoch)
        if progress:
            epochs_bar.set_postfix(  # type: ignore[attr-defined]
                loss=f"{entry['loss']:.4f}",
                fve=f"{entry['fve']:.3f}" if entry["fve"] is not None else "-",
            )
        if state_file is not None:
            _save_state(run, state_file, epoch + 1)
    sae.eval()


def _epoch(run: _Run, x_train: torch.Tensor, x_held: torch.Tensor, epoch: int) -> dict[str, Any]:
    """One pass over the training rows in an order seeded by the epoch; its history entry."""
    sae, training, device = run.sae, run.sae.config.training, run.device
    generator = torch.Generator().manual_seed(training["seed"] + epoch)
    order = torch.randperm(len(x_train), generator=generator)
    losses = [
        _step(
            sae,
            x_train[index.to(device)],
            run.optimizer,
            run.since_fired,
            training["dead_after"],
            training["aux_k"],
            training["aux_coef"],
        )
        for index in order.split(training["batch_size"])
    ]
    with training_mode(sae, False):
        entry = {
            "epoch": epoch + 1,
            "loss": sum(losses) / len(losses),
            "fve": sae.variance_explained(x_held.to(device)) if len(x_held) else None,
            "dead": int((run.since_fired > training["dead_after"]).sum()),
        }
    run.history.append(entry)
    return entry


def _step(
    sae: SAE,
    x: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    since_fired: torch.Tensor,
    dead_after: int,
    aux_k: int,
    aux_coef: float,
) -> float:
    pre = sae.pre_activations(x)
    z = SAE._top_k(pre, sae.config.k)
    x_hat = sae.decode(z)
    loss = ((x_hat - x) / sae.scale).pow(2).sum(-1).mean()
    dead = since_fired > dead_after
    if aux_coef > 0 and aux_k > 0 and bool(dead.any()):
        residual = ((x - x_hat) / sae.scale).detach()
        dead_pre = pre.masked_fill(~dead, float("-inf"))
        z_aux = SAE._top_k(dead_pre, min(aux_k, int(dead.sum())))
        z_aux = torch.nan_to_num(z_aux, neginf=0.0)
        aux = (F.linear(z_aux, sae.W_dec) - residual).pow(2).sum(-1).mean()
        loss = loss + aux_coef * aux
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    with torch.no_grad():
        W, g = sae.W_dec, sae.W_dec.grad
        if g is not None:  # keep the columns' norm: drop the gradient along them
            g -= (g * W).sum(0, keepdim=True) * W
    optimizer.step()
    with torch.no_grad():
        sae.W_dec /= sae.W_dec.norm(dim=0, keepdim=True).clamp_min(1e-12)
        fired = (z > 0).any(0)
        since_fired += len(x)
        since_fired[fired] = 0
    return loss.item()


def _save_state(run: _Run, path: Path, epoch: int) -> None:
    """Write the training state after ``epoch`` epochs to ``path`` (atomically)."""
    state = {
        "model": run.sae.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "since_fired": run.since_fired.cpu(),
        "epoch": epoch,
        "setup": run.setup,
        "history": json.dumps(run.history),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _metrics(
    run: _Run, x_train: torch.Tensor, x_held: torch.Tensor, started: float
) -> dict[str, Any]:
    """The trained SAE's ``config.metrics``."""
    sae = run.sae
    with torch.no_grad():
        l0 = float((sae.encode(x_train[:4096]) > 0).sum(1).float().mean())
    return {
        "fve": sae.variance_explained(x_held.to(run.device)) if len(x_held) else None,
        "fve_train": sae.variance_explained(x_train),
        "dead_latents": sae.dead_latents(x_train),
        "l0": l0,
        "history": run.history,
        "seconds": time.time() - started,
    }


def _check_out(out: Path | None, resume: bool) -> Path | None:
    """The resume state file of ``out``; errors for a resume without state, or a fresh
    start over an existing SAE."""
    state_file = out / STATE_FILE if out is not None else None
    if resume and (state_file is None or not state_file.is_file()):
        raise FileNotFoundError(
            f"train_sae: resume=True but there is no training state "
            f"({state_file or 'out is None'}); start without resume first"
        )
    if (
        not resume
        and out is not None
        and any((out / n).exists() for n in (STATE_FILE, CONFIG_FILE))
    ):
        raise InputError(
            f"train_sae: {out} already holds an SAE; continue it with resume=True "
            "or choose another out folder"
        )
    return state_file


def _load_state(path: Path, setup: str, device: torch.device) -> dict[str, Any]:
    """The resume state in ``path``; an error listing the settings that differ."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        saved = json.loads(state["setup"])
    except Exception as error:  # noqa: BLE001  (torch.load raises many types on damaged files)
        raise InputError(
            f"train_sae: resume: {path} cannot be read ({type(error).__name__}: {error}); "
            "start again without resume in a new folder"
        ) from None
    differs = [
        f"{key}: saved {saved.get(key)!r}, now {value!r}"
        for key, value in json.loads(setup).items()
        if saved.get(key) != value
    ]
    if differs:
        raise InputError(
            f"train_sae: resume: the settings differ from the SAE training in {path.parent}: "
            + "; ".join(differs)
        )
    return state


def _resume_settings(config: SAEConfig) -> str:
    """The settings a resumed training must share with the saved one (JSON)."""
    settings = {k: v for k, v in asdict(config).items() if k not in ("training", "metrics")}
    settings.update({k: v for k, v in config.training.items() if k not in _RESUMABLE})
    return json.dumps(settings, sort_keys=True, default=str)
