"""Sparse autoencoders (TopK SAEs) on a layer's recorded activations, as dissection subjects.

A TopK SAE (Gao et al., 2024, *Scaling and evaluating sparse autoencoders*) rewrites a
layer's ``d``-dimensional activation vector ``x`` as a sparse code over
``latents = expansion * d`` dictionary directions:

* ``encode``: ``z = TopK(ReLU(W_enc ((x - b_pre) / scale) + b_enc))``; exactly the ``k``
  largest pre-activations per row are kept (those that are positive: at most ``k`` nonzero,
  exactly ``k`` unless fewer than ``k`` are positive), the others are 0;
* ``decode``: ``x_hat = scale * (W_dec z) + b_pre``; the columns of ``W_dec`` have unit
  norm (renormalised after every step, the gradient's component along each column removed),
  and the pre-encoder bias is the decoder bias ``b_pre``;
* loss: the mean squared error in units of the data's spread (``scale`` is the root mean
  squared distance of the training rows from their mean, fixed at initialisation, so the
  loss is the fraction of variance left unexplained), plus an optional auxiliary loss
  (AuxK) in which the ``aux_k`` largest pre-activations of the *dead* latents (no activation
  for ``dead_after`` training rows) reconstruct the residual, with weight ``aux_coef``.

**What the SAE is trained on** (``sites``). The dissection describes one pooled vector per
image (``Q``, see :func:`~discover.dissection.recording.record`), but a layer of a conv net
or a ViT computes one vector per position (pixel or token). An SAE trained on pooled vectors
(``sites="pooled"``) sees a different distribution from the per-position vectors the next
layer reads (an average of many positions is smoother and less sparse than any one of
them), so swapping its reconstruction into the network (:func:`sae_replacement_accuracy`) is
a poor test of it. The default, ``sites="positions"``, trains on per-position vectors (a
seeded sample of ``positions_per_image`` positions of every probe image), replaces the
layer position by position, and for dissection encodes every position and pools the
*latents* the way the dissection pools the layer (``avg``/``max`` over space, ``cls``/``mean``
/``max`` over tokens): latent ``j`` of image ``i`` is then, e.g., the mean over positions of
how strongly direction ``j`` is used. For a vector layer (``(N, d)`` outputs, pooling
``none``) both are the same. With ``sites="pooled"`` the latents of an image are
``encode(Q_i)`` and the replacement is still applied per position (documented caveat).

A trained SAE is a folder: ``sae.safetensors`` (weights) and ``sae.json`` (its
:class:`SAEConfig`: layer, pooling, ``k``, ``expansion``, input width, training settings, the
model's weights hash and the metrics). Training keeps ``train_state.pt`` (weights, optimizer,
epoch, dead-latent counters; tensors only, read with ``weights_only=True``) beside them,
written atomically after every epoch, so ``resume=True`` continues an interrupted or a
finished run for more epochs exactly as if it had not stopped.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch import nn
from torch.utils.data import Dataset

from discover._utils import atomic_path, read_json, require_int, write_files
from discover.dissection.recording import (
    Recording,
    dataset_fingerprint,
    model_fingerprint,
    model_view,
    pool,
    record,
    resolve_layers,
    suggested_pooling,
)
from discover.errors import InputError
from discover.nn.lwta import eval_policy

__all__ = [
    "SITES",
    "SAEConfig",
    "SAE",
    "Replacement",
    "train_sae",
    "PROBE_SPLIT",
    "default_sae_dir",
    "record_latents",
    "sae_replacement_accuracy",
]

SITES = ("positions", "pooled")
"""What an SAE is trained on: per-position vectors (default) or pooled vectors per image."""
WEIGHTS_FILE = "sae.safetensors"
CONFIG_FILE = "sae.json"
STATE_FILE = "train_state.pt"
FORMAT = 1
# training settings a resumed run may change (everything else must match the saved run)
_RESUMABLE = {"epochs"}


@dataclass
class SAEConfig:
    """Everything that defines an SAE and how it was trained; saved as ``sae.json``."""

    layer: str
    width: int
    """``d``: the layer's activation width (channels, token features or vector size)."""
    k: int
    expansion: int
    pooling: str
    """How the dissection pools the layer (``avg``, ``max``, ``cls``, ``mean``, ``none``)."""
    sites: str = "positions"
    positions_per_image: int | None = 16
    model_sha256: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    """epochs, batch size, learning rate, seed, held-out fraction, AuxK settings, LWTA
    policy, probe (type, images, fingerprint), rows used."""
    metrics: dict[str, Any] = field(default_factory=dict)
    """``fve`` (fraction of variance explained on held-out rows), ``fve_train``,
    ``dead_latents`` (never active on the training rows), ``l0``, ``history`` (per epoch)."""

    @property
    def latents(self) -> int:
        """The number of latents, ``expansion * width``."""
        return self.expansion * self.width

    def __post_init__(self) -> None:
        for name in ("width", "k", "expansion"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"SAE: {name} must be a positive integer, got {value!r}")
        if self.k > self.latents:
            raise InputError(
                f"SAE: k={self.k} is larger than the number of latents "
                f"(expansion {self.expansion} x width {self.width} = {self.latents})"
            )
        if self.sites not in SITES:
            raise InputError(f"SAE: sites must be one of {SITES}, got {self.sites!r}")
        ppi = self.positions_per_image
        if ppi is not None and (isinstance(ppi, bool) or not isinstance(ppi, int) or ppi < 1):
            raise InputError(
                f"SAE: positions_per_image must be a positive integer or None, got {ppi!r}"
            )


