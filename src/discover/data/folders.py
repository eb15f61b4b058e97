"""User data on disk: image folders and torchvision datasets, as ``uint8`` RGB tensors.

:class:`RobustImageFolder` is torchvision's ``ImageFolder`` that follows links safely, skips and
counts undecodable files (or raises :class:`UnreadableImageError`) and is fingerprinted by
content, with a digest index remembered under the cache root; :class:`TorchvisionImages` wraps
CIFAR-10/100, Places365 and ImageNet found on disk. Every image mode is converted to RGB here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import operator
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder
from torchvision.transforms.v2.functional import pil_to_tensor

from discover._utils import cache_root
from discover.errors import InputError

__all__ = [
    "MAX_IMAGE_PIXELS",
    "ImageTooLargeError",
    "RobustImageFolder",
    "UnreadableImageError",
    "TorchvisionImages",
    "open_image",
]

MAX_IMAGE_PIXELS = 50_000_000
"""The largest image discover decodes (width x height; 50 megapixels, above an 8K frame).

A probe or explained image above it is skipped with the reason, as an undecodable file is,
before any pixel is decoded: a small file can declare a huge image (a 17 KB PNG of
12000 x 12000 costs 2.6 GB to decode). Pillow's own bomb limit (about 179 megapixels) is
far above it. Set ``discover.data.folders.MAX_IMAGE_PIXELS`` to change it."""

_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
_BACKGROUND = 255  # transparent pixels are composited onto white
_RACY_NS = 2_000_000_000  # files changed this recently are hashed again next time (racy git)


def _to_rgb(image: Any) -> torch.Tensor:
    """A PIL image of any mode as a ``uint8`` RGB tensor ``(3, H, W)``.

    16-bit grey is scaled to 8 bits (``v / 257``, rounded), 32-bit integer and float images are
    read on the 0-255 scale (clipped), CMYK, YCbCr and HSV are converted by Pillow, and
    transparency (an alpha channel or a palette / colour-key ``transparency``) is composited
    onto white.
    """
    mode = image.mode
    if mode.startswith("I;16"):
        grey = np.asarray(image).astype(np.float64) / 257.0
        return torch.from_numpy(np.rint(grey).astype(np.uint8)).expand(3, -1, -1).contiguous()
    if mode in ("I", "F"):
        grey = np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
        return torch.from_numpy(grey).expand(3, -1, -1).contiguous()
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint32)
        alpha = rgba[..., 3:]
        rgb = (rgba[..., :3] * alpha + _BACKGROUND * (255 - alpha) + 127) // 255
        return torch.from_numpy(rgb.astype(np.uint8)).permute(2, 0, 1).contiguous()
    return pil_to_tensor(image.convert("RGB"))


class UnreadableImageError(InputError):
    """An image file could not be decoded (or a :class:`RobustImageFolder` image no longer
    can be when it is loaded)."""


class ImageTooLargeError(UnreadableImageError):
    """An image file declares more pixels than :data:`MAX_IMAGE_PIXELS`."""


@contextlib.contextmanager
def open_image(path: str | os.PathLike[str] | Any) -> Iterator[Any]:
    """``PIL.Image.open(path)``, refused before decoding when the image declares more than
    :data:`MAX_IMAGE_PIXELS` pixels (:class:`ImageTooLargeError`).

    Example:
        >>> with open_image("photo.jpg") as image:  # doctest: +SKIP
        ...     rgb = image.convert("RGB")
    """
    from PIL import Image

    with warnings.catch_warnings():  # the ceiling below is discover's word on the size
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        opened = Image.open(path)
    with opened as image:
        width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise ImageTooLargeError(
                f"{width} x {height} pixels, above discover's ceiling of "
                f"{MAX_IMAGE_PIXELS:,} (discover.data.folders.MAX_IMAGE_PIXELS)"
            )
        yield image


def _read_rgb(path: str) -> torch.Tensor:
    with open_image(path) as image:
        return _to_rgb(image)


def _stat_key(stat: os.stat_result) -> list[int]:
    """What must be unchanged for a remembered digest to hold: size, times, inode, device.

    ``ctime`` is part of it: writing a file or restoring its mtime with ``os.utime`` changes
    it, and no user call can set it back.
    """
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, stat.st_dev]


class _DigestIndex:
    """SHA-256 and decode verdict of the files of one folder, remembered across runs.

    A JSON file under ``cache_root()/digests``, keyed by absolute path; an entry is used only
    while the file's :func:`_stat_key` is unchanged. An unreadable, foreign or stale index is
    ignored; the index is rewritten atomically (temporary file in the same folder, then
    ``os.replace``) with the entries of the current files only.
    """

    FORMAT = 1

    def __init__(self, folder: Path, enabled: bool = True) -> None:
        from PIL import __version__ as pillow

        name = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:32]
        self.path = cache_root() / "digests" / f"{name}.json" if enabled else None
        # decode verdicts hold for one Pillow version and one pixel ceiling
        self.pillow = f"{pillow} max {MAX_IMAGE_PIXELS}"
        self.entries: dict[str, dict[str, Any]] = {}
        self.changed = False
        if self.path is not None:
            try:
                data = json.loads(self.path.read_text())
                if data["format"] == self.FORMAT and data["pillow"] == self.pillow:
                    self.entries = {str(k): dict(v) for k, v in data["files"].items()}
            except FileNotFoundError:
                pass
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                self.changed = True  # damaged or foreign: rewrite it

    def get(self, path: str, stat: os.stat_result) -> dict[str, Any] | None:
        entry = self.entries.get(path)
        if entry is None or entry.get("stat") != _stat_key(stat):
            return None
        sha, error = entry.get("sha256"), entry.get("error")
        valid = isinstance(sha, str) and len(sha) == 64 and isinstance(error, (str, type(None)))
        return entry if valid else None

    def put(self, path: str, stat: os.stat_result, **values: Any) -> None:
        key = _stat_key(stat)
        if max(stat.st_mtime_ns, stat.st_ctime_ns) > time.time_ns() - _RACY_NS:
            self.entries.pop(path, None)  # may change again within the clock's resolution
            return
        entry = self.entries.get(path)
        self.entries[path] = {**(entry if entry and entry.get("stat") == key else {}), **values}
        self.entries[path]["stat"] = key
        self.changed = True

    def save(self, keep: Sequence[str]) -> None:
        """Write the entries of ``keep`` (the current files) when anything changed."""
        if self.path is None or not (self.changed or set(self.entries) - set(keep)):
            return
        data = {
            "format": self.FORMAT,
            "pillow": self.pillow,
            "files": {p: self.entries[p] for p in keep if p in self.entries},
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(
                "w", dir=self.path.parent, prefix=f".{self.path.name}.", delete=False
            ) as tmp:
                json.dump(data, tmp)
            os.replace(tmp.name, self.path)
        except OSError as err:
            warnings.warn(f"RobustImageFolder: cannot write {self.path} ({err})", stacklevel=4)
        self.changed = False


def _examine(path: str, decode: bool) -> dict[str, Any]:
    """Stream ``path`` through SHA-256 and, when ``decode``, decode it once."""
    from PIL import Image

    with open(path, "rb") as file:
        digest = hashlib.sha256()
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
        result: dict[str, Any] = {"sha256": digest.hexdigest()}
        if decode:
            file.seek(0)
            try:
                with open_image(file) as image:
                    _to_rgb(image)
            except ImageTooLargeError as err:
                result["error"] = f"too large: {err}"
            except Image.UnidentifiedImageError:
                result["error"] = "not an image file Pillow can identify"
            except Exception as err:  # decoders raise many error types
                result["error"] = f"{type(err).__name__}: {err}"
            else:
                result["error"] = None
    return result


class RobustImageFolder(ImageFolder):
    """``root/<class>/<image>`` folders as ``uint8`` RGB tensors; unreadable files are skipped.

    Files are found with symbolic links followed: a directory reached twice (a link loop) is
    walked once, and a file reached through several paths (links, hard links) is one sample,
    listed under its own path when it has one inside ``root`` (``duplicates`` maps the other
    paths to it). Every image mode is converted to RGB (see :func:`_to_rgb`).

    With ``verify="full"`` (the default) every file is decoded once when the data set is built,
    and the ones that fail are left out, so the data set holds exactly the readable images.
    ``skipped`` (path -> reason) lists them; it is fixed at construction and is the one count
    that warnings, ``dissection.json``, training runs and reports show. The SHA-256 of each
    file and its verdict are remembered under ``cache_root()/digests`` while its size, times
    and inode are unchanged, so building again is quick. ``"header"`` only checks the file
    structure and ``"none"`` nothing: faster, but an image that then fails to decode raises
    :class:`UnreadableImageError` when loaded (it is never replaced by another image).

    Args:
        root: the folder holding one sub-folder per class.
        transform: applied to the ``uint8`` image tensor.
        verify: ``"full"``, ``"header"`` or ``"none"``.
        digest_cache: remember digests and verdicts under the cache root.

    Example:
        >>> ds = RobustImageFolder("~/data/places365/val")  # doctest: +SKIP
        >>> len(ds.skipped), ds.class_names[:2]  # doctest: +SKIP
        (0, ['airfield', 'airplane_cabin'])
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable[[torch.Tensor], Any] | None = None,
        verify: Literal["none", "header", "full"] = "full",
        digest_cache: bool = True,
    ) -> None:
        if verify not in ("none", "header", "full"):
            raise InputError(f"RobustImageFolder: verify must be none/header/full, got {verify!r}")
        path = Path(root).expanduser()
        layout = (
            "expected an ImageFolder layout: one sub-folder per class holding its images, "
            "e.g. root/dog/0001.jpg, root/cat/0002.png"
        )
        if not path.is_dir():
            raise FileNotFoundError(f"RobustImageFolder: {path} is not a directory; {layout}")
        self.skipped: dict[str, str] = {}
        self.duplicates: dict[str, str] = {}
        try:
            super().__init__(str(path), transform=transform, loader=_read_rgb)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"RobustImageFolder: {path}: {err}; {layout}") from err
        self.class_names: list[str] = list(self.classes)
        self.verify = verify
        self.digest_cache = digest_cache
        if verify != "none":
            self._verify(verify)
        if self.skipped:
            warnings.warn(
                f"RobustImageFolder: skipped {len(self.skipped)} unreadable image(s) under "
                f"{self.root}, e.g. {next(iter(self.skipped))} "
                f"({next(iter(self.skipped.values()))})",
                stacklevel=2,
            )
        if not self.samples:
            raise FileNotFoundError(f"RobustImageFolder: no readable image under {self.root}")

    def make_dataset(  # type: ignore[override]
        self,
        directory: str | Path,
        class_to_idx: dict[str, int] | None = None,
        extensions: tuple[str, ...] | None = None,
        is_valid_file: Callable[[str], bool] | None = None,
        allow_empty: bool = False,
    ) -> list[tuple[str, int]]:
        """Samples in sorted order, symlinks followed without loops, each file once."""
        from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

        if class_to_idx is None:
            _, class_to_idx = self.find_classes(str(directory))
        valid = is_valid_file or (
            lambda p: has_file_allowed_extension(p, extensions or IMG_EXTENSIONS)
        )
        first: dict[tuple[int, int], int] = {}  # (device, inode) -> index in samples
        folders = {name: _identity(os.path.join(directory, name)) for name in class_to_idx}
        folders[""] = _identity(str(directory))
        samples: list[tuple[str, int]] = []
        empty = []
        for name in sorted(class_to_idx):
            found = False
            others = {key for other, key in folders.items() if other != name}
            for file in _walk(os.path.join(directory, name), valid, others):
                found = True
                try:
                    stat = os.stat(file)
                except OSError as err:  # e.g. a broken symbolic link
                    self.skipped[file] = f"{type(err).__name__}: {err}"
                    continue
                key = (stat.st_dev, stat.st_ino)
                if key not in first:
                    first[key] = len(samples)
                    samples.append((file, class_to_idx[name]))
                    continue
                kept = samples[first[key]][0]
                if not _is_own_path(kept, directory) and _is_own_path(file, directory):
                    samples[first[key]] = (file, class_to_idx[name])
                    kept, file = file, kept
                self.duplicates[file] = kept
            if not found:
                empty.append(name)
        if empty and not allow_empty:
            raise FileNotFoundError(f"found no image file for the classes {', '.join(empty)}")
        return samples

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, target = self.samples[index]
        try:
            image = self.loader(path)
        except Exception as err:  # decoders raise many error types
            hint = (
                "it decoded when the data set was built, so it changed since: build it again"
                if self.verify == "full"
                else "build the data set with verify='full' (the default) to skip such files"
            )
            raise UnreadableImageError(
                f"RobustImageFolder: cannot decode {path} ({type(err).__name__}: {err}); {hint}"
            ) from err
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target

    def fingerprint(self) -> str:
        """SHA-256 of every sample's bytes and label, in order: caches key on it.

        File contents are hashed (streamed); names, sizes and times only decide whether a
        digest remembered under ``cache_root()/digests`` can be reused.
        """
        results = self._examine_all(decode=False)
        digest = hashlib.sha256(b"RobustImageFolder\n")
        for path, target in self.samples:
            digest.update(f"{target} {results[path]['sha256']}\n".encode())
        return digest.hexdigest()

    def _examine_all(self, decode: bool) -> dict[str, dict[str, Any]]:
        """Digest (and, when ``decode``, verdict) of every sample, from the index if fresh."""
        index = _DigestIndex(Path(self.root), enabled=self.digest_cache)
        results: dict[str, dict[str, Any]] = {}
        todo: list[tuple[str, os.stat_result]] = []
        for path, _ in self.samples:
            try:
                stat = os.stat(path)
            except OSError as err:
                raise FileNotFoundError(f"RobustImageFolder: {path} has gone ({err})") from err
            entry = index.get(os.path.abspath(path), stat)
            if entry is not None and "sha256" in entry and (not decode or "error" in entry):
                results[path] = entry
            else:
                todo.append((path, stat))
        workers = min(8, os.cpu_count() or 1, len(todo))
        if todo:
            with ThreadPoolExecutor(max(workers, 1)) as pool:
                done = pool.map(lambda item: _examine(item[0], decode), todo)
                for (path, stat), result in zip(todo, done, strict=True):
                    index.put(os.path.abspath(path), stat, **result)
                    results[path] = result
        index.save([os.path.abspath(path) for path, _ in self.samples])
        return results

    def _verify(self, mode: str) -> None:

        if mode == "full":
            results = self._examine_all(decode=True)
            errors = {path: results[path].get("error") for path, _ in self.samples}
        else:
            errors = {}
            for path, _ in self.samples:
                try:
                    with open_image(path) as image:
                        image.verify()
                except Exception as err:  # see __getitem__
                    errors[path] = f"{type(err).__name__}: {err}"
        self.skipped.update({path: reason for path, reason in errors.items() if reason})
        self.samples = self.imgs = [s for s in self.samples if not errors.get(s[0])]
        self.targets = [target for _, target in self.samples]


