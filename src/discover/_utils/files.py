"""Atomic files and folders, and JSON results read back.

Every result discover writes goes through :func:`atomic_path` (one file), :func:`write_files`
(several files of one folder) or :func:`staged_dir` (a whole folder): the new content is
written under a temporary name, flushed to disk and renamed into place, and the temporary
is removed on any failure (disk full included), so a reader sees the old complete result or
the new complete result, never a mix.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from discover.errors import InputError

__all__ = [
    "Writer",
    "atomic_path",
    "read_json",
    "read_saved_result",
    "replace_dir",
    "require_file",
    "staged_dir",
    "write_atomic",
    "write_files",
]

T = TypeVar("T")


def _temp_name(path: Path, tag: str = "tmp") -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.{tag}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system syncs folders
        _fsync(path)


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces ``path`` when the block succeeds.

    Write the new content to the yielded path; it is flushed to disk and renamed over
    ``path`` (``os.replace``) at the end of the block. On any failure, disk full included,
    the temporary file is removed and ``path`` is unchanged.

    Example:
        >>> with atomic_path("out/P.pt") as tmp:  # doctest: +SKIP
        ...     torch.save(P, tmp)
    """
    path = Path(path)
    tmp = _temp_name(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; see :func:`atomic_path`."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return path


Writer = Callable[[Path], None]
"""Writes one file's content to the path it is given."""


def _write_one(path: Path, content: str | bytes | Writer) -> None:
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        content(path)


def write_files(folder: str | os.PathLike[str], files: Mapping[str, str | bytes | Writer]) -> Path:
    """Write several files of ``folder`` as one unit, as far as a shared folder allows.

    Every file is first written completely under a temporary name (text, bytes, or a
    callable that writes to the path it gets); only when all of them are on disk are they
    renamed into place, in the given order. A failure while writing (disk full) leaves every
    old file unchanged and no temporary behind. Use :func:`staged_dir` where the whole
    folder may be replaced.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    temps: dict[str, Path] = {}
    try:
        for name, content in files.items():
            temps[name] = _temp_name(folder / name)
            _write_one(temps[name], content)
            _fsync(temps[name])
        for name, tmp in temps.items():
            os.replace(tmp, folder / name)
    finally:
        for tmp in temps.values():
            _unlink(tmp)
    _fsync_dir(folder)
    return folder


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns ``False`` where the system or file system cannot (the caller then renames twice).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    renameat2.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def replace_dir(new: str | os.PathLike[str], out: str | os.PathLike[str]) -> None:
    """Put the folder ``new`` in place of ``out`` (which may be missing); the old one is deleted.

    On Linux both are exchanged in one step, so a reader always finds a complete ``out``;
    elsewhere ``out`` is renamed aside first and restored if ``new`` cannot take its place.
    """
    new, out = Path(new), Path(out)
    while not out.exists():
        try:
            os.rename(new, out)
            _fsync_dir(out.parent)
            return
        except OSError as error:  # another writer created ``out`` since we looked: swap instead
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    if _exchange(new, out):
        shutil.rmtree(new, ignore_errors=True)  # now the old folder
    else:
        old = _temp_name(out, "old")
        os.rename(out, old)
        try:
            os.rename(new, out)
        except BaseException:
            os.rename(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(out.parent)


@contextlib.contextmanager
def staged_dir(out: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh staging folder beside ``out`` that replaces ``out`` when the block succeeds.

    Write the complete new folder into the yielded path; at the end of the block its files
    are flushed to disk and it is swapped in with :func:`replace_dir`. On any failure the
    staging folder is deleted and ``out`` is unchanged.

    Example:
        >>> with staged_dir("runs/u8/dissection") as folder:  # doctest: +SKIP
        ...     (folder / "dissection.json").write_text(text)
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = _temp_name(out)
    staging.mkdir()
    try:
        yield staging
        for file in staging.rglob("*"):
            if file.is_file():
                _fsync(file)
        replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# -- reading results back ----------------------------------------------------------------------
def require_file(folder: str | os.PathLike[str], name: str, what: str, create: str) -> Path:
    """``folder / name``, or a ``FileNotFoundError`` saying that ``folder`` is not ``what``
    and which command (``create``) makes one.

    Example:
        >>> require_file("runs/x", "config.json", "a training run", "discover train")  # doctest: +SKIP
    """
    path = Path(folder) / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} is not {what}: {path} is missing (create one with `{create}`)"
        )
    return path


def read_json(
    path: str | os.PathLike[str], what: str = "JSON file", *, name: str | None = None
) -> Any:
    """Parse a JSON file; a missing or broken file is an error naming it. With ``name``,
    ``path`` may also be the folder that holds the file ``name``.

    Example:
        >>> read_json("runs/demo/cvn/config.json", "run configuration")  # doctest: +SKIP
    """
    path = Path(path)
    if name is not None and path.is_dir():
        path = path / name
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{what} {path} is not valid JSON ({error}); was it cut short?") from None


def read_saved_result(
    out: str | os.PathLike[str], what: str, name: str, parse: Callable[[Any], T], redo: str
) -> tuple[T, dict[str, Any], Path]:
    """A result saved as JSON (the folder ``out`` holding ``name``, or the file itself):
    ``(parse(data), data["meta"], folder)``; a file that ``parse`` cannot read is an
    :class:`~discover.errors.InputError` naming it and the command that recomputes it.

    Example:
        >>> layers, meta, folder = read_saved_result(  # doctest: +SKIP
        ...     "runs/u4/dissection", "localization report", "localization.json",
        ...     lambda data: data["layers"], "discover eval-descriptions D --localization")
    """
    data = read_json(out, what, name=name)
    try:
        parsed = parse(data)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise InputError(
            f"{what} {out} cannot be read ({type(error).__name__}: {error}): the file is damaged "
            f"or not a {what}; compute it again with `{redo}`"
        ) from None
    folder = Path(out) if Path(out).is_dir() else Path(out).parent
    return parsed, dict(data.get("meta") or {}), folder