class SAE(nn.Module):
    """A TopK sparse autoencoder of one layer (see the module docstring for the equations).

    Example:
        >>> sae = SAE(SAEConfig(layer="fc", width=16, k=4, expansion=4, pooling="none"))
        >>> z = sae.encode(torch.randn(8, 16))
        >>> tuple(z.shape), int((z != 0).sum(1).max()) <= 4
        ((8, 64), True)
    """

    def __init__(self, config: SAEConfig, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        d, n = config.width, config.latents
        g = torch.Generator().manual_seed(seed)
        W_dec = torch.randn(d, n, generator=g)
        W_dec /= W_dec.norm(dim=0, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.t().clone())  # tied initialisation
        self.b_enc = nn.Parameter(torch.zeros(n))
        self.b_pre = nn.Parameter(torch.zeros(d))
        self.register_buffer("scale", torch.ones(()))
        self.folder: Path | None = None

    @property
    def layer(self) -> str:
        """The layer this SAE describes."""
        return self.config.layer

    @property
    def latents(self) -> int:
        """The number of latents (the dissection's units)."""
        return self.config.latents

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """``W_enc ((x - b_pre) / scale) + b_enc`` for rows ``x`` (``(..., width)``)."""
        self._check_width(x, "encode")
        return F.linear((x - self.b_pre) / self.scale, self.W_enc, self.b_enc)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents ``(..., latents)`` of activation vectors ``(..., width)``: the ``k``
        largest pre-activations of each row, made non-negative; the rest 0."""
        return self._top_k(self.pre_activations(x), self.config.k)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstructed activation vectors ``(..., width)`` of latents ``(..., latents)``."""
        if z.shape[-1] != self.latents:
            raise InputError(
                f"SAE of {self.layer!r}: decode expects {self.latents} latents in the last "
                f"dimension, got shape {tuple(z.shape)}"
            )
        return F.linear(z, self.W_dec) * self.scale + self.b_pre

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x))``."""
        return self.decode(self.encode(x))

    @staticmethod
    def _top_k(pre: torch.Tensor, k: int) -> torch.Tensor:
        values, index = pre.topk(k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, index, values.relu())

    def _check_width(self, x: torch.Tensor, what: str) -> None:
        if x.shape[-1] != self.config.width:
            raise InputError(
                f"SAE of {self.layer!r}: {what} expects vectors of width {self.config.width} "
                f"in the last dimension, got shape {tuple(x.shape)}"
            )

    # -- layer outputs ------------------------------------------------------------------------
    def image_latents(self, output: torch.Tensor) -> torch.Tensor:
        """The latents of each image ``(N, latents)`` from the layer's raw output, as the
        dissection uses them: per-position latents pooled with the layer's pooling
        (``sites="positions"``), or the pooled vector encoded (``sites="pooled"``)."""
        if self.config.sites == "pooled" or output.dim() == 2:
            return self.encode(pool(output, self.config.pooling, self.layer))
        return pool(self.latent_map(output), self.config.pooling, self.layer)

    def latent_map(self, output: torch.Tensor) -> torch.Tensor:
        """Every position's latents, laid out like the output: ``(N, latents, H, W)`` for a
        conv map ``(N, C, H, W)``, ``(N, T, latents)`` for tokens, ``(N, latents)`` for
        vectors."""
        return _per_position(output, self.encode)

    def reconstruct(self, output: torch.Tensor) -> torch.Tensor:
        """The layer output rebuilt position by position, same shape as ``output``."""
        return _per_position(output, self.forward)

    # -- metrics ------------------------------------------------------------------------------
    @torch.no_grad()
    def variance_explained(self, x: torch.Tensor, batch_size: int = 4096) -> float:
        """Fraction of variance explained on rows ``x`` (``(rows, width)``):
        ``1 - sum |x - x_hat|^2 / sum |x - mean(x)|^2`` (1 is perfect, 0 is the mean)."""
        x = x.reshape(-1, self.config.width).float()
        error = sum(float((self(chunk) - chunk).pow(2).sum()) for chunk in x.split(batch_size))
        total = float((x - x.mean(0)).pow(2).sum())
        return 1.0 - error / total if total > 0 else float(error == 0)

    @torch.no_grad()
    def dead_latents(self, x: torch.Tensor, batch_size: int = 4096) -> int:
        """How many latents are 0 on every row of ``x`` (``(rows, width)``)."""
        x = x.reshape(-1, self.config.width).float()
        fired = torch.zeros(self.latents, dtype=torch.bool, device=x.device)
        for chunk in x.split(batch_size):
            fired |= (self.encode(chunk) > 0).any(0)
        return int((~fired).sum())

    def provenance(self) -> dict[str, Any]:
        """What a dissection records about the SAE it labelled."""
        c = self.config
        return {
            "folder": str(self.folder.resolve()) if self.folder else None,
            "layer": c.layer,
            "k": c.k,
            "expansion": c.expansion,
            "width": c.width,
            "latents": c.latents,
            "sites": c.sites,
            "pooling": c.pooling,
            "model_sha256": c.model_sha256,
            "sha256": self.fingerprint(),
            "fve": c.metrics.get("fve"),
        }

    def fingerprint(self) -> str:
        """SHA-256 of the configuration that shapes the latents and of the weights."""
        c = self.config
        digest = hashlib.sha256(
            json.dumps([c.layer, c.k, c.width, c.expansion, c.sites, c.pooling]).encode()
        )
        for name, tensor in sorted(self.state_dict().items()):
            t = tensor.detach().float().cpu().contiguous()
            digest.update(name.encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    # -- files --------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write ``sae.safetensors`` and ``sae.json`` into ``folder`` (each atomically,
        ``sae.json`` last)."""
        folder = Path(folder)
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}
        payload = {"format": FORMAT, **asdict(self.config)}
        write_files(
            folder,
            {
                WEIGHTS_FILE: save(tensors, {"format": str(FORMAT)}),
                CONFIG_FILE: json.dumps(payload, indent=2, default=str),
            },
        )
        self.folder = folder
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> SAE:
        """Read an SAE folder written by :meth:`save` / :func:`train_sae`.

        Example:
            >>> sae = SAE.load("runs/shapes-u8/sae/layer3")  # doctest: +SKIP
        """
        folder = Path(folder)
        config_file, weights_file = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        if not config_file.is_file() or not weights_file.is_file():
            missing = config_file if not config_file.is_file() else weights_file
            raise FileNotFoundError(
                f"no SAE in {folder} ({missing} is missing); train one with "
                "`discover sae train --run RUN --layer LAYER --k K --expansion E --out DIR`"
            )
        data = read_json(config_file, "SAE configuration")
        try:
            known = {f.name for f in fields(SAEConfig)}
            config = SAEConfig(**{k: v for k, v in data.items() if k in known})
            sae = cls(config)
            sae.load_state_dict(load_file(weights_file))
        except (TypeError, ValueError, RuntimeError, OSError) as error:
            raise InputError(
                f"SAE in {folder} cannot be read ({type(error).__name__}: {error}); the files "
                "are damaged or from another program: train it again"
            ) from None
        sae.folder = folder
        return sae.eval()