def _identity(path: str) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _walk(
    directory: str, valid: Callable[[str], bool], exclude: set[tuple[int, int] | None]
) -> list[str]:
    """Files under ``directory`` (links followed), sorted: a directory's files, then its
    sub-directories. A directory reached again through a link, or one in ``exclude`` (the
    root and the other classes), is not walked."""
    seen = set(exclude)
    files: list[str] = []

    def visit(folder: str) -> None:
        try:
            stat = os.stat(folder)
            if (stat.st_dev, stat.st_ino) in seen:
                return
            seen.add((stat.st_dev, stat.st_ino))
            entries = sorted(os.scandir(folder), key=operator.attrgetter("name"))
        except OSError:
            return
        folders = []
        for entry in entries:
            try:
                is_dir = entry.is_dir()  # follows links
            except OSError:
                is_dir = False
            if is_dir:
                folders.append(entry.path)
            elif valid(entry.path):
                files.append(entry.path)
        for sub in folders:
            visit(sub)

    visit(directory)
    return files


def _is_own_path(path: str, root: str | Path) -> bool:
    """Whether ``path`` reaches its file through no link below ``root``."""
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    return os.path.realpath(path) == os.path.join(os.path.realpath(root), relative)


class TorchvisionImages(Dataset):
    """A torchvision dataset returning PIL images, turned into ``uint8`` RGB tensors.

    Example:
        >>> from torchvision.datasets import CIFAR10
        >>> raw = CIFAR10("~/data/cifar", train=False)  # doctest: +SKIP
        >>> ds = TorchvisionImages(raw, raw.classes)  # doctest: +SKIP
    """

    def __init__(
        self,
        dataset: Dataset,
        class_names: Sequence[str],
        transform: Callable[[torch.Tensor], Any] | None = None,
    ) -> None:
        self.dataset = dataset
        self.class_names = list(class_names)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, target = self.dataset[index]
        image = _to_rgb(image)
        if self.transform is not None:
            image = self.transform(image)
        return image, target
