"""CLIP embedders: open_clip models (:class:`OpenCLIPEmbedder`) and transformers
``CLIPModel`` folders (:class:`HFCLIPEmbedder`), loaded only from local files or caches.

:meth:`OpenCLIPEmbedder.from_pretrained` takes a weights file, a folder, or a pretrained tag
whose file already sits in the Hugging Face cache or open_clip's URL cache, and picks the
matching preprocessing; :meth:`HFCLIPEmbedder.from_pretrained` reads a ``save_pretrained``
folder with ``local_files_only=True``. Nothing here downloads: a missing file is a
``FileNotFoundError`` whose message (:func:`how_to_get_weights`) says how to provide it.
"""

from __future__ import annotations

import difflib
import functools
import os
import posixpath
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from discover._utils import import_extra
from discover.dissection.embedders.base import (
    Embedder,
    ImageTransform,
    json_sha256,
    module_sha256,
)
from discover.errors import InputError
from discover.nn.clip_archs import register_open_clip_archs

__all__ = ["OpenCLIPEmbedder", "HFCLIPEmbedder", "how_to_get_weights"]


class _LocalCLIP(Embedder):
    """What both CLIP embedders hold: a model in eval mode on ``device``, its tokenizer, its
    image transform, and an :attr:`id` from the weights and the transform."""

    _kind: str  # "open_clip" or "hf": the id's prefix
    _title: str  # the name's prefix

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
        self.name = f"{self._title} {name}"

    @functools.cached_property
    def id(self) -> str:
        return (
            f"{self._kind}:{self.label}:model={module_sha256(self.model)[:16]}"
            f":transform={self.image_transform.sha256[:8]}"
        )


# --------------------------------------------------------------------------------------------
# open_clip
# --------------------------------------------------------------------------------------------


_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode", "fill_color")
_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class OpenCLIPEmbedder(_LocalCLIP):
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

    _kind, _title = "open_clip", "open_clip"

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Callable[..., Tensor],
        *,
        name: str,
        device: str | torch.device = "cpu",
    ) -> None:
        open_clip = import_extra("open_clip", "the open_clip embedder")

        cfg = open_clip.get_model_preprocess_cfg(model)
        transform = ImageTransform(
            size=cfg.get("size", 224),
            resize_mode=cfg.get("resize_mode", "shortest"),
            interpolation=cfg.get("interpolation", "bicubic"),
            mean=cfg.get("mean", open_clip.OPENAI_DATASET_MEAN),
            std=cfg.get("std", open_clip.OPENAI_DATASET_STD),
            fill=cfg.get("fill_color", 0) / 255,
        )
        super().__init__(model, tokenizer, transform, name=name, device=device)

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
                ``ViT-B-16-quickgelu``, ``ViT-B-16-SigLIP``, or one of discover's
                (:mod:`discover.nn.clip_archs`, e.g. ``ShapesCLIP-RN``, which
                ``discover train-clip`` trains).
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
        open_clip = import_extra("open_clip", "the open_clip embedder")

        _check_arch(open_clip, arch)
        checkpoint, preprocess, force_quick_gelu, label = _resolve_weights(
            open_clip, arch, os.fspath(pretrained), force_quick_gelu, preprocess_tag, cache_dir
        )
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
            raise InputError(
                f"open_clip: cannot load {arch!r} weights from {checkpoint}: "
                f"{type(error).__name__}: {str(error).split('. ')[0].splitlines()[0][:160]}. "
                "Expected an open_clip checkpoint (.pt/.bin/.safetensors) of that architecture"
            ) from None
        return cls(model, _offline_tokenizer(open_clip, arch), name=label, device=device)


def _check_arch(open_clip: Any, arch: str) -> None:
    """Refuse an architecture open_clip does not know (discover's own registered first)."""
    register_open_clip_archs()  # discover's own (e.g. the Shapes world's small CLIP)
    if arch not in open_clip.list_models():
        close = difflib.get_close_matches(arch, open_clip.list_models(), n=3, cutoff=0.6)
        hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
        raise InputError(
            f"open_clip: unknown architecture {arch!r}.{hint} See open_clip.list_models()."
        )


def _resolve_weights(
    open_clip: Any,
    arch: str,
    pretrained: str,
    force_quick_gelu: bool,
    preprocess_tag: str | None,
    cache_dir: str | None,
) -> tuple[Path, dict[str, Any], bool, str]:
    """``(checkpoint file, preprocessing, force_quick_gelu, label)`` of ``pretrained``: a
    pretrained tag found in the local caches (its own preprocessing and QuickGELU), or a
    weights file or folder (the preprocessing of ``preprocess_tag`` or the architecture)."""
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
    return checkpoint, preprocess, force_quick_gelu, label


def _offline_tokenizer(open_clip: Any, arch: str) -> Any:
    """The tokenizer of ``arch``, or an error saying it must be in the Hugging Face cache."""
    try:
        return open_clip.get_tokenizer(arch)
    except Exception as err:  # HF tokenizers of some archs need a download
        raise InputError(
            f"open_clip: the tokenizer of {arch!r} is not available offline "
            f"({err}); put it in the Hugging Face cache first"
        ) from err


def how_to_get_weights(arch: str) -> str:
    """How to bring open_clip weights for ``arch`` onto an offline machine (for error messages)."""
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
            f"{path}. {how_to_get_weights(arch)}"
        )
    open_clip = import_extra("open_clip", "the open_clip embedder")

    if path.suffix or "/" in pretrained or os.sep in pretrained:
        reason = f"{path} is not a file"
    else:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none"
        reason = f"{pretrained!r} is neither a file nor a pretrained tag of {arch} (tags: {tags})"
    raise FileNotFoundError(
        f"open_clip: weights for {arch!r} not found: {reason}. {how_to_get_weights(arch)}"
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
        f"{how_to_get_weights(arch)}"
    )


def _tag_preprocess(arch: str, tag: str | None) -> dict[str, Any]:
    """Preprocessing for a weights file: from ``tag``, or from the arch's tags if they agree."""
    open_clip = import_extra("open_clip", "the open_clip embedder")

    tags = [tag] if tag else open_clip.list_pretrained_tags_by_model(arch)
    configs = {}
    for name in tags:
        cfg = open_clip.get_pretrained_cfg(arch, name)
        if not cfg:
            raise InputError(
                f"open_clip: {name!r} is not a pretrained tag of {arch} (tags: "
                f"{', '.join(open_clip.list_pretrained_tags_by_model(arch))})"
            )
        preprocess = {k: cfg[k] for k in _PREPROCESS_KEYS if k in cfg}
        configs[json_sha256(preprocess)] = preprocess
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


class HFCLIPEmbedder(_LocalCLIP):
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

    _kind, _title = "hf", "hf CLIP"

    @property
    def max_length(self) -> int:
        """The text encoder's context length (tokens)."""
        return int(self.model.config.text_config.max_position_embeddings)

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
        transformers = import_extra("transformers", "the hf: embedder")
        AutoImageProcessor, AutoTokenizer, CLIPModel = (
            transformers.AutoImageProcessor,
            transformers.AutoTokenizer,
            transformers.CLIPModel,
        )

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