def as_sae(sae: SAE | str | Path, what: str = "sae") -> SAE:
    """An :class:`SAE`, or the one saved in the folder ``sae``."""
    if isinstance(sae, SAE):
        return sae
    if isinstance(sae, (str, Path)):
        return SAE.load(sae)
    raise TypeError(f"{what} must be an SAE or the folder one was saved to, got {type(sae)!r}")


def _per_position(output: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]):
    """Apply ``fn`` to every position's vector of a ``(N, C, H, W)``, ``(N, T, D)`` or
    ``(N, D)`` output, keeping the layout (the channel dimension of a conv map second)."""
    if output.dim() == 4:
        return fn(output.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    if output.dim() in (2, 3):
        return fn(output)
    raise InputError(
        f"an SAE applies to (N, C, H, W), (N, T, D) or (N, D) outputs, got {tuple(output.shape)}"
    )


def _positions(output: torch.Tensor) -> torch.Tensor:
    """``(N, positions, width)``: every position's vector of a layer output."""
    if output.dim() == 4:
        return output.flatten(2).transpose(1, 2)
    if output.dim() == 3:
        return output
    if output.dim() == 2:
        return output.unsqueeze(1)
    raise InputError(
        f"an SAE needs (N, C, H, W), (N, T, D) or (N, D) layer outputs, got {tuple(output.shape)}"
    )


# -- recording through a tap ------------------------------------------------------------------
class _Tap(nn.Module):
    """Computes something from a layer's output; :func:`record` records its output.

    ``digest`` (a buffer) makes the tap's settings part of the weights hash, so the
    activation cache never mixes up two taps with the same weights but other settings.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], settings: Any, sae=None):
        super().__init__()
        self.fn = fn
        self.sae = sae
        digest = hashlib.sha256(json.dumps(settings, default=str).encode()).digest()
        self.register_buffer("digest", torch.tensor(list(digest), dtype=torch.uint8))

    def forward(self, output: torch.Tensor) -> torch.Tensor:
        return self.fn(output)


class _Tapped(nn.Module):
    """``model`` whose layer ``layer`` also feeds the tap (a layer :func:`record` can read)."""

    def __init__(self, model: nn.Module, layer: str, tap: _Tap) -> None:
        super().__init__()
        self.model = model
        self.tap = tap
        self._target = (resolve_layers(model, [layer])[layer],)  # a tuple: not a submodule
        self.training = model.training  # record restores this mode: the model keeps its own

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def hook(_module, _inputs, output):
            if isinstance(output, torch.Tensor):
                self.tap(output)  # returns None: the model's own output is unchanged

        handle = self._target[0].register_forward_hook(hook)
        try:
            return self.model(x)
        finally:
            handle.remove()


def record_latents(
    model: nn.Module,
    layers: Sequence[str],
    probe: Dataset,
    pooling: str | dict[str, str] = "auto",
    *,
    sae: SAE | str | Path,
    **record_options: Any,
) -> Recording:
    """:func:`~discover.dissection.recording.record` of an SAE's latents: per image, the
    latents of ``sae`` on its layer (:meth:`SAE.image_latents`), ``(N, latents)``.

    ``layers`` must be the SAE's layer alone and ``pooling`` ``"auto"`` or the SAE's own
    pooling (it is part of what the SAE describes). ``probe`` is already transformed for the
    model; ``record_options`` are those of ``record`` (``batch_size``, ``device``, ``policy``,
    ``seed``, ``cache_dir``, ``progress``). The cache key covers the SAE's weights and
    settings. The result's ``meta`` has the model's own weights hash and ``sae`` provenance.

    Example:
        >>> rec = record_latents(model, ["layer3.1.act2"], probe, sae="sae/l3")  # doctest: +SKIP
        >>> rec.activations["layer3.1.act2"].shape  # doctest: +SKIP
        torch.Size([1000, 1024])
    """
    sae = as_sae(sae)
    names = list(resolve_layers(model, layers))
    if names != [sae.layer]:
        raise InputError(
            f"sae: the SAE describes layer {sae.layer!r}; dissect that layer alone "
            f"(layers={[sae.layer]!r}), got {names!r}"
        )
    wanted = pooling.get(sae.layer, "auto") if isinstance(pooling, dict) else pooling
    if wanted not in ("auto", sae.config.pooling):
        raise InputError(
            f"sae: the SAE of {sae.layer!r} was trained for pooling {sae.config.pooling!r}, "
            f"got pooling {wanted!r}; use 'auto' or {sae.config.pooling!r}"
        )
    sae.eval()
    settings = ["latents", sae.layer, sae.config.pooling, sae.config.sites, sae.config.k]
    tap = _Tap(sae.image_latents, settings, sae=sae)
    with torch.no_grad():
        tapped = record(_Tapped(model, sae.layer, tap), ["tap"], probe, "none", **record_options)
    meta = {k: v for k, v in tapped.meta.items() if k not in ("layers", "pooling")}
    meta.update(
        layers=[sae.layer],
        pooling={sae.layer: sae.config.pooling},
        model_sha256=model_fingerprint(model),
        sae=sae.provenance(),
    )
    return Recording(
        activations={sae.layer: tapped.activations["tap"]},
        wins={},
        pooling={sae.layer: sae.config.pooling},
        meta=meta,
    )


def _record_rows(
    model: nn.Module,
    layer: str,
    probe: Dataset,
    pooling: str,
    sites: str,
    positions_per_image: int | None,
    *,
    seed: int,
    **options: Any,
) -> tuple[torch.Tensor, str, int]:
    """``(rows (images, per_image, width), resolved pooling, positions per output)``."""
    shape: dict[str, tuple[int, ...]] = {}

    if sites == "pooled":
        recording = record(model, [layer], probe, pooling, seed=seed, **options)
        rows = recording.activations[layer]
        return rows.unsqueeze(1), recording.pooling[layer], 1

    generator = torch.Generator().manual_seed(seed)

    def sample(output: torch.Tensor) -> torch.Tensor:
        shape.setdefault("out", tuple(output.shape[1:]))
        vectors = _positions(output.detach())
        n, p, _ = vectors.shape
        if positions_per_image is None or positions_per_image >= p:
            return vectors.flatten(1)
        index = torch.rand(n, p, generator=generator).argsort(dim=1)[:, :positions_per_image]
        index = index.to(vectors.device).unsqueeze(-1).expand(-1, -1, vectors.shape[2])
        return vectors.gather(1, index).flatten(1)

    tap = _Tap(sample, ["positions", positions_per_image, seed])
    recording = record(_Tapped(model, layer, tap), ["tap"], probe, "none", seed=seed, **options)
    out_shape = shape["out"]
    if pooling == "auto":
        pooling = suggested_pooling(out_shape, model) or "none"
    pool(torch.zeros(1, *out_shape), pooling, layer)  # a pooling that does not fit: clear error
    every = _positions(torch.zeros(1, *out_shape))
    positions, width = int(every.shape[1]), int(every.shape[2])
    rows = recording.activations["tap"]
    return rows.reshape(len(rows), -1, width), pooling, positions


# -- training ---------------------------------------------------------------------------------
def _split(images: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image indices ``(train, held out)``: held-out rows come from other images."""
    order = torch.randperm(images, generator=torch.Generator().manual_seed(seed + 1))
    held = min(max(1, round(images * val_fraction)), images - 1) if val_fraction > 0 else 0
    return order[held:].sort().values, order[:held].sort().values


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


PROBE_SPLIT = "train"
"""The data-set split ``discover sae train`` trains an SAE on unless told otherwise (the
probe of a dissection is the ``val`` split, :func:`discover.data.registry.build_probe`)."""


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
    """Train a TopK SAE on the activations of ``layer`` over the probe set.

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

    Returns:
        the trained :class:`SAE` (in evaluation mode), with ``config.metrics``.

    Example:
        >>> import discover
        >>> run = discover.load_run("runs/shapes-u8")  # doctest: +SKIP
        >>> sae = train_sae(run.model, "layer3.1.act2", ShapesWorld(n=2000), k=8,
        ...                 expansion=8, out="runs/shapes-u8/sae/layer3")  # doctest: +SKIP
        >>> sae.config.metrics["fve"]  # doctest: +SKIP
        0.87
    """
    started = time.time()
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
    out = Path(out) if out is not None else None
    state_file = _check_out(out, resume)
    resolve_layers(model, [layer])  # an unknown layer fails before the recording

    options = {"batch_size": record_batch_size, "device": device, "policy": policy}
    rows, pooling, positions = _record_rows(
        model,
        layer,
        model_view(model, probe, transform),
        pooling,
        sites,
        positions_per_image,
        seed=seed,
        progress=progress,
        **options,
    )
    train_idx, held_idx = _split(len(rows), val_fraction, seed)
    x_train = rows[train_idx].reshape(-1, rows.shape[2]).float()
    x_held = rows[held_idx].reshape(-1, rows.shape[2]).float()
    width = int(rows.shape[2])
    training = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "val_fraction": val_fraction,
        "aux_k": width // 2 if aux_k is None else aux_k,
        "aux_coef": aux_coef,
        "dead_after": len(x_train) if dead_after is None else dead_after,
        "policy": policy,
        "probe": {
            "type": type(probe).__name__,
            "images": len(probe),
            "fingerprint": dataset_fingerprint(probe),
        },
        "positions_per_output": positions,
        "rows_train": len(x_train),
        "rows_heldout": len(x_held),
    }
    config = SAEConfig(
        layer=layer,
        width=width,
        k=k,
        expansion=expansion,
        pooling=pooling,
        sites=sites,
        positions_per_image=positions_per_image if sites == "positions" else None,
        model_sha256=model_fingerprint(model),
        training=training,
    )
    device_ = torch.device(device)
    sae = SAE(config, seed=seed)
    with torch.no_grad():  # b_pre: the mean; scale: the rows' RMS distance from it
        mean = x_train.mean(0)
        sae.b_pre.copy_(mean)
        spread = float((x_train - mean).pow(2).sum(1).mean().sqrt())
        sae.scale.fill_(spread if spread > 0 else 1.0)
    sae.to(device_)
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    since_fired = torch.zeros(config.latents, dtype=torch.long, device=device_)
    history: list[dict[str, Any]] = []
    setup = _setup(config)
    if resume:
        assert state_file is not None
        state = _load_state(state_file, setup, device_)
        if epochs < state["epoch"]:
            raise InputError(
                f"train_sae: resume: the SAE in {out} has trained {state['epoch']} epochs "
                f"already; epochs={epochs} must be at least that"
            )
        sae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        since_fired = state["since_fired"].to(device_)
        history = json.loads(state["history"])
    start = len(history)

    epochs_bar: Iterable[int] = range(start, epochs)
    if progress:
        from tqdm.auto import tqdm

        epochs_bar = tqdm(
            epochs_bar, desc=f"sae {layer}", initial=start, total=epochs, dynamic_ncols=True
        )
    x_train_d = x_train.to(device_)
    sae.train()
    for epoch in epochs_bar:
        order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed + epoch))
        losses = [
            _step(
                sae,
                x_train_d[index.to(device_)],
                optimizer,
                since_fired,
                training["dead_after"],
                training["aux_k"],
                aux_coef,
            )
            for index in order.split(batch_size)
        ]
        sae.eval()
        record_ = {
            "epoch": epoch + 1,
            "loss": sum(losses) / len(losses),
            "fve": sae.variance_explained(x_held.to(device_)) if len(x_held) else None,
            "dead": int((since_fired > training["dead_after"]).sum()),
        }
        sae.train()
        history.append(record_)
        if progress:
            epochs_bar.set_postfix(  # type: ignore[attr-defined]
                loss=f"{record_['loss']:.4f}",
                fve=f"{record_['fve']:.3f}" if record_["fve"] is not None else "-",
            )
        if state_file is not None:
            state = {
                "model": sae.state_dict(),
                "optimizer": optimizer.state_dict(),
                "since_fired": since_fired.cpu(),
                "epoch": epoch + 1,
                "setup": setup,
                "history": json.dumps(history),
            }
            state_file.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(state_file) as tmp:
                torch.save(state, tmp)
    sae.eval()
    with torch.no_grad():
        l0 = float((sae.encode(x_train_d[:4096]) > 0).sum(1).float().mean())
    config.metrics = {
        "fve": sae.variance_explained(x_held.to(device_)) if len(x_held) else None,
        "fve_train": sae.variance_explained(x_train_d),
        "dead_latents": sae.dead_latents(x_train_d),
        "l0": l0,
        "history": history,
        "seconds": time.time() - started,
    }
    sae.cpu()
    if out is not None:
        sae.save(out)
    return sae


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


