"""The TopK sparse autoencoder of one layer (:class:`SAE`), its configuration and its files."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch import nn

from discover._utils import read_json, write_files
from discover.dissection.layers import pool
from discover.errors import InputError

__all__ = [
    "SITES",
    "WEIGHTS_FILE",
    "CONFIG_FILE",
    "FORMAT",
    "SAEConfig",
    "SAE",
    "as_sae",
    "per_position",
    "position_vectors",
]

SITES = ("positions", "pooled")
"""What an SAE is trained on: per-position vectors (default) or pooled vectors per image."""
WEIGHTS_FILE = "sae.safetensors"
CONFIG_FILE = "sae.json"
FORMAT = 1


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
        return per_position(output, self.encode)

    def reconstruct(self, output: torch.Tensor) -> torch.Tensor:
        """The layer output rebuilt position by position, same shape as ``output``."""
        return per_position(output, self.forward)

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


def per_position(output: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply ``fn`` to every position's vector of a ``(N, C, H, W)``, ``(N, T, D)`` or
    ``(N, D)`` output, keeping the layout (the channel dimension of a conv map second)."""
    if output.dim() == 4:
        return fn(output.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    if output.dim() in (2, 3):
        return fn(output)
    raise InputError(
        f"an SAE applies to (N, C, H, W), (N, T, D) or (N, D) outputs, got {tuple(output.shape)}"
    )


def position_vectors(output: torch.Tensor) -> torch.Tensor:
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
