"""discover's C kernels: how they are compiled, cached and loaded (:class:`CKernel`)."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from discover._utils.cache import cache_root

__all__ = ["CKernel", "C_FLAGS", "C_FLAGS_ENV", "LINK_FLAGS", "c_flags", "load_c_library"]


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
    from importlib import resources

    code = resources.files(package).joinpath(source).read_bytes()
    compiler = os.environ.get("CC", "gcc")
    version = _compiler_version(compiler)
    if version is None:
        return None
    compile_flags = c_flags()
    stem = Path(source).stem
    target = cache_root() / "kernels" / f"{stem}-{_build_key(code, compile_flags, version)}.so"
    if not target.is_file():
        errors = _build(compiler, compile_flags, code, stem, target)
        if errors is not None:
            warnings.warn(
                f"discover: could not compile the {what} ({compiler}); using the torch "
                f"code. Compiler output:\n{errors[-2000:]}",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
    return ctypes.CDLL(str(target))


def _compiler_version(compiler: str) -> str | None:
    """The first line of ``compiler --version``; ``None`` without that compiler."""
    import shutil
    import subprocess

    if shutil.which(compiler) is None:
        return None
    try:
        return subprocess.run(
            [compiler, "--version"], capture_output=True, text=True, check=True
        ).stdout.splitlines()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        return None


def _build_key(code: bytes, compile_flags: tuple[str, ...], version: str) -> str:
    """What the build depends on, hashed: source, flags, compiler, CPU features, machine."""
    import hashlib
    import platform

    flags = " ".join([*compile_flags, "|", *LINK_FLAGS]).encode()
    parts = [code, flags, version.encode(), _cpu_flags().encode()]
    return hashlib.sha256(b"\0".join([*parts, platform.machine().encode()])).hexdigest()[:20]


def _build(
    compiler: str, compile_flags: tuple[str, ...], code: bytes, stem: str, target: Path
) -> str | None:
    """Compile and link the C ``code`` into ``target`` (renamed into place when complete);
    the compiler's error output when that fails, else ``None``."""
    import subprocess
    import tempfile

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
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
            return result.stderr
        os.replace(built, target)
    return None


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