def _setup(config: SAEConfig) -> str:
    """The settings a resumed training must share with the saved one (JSON)."""
    settings = {k: v for k, v in asdict(config).items() if k not in ("training", "metrics")}
    settings.update({k: v for k, v in config.training.items() if k not in _RESUMABLE})
    return json.dumps(settings, sort_keys=True, default=str)


# -- replacement ------------------------------------------------------------------------------
@dataclass
class Replacement:
    """The model's accuracy with the SAE's reconstruction in place of its layer."""

    accuracy: float
    original_accuracy: float
    images: int
    agreement: float
    """Share of images whose predicted class the replacement leaves unchanged."""
    fve: float
    """Fraction of variance of the layer's output (every position) the SAE explains."""


@torch.no_grad()
def sae_replacement_accuracy(
    model: nn.Module,
    layer: str,
    sae: SAE | str | Path,
    loader: Iterable,
    *,
    policy: str = "argmax",
    seed: int = 0,
    device: str = "cpu",
) -> Replacement:
    """Top-1 accuracy of ``model`` when ``sae.reconstruct`` replaces the output of ``layer``,
    next to the unchanged model's, on ``loader`` (batches ``(images, targets, ...)`` already
    transformed for the model).

    The SAE is applied to every position's activation vector of a conv map or token
    sequence. That is what it was trained on with ``sites="positions"``; an SAE trained on
    pooled vectors (``sites="pooled"``) is applied the same way, outside the distribution
    it was trained on, so its replacement accuracy says little about the pooled latents the
    dissection labels.

    Example:
        >>> loader = DataLoader(build_dataset("shapes", "val", transform=tf), batch_size=64)  # doctest: +SKIP
        >>> sae_replacement_accuracy(model, "layer3.1.act2", "sae/l3", loader).accuracy  # doctest: +SKIP
        0.91
    """
    sae = as_sae(sae)
    module = resolve_layers(model, [layer])[layer]
    if layer != sae.layer:
        raise InputError(f"sae: the SAE describes layer {sae.layer!r}, not layer {layer!r}")
    device_ = torch.device(device)
    was_training = model.training
    model.to(device_).eval()
    sae.to(device_).eval()
    replace = {"on": False}
    stats = _Spread(sae.config.width)

    def hook(_module, _inputs, output):
        if not replace["on"]:
            return None
        rebuilt = sae.reconstruct(output.float())
        stats.add(_positions(output.float()), _positions(rebuilt))
        return rebuilt.to(output.dtype)

    correct = {"original": 0, "replaced": 0}
    images = agree = 0
    handle = module.register_forward_hook(hook)
    try:
        with eval_policy(model, policy):
            for batch in loader:
                if not isinstance(batch, (list, tuple)) or len(batch) < 2:
                    raise InputError(
                        "sae_replacement_accuracy: loader must yield (images, targets, ...) batches"
                    )
                x, y = batch[0].to(device_), batch[1].to(device_)
                predicted = {}
                for name, on in (("original", False), ("replaced", True)):
                    replace["on"] = on
                    torch.manual_seed(seed)  # the same LWTA samples under policy="sample"
                    predicted[name] = model(x).argmax(1)
                    correct[name] += int((predicted[name] == y).sum())
                agree += int((predicted["original"] == predicted["replaced"]).sum())
                images += len(x)
    finally:
        handle.remove()
        model.train(was_training)
    if images == 0:
        raise InputError("sae_replacement_accuracy: the loader yielded no images")
    return Replacement(
        accuracy=correct["replaced"] / images,
        original_accuracy=correct["original"] / images,
        images=images,
        agreement=agree / images,
        fve=stats.variance_explained(),
    )


class _Spread:
    """Streamed fraction of variance explained of vectors ``x`` by ``x_hat``."""

    def __init__(self, width: int) -> None:
        self.error, self.square, self.count = 0.0, 0.0, 0
        self.sum = torch.zeros(width, dtype=torch.float64)

    def add(self, x: torch.Tensor, x_hat: torch.Tensor) -> None:
        x, x_hat = x.reshape(-1, x.shape[-1]).double(), x_hat.reshape(-1, x.shape[-1]).double()
        self.error += float((x_hat - x).pow(2).sum())
        self.square += float(x.pow(2).sum())
        self.sum += x.sum(0).cpu()
        self.count += len(x)

    def variance_explained(self) -> float:
        variance = self.square - float(self.sum.pow(2).sum()) / max(self.count, 1)
        return 1.0 - self.error / variance if variance > 0 else float(self.error == 0)
