"""What the benchmark scripts share: the machine, provenance, worker processes, the timing
harness, number formats, the report header, Markdown tables and JSON results.

Every script in ``benchmarks/`` runs as ``python benchmarks/NAME.py``, so this folder is
``sys.path[0]`` and ``from common import ...`` works without touching ``sys.path``.

* :func:`cpu_model`, :func:`load_average`, :func:`memory_gb`, :func:`cpu_snapshot`,
  :func:`other_cpu_share` and :class:`Window`: the machine a measurement ran on and how busy
  it was;
* :func:`machine_description`: all of it in one sentence (CPU, cores, load, torch, processes);
* :func:`command_line`, :func:`portable`, :func:`git`, :func:`git_head`, :func:`git_dirty`, :func:`utc_date`,
  :func:`now_iso` and :func:`provenance`: how and from which code a result was produced;
  :func:`measured_files` adds which files of the package a measurement ran;
* :func:`process_pool`: spawned worker processes with a set number of torch threads each;
* :func:`rotation`, :func:`timed_rounds`, :func:`median_seconds`, :func:`quartiles`,
  :func:`round_ratios` and :func:`paired_ratio`: the timing harness (round-robin rounds with a
  rotating start, warm-up rounds dropped; medians, quartiles and per-round ratios);
* :func:`mean_of`, :func:`ci95_half_width`, :func:`pm`, :func:`mean_std`, :func:`interval`,
  :func:`median_iqr`, :func:`percent` and :func:`pass_fail`: how the reports write numbers;
* :func:`report_header`: the lines every results page starts with;
* :func:`markdown_table`: a header and rows as the lines of a Markdown table;
* :func:`write_json`: a results file, written atomically (an interrupted write leaves the
  previous file).
"""

from __future__ import annotations

import concurrent.futures
import datetime as _dt
import hashlib
import json
import math
import multiprocessing
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "REPO",
    "cpu_model",
    "load_average",
    "memory_gb",
    "cpu_snapshot",
    "other_cpu_share",
    "Window",
    "machine_description",
    "gpu_name",
    "gpu_line",
    "command_line",
    "portable",
    "git",
    "git_head",
    "git_dirty",
    "utc_date",
    "now_iso",
    "provenance",
    "measured_files",
    "set_threads",
    "process_pool",
    "rotation",
    "Rounds",
    "timed_rounds",
    "median_seconds",
    "quartiles",
    "round_ratios",
    "paired_ratio",
    "mean_of",
    "ci95_half_width",
    "pm",
    "mean_std",
    "interval",
    "median_iqr",
    "percent",
    "pass_fail",
    "report_header",
    "markdown_table",
    "write_json",
    "run_identity",
]

T = TypeVar("T")

REPO = Path(__file__).resolve().parent.parent


# -- the machine -------------------------------------------------------------------------------
def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average(digits: int = 2, sep: str = " ") -> str:
    """The 1, 5 and 15 minute load averages, e.g. ``"1.93 2.10 2.05"``; ``"n/a"`` if unknown.

    The default format is ``/proc/loadavg``'s own (two decimals, spaces).
    """
    try:
        loads = os.getloadavg()
    except OSError:
        return "n/a"
    return sep.join(f"{x:.{digits}f}" for x in loads)


def memory_gb() -> float:
    """Physical memory in GB (1e9 bytes)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9


def cpu_snapshot() -> tuple[float, float, float] | None:
    """(busy CPU seconds of the whole machine, CPU seconds of this process and its finished
    children, wall time) now; ``None`` without ``/proc/stat``."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # up to steal, no guest
    t = os.times()
    return busy, t.user + t.system + t.children_user + t.children_system, time.perf_counter()


def other_cpu_share(start: tuple[float, float, float] | None) -> float | None:
    """Fraction of the machine's CPU capacity that *other* processes used since ``start``
    (a :func:`cpu_snapshot`); ``None`` if either snapshot is missing."""
    end = cpu_snapshot()
    if start is None or end is None:
        return None
    wall = end[2] - start[2]
    others = (end[0] - start[0]) - (end[1] - start[1])
    return max(others, 0.0) / (wall * (os.cpu_count() or 1))


@dataclass
class Window:
    """How busy the machine was over a measurement: :meth:`open` it at the start (the load
    average and a :func:`cpu_snapshot`), :meth:`close` it at the end."""

    load_start: str
    snapshot: tuple[float, float, float] | None
    started: float

    @classmethod
    def open(cls) -> Window:
        return cls(load_average(), cpu_snapshot(), time.perf_counter())

    def close(self) -> dict[str, Any]:
        """``load_start`` and ``load_end`` (:func:`load_average`), ``other_cpu_share``
        (:func:`other_cpu_share`; ``None`` without ``/proc/stat``) and ``seconds`` (wall)."""
        return {
            "load_start": self.load_start,
            "load_end": load_average(),
            "other_cpu_share": other_cpu_share(self.snapshot),
            "seconds": time.perf_counter() - self.started,
        }


def machine_description(device: str = "cpu", *, threads: int = 1, jobs: int = 1) -> str:
    """One sentence: CPU, cores, load average now, torch, processes and threads, Python, GPU."""
    import torch

    gpu = f", {torch.cuda.get_device_name(0)}" if device.startswith("cuda") else ""
    return (
        f"{cpu_model()}, {os.cpu_count()} cores (load average at start "
        f"{load_average(1, ', ')}), torch {torch.__version__}, {jobs} run(s) at a time with "
        f"{threads} thread(s) each, {platform.python_implementation()} "
        f"{platform.python_version()}{gpu}"
    )


def gpu_name() -> str | None:
    """The first CUDA device's name, or None where torch sees no GPU."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def gpu_line(name: str | None, *, timed: str = "the CPU") -> str:
    """A report line that says whether there is a GPU column and why not."""
    if name is None:
        return (
            "- **GPU:** none on this machine (torch sees no CUDA device), so there is no GPU "
            "column; the figures are CPU figures."
        )
    return f"- **GPU:** `{name}` is present, but this benchmark timed {timed} only."


# -- provenance --------------------------------------------------------------------------------
def command_line(
    argv: Sequence[str] | None = None, python: str = "python", script: str | Path | None = None
) -> str:
    """The shell command that ran this script: ``python`` (or the interpreter given), the
    script (``script``, default as invoked) and ``argv`` (default: this process's
    arguments), shell-quoted, with machine paths made portable: a path inside the
    repository becomes repository-relative, the home folder ``~``."""
    args = sys.argv[1:] if argv is None else list(argv)
    return shlex.join([python, *(portable(a) for a in (str(script or sys.argv[0]), *args))])


def portable(text: str) -> str:
    """``text`` with the repository's absolute path removed and the home folder as ``~``.

    Example:
        >>> portable(str(REPO / "benchmarks" / "runs"))
        'benchmarks/runs'
    """
    for prefix, replacement in ((f"{REPO}/", ""), (str(REPO), "."), (str(Path.home()), "~")):
        text = text.replace(prefix, replacement)
    return text


def git(*args: str, cwd: Path = REPO) -> str | None:
    """``git ARGS`` in the repository: its stripped output, ``None`` if git fails."""
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_head(short: bool = True) -> str | None:
    """The commit checked out (abbreviated unless ``short=False``); ``None`` outside git."""
    return git("rev-parse", *(["--short"] if short else []), "HEAD")


def git_dirty(*paths: str) -> bool | None:
    """Whether the work tree (or only ``paths`` in it) has uncommitted changes."""
    status = git("status", "--porcelain", *paths)
    return None if status is None else bool(status)


def utc_date() -> str:
    """Now, to the minute: ``2025-01-31 14:05 UTC``."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def now_iso(utc: bool = True) -> str:
    """Now in ISO 8601 to the second, in UTC or in the local time zone (with its offset)."""
    now = _dt.datetime.now(_dt.UTC) if utc else _dt.datetime.now().astimezone()
    return now.isoformat(timespec="seconds")


def provenance(
    argv: Sequence[str] | None = None,
    *,
    python: str = "python",
    device: str = "cpu",
    threads: int = 1,
    jobs: int = 1,
    script: str | Path | None = None,
) -> dict[str, Any]:
    """How a result was produced: ``command``, ``git_head``, ``git_dirty`` (uncommitted changes
    under ``src/``), ``date`` (:func:`utc_date`), ``machine`` (:func:`machine_description`)
    and ``torch`` (its version)."""
    import torch

    return {
        "command": command_line(argv, python, script),
        "git_head": git_head(),
        "git_dirty": git_dirty("src"),
        "date": utc_date(),
        "machine": machine_description(device, threads=threads, jobs=jobs),
        "torch": torch.__version__,
    }


def measured_files(*files: str) -> dict[str, Any]:
    """Which code of the ``discover`` package a measurement ran, an addition to
    :func:`provenance` for a benchmark that times a few of its files: where ``discover`` was
    imported from (``discover_file``), the full commit checked out (``git_head``), and for each
    file (a path inside the package folder) its git blob id (``blob``), whether it is the
    file at HEAD (``matches_head``; ``None`` when git cannot tell) and the first commit that
    holds it (``first_commit``; ``None``: never committed); then ``PYTHONPATH``."""
    import discover

    init = Path(discover.__file__).resolve()
    rows = []
    for rel in files:
        data = (init.parent / rel).read_bytes()
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # git's blob id
        head_blob = git("rev-parse", f"HEAD:src/discover/{rel}")
        found = git("log", "--all", "--reverse", "--format=%h", f"--find-object={blob}")
        rows.append(
            {
                "file": rel,
                "blob": blob,
                "matches_head": None if head_blob is None else blob == head_blob,
                "first_commit": (found or "").split("\n")[0] or None,
            }
        )
    return {
        "discover_file": portable(str(init)),
        "git_head": git_head(short=False),
        "files": rows,
        "pythonpath": os.environ.get("PYTHONPATH"),
    }


# -- worker processes --------------------------------------------------------------------------
def set_threads(threads: int) -> None:
    """Use ``threads`` torch threads in this process (the initializer of :func:`process_pool`)."""
    import torch

    torch.set_num_threads(threads)


def process_pool(jobs: int, threads: int = 1) -> concurrent.futures.ProcessPoolExecutor:
    """``jobs`` worker processes (a ``with`` block shuts them down), each started fresh
    (``spawn``: no torch state or threads inherited) and using ``threads`` torch threads.

    What is submitted must be importable by name: a top-level function of the script (its
    workers import the script as ``__mp_main__``) or of a module.
    """
    return concurrent.futures.ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=set_threads,
        initargs=(threads,),
    )


# -- timing ------------------------------------------------------------------------------------
def rotation(names: Sequence[T], r: int) -> list[T]:
    """Round ``r``'s order of ``names``: rotated by one a round, so each goes first in turn.

    Example:
        >>> [rotation("abc", r) for r in range(4)]
        [['a', 'b', 'c'], ['b', 'c', 'a'], ['c', 'a', 'b'], ['a', 'b', 'c']]
    """
    k = r % len(names)
    return [*names[k:], *names[:k]]


@dataclass
class Rounds:
    """What :func:`timed_rounds` measured: per variant, one value a timed round."""

    seconds: dict[str, list[float]]
    cpu_seconds: dict[str, list[float]]  # this process's CPU time (all its threads)
    minor_faults: dict[str, list[int]]  # fresh memory being touched
    results: dict[str, Any]  # each variant's last result (``keep=True`` only)


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def timed_rounds(
    variants: Mapping[str, Callable[[], Any]],
    rounds: int,
    *,
    warmup: int = 0,
    orders: Sequence[Sequence[str]] | None = None,
    sync: Callable[[], None] | None = None,
    keep: bool = False,
) -> Rounds:
    """Call every variant once a round, round-robin, so that the machine's noise hits them
    alike: ``warmup`` rounds, dropped, then ``rounds`` timed ones.

    Each round's order is :func:`rotation` of the variants (counting the warm-up rounds),
    or ``orders[r]`` (one order a round, warm-up rounds first). ``sync`` runs before and after
    every call (a device synchronisation). With ``keep``, each variant's last result is kept
    in ``results`` (the previous one is let go before the next call).
    """
    names = list(variants)
    orders = [rotation(names, r) for r in range(warmup + rounds)] if orders is None else orders
    if len(orders) != warmup + rounds:
        raise ValueError(f"{len(orders)} orders for {warmup} + {rounds} rounds")
    out = Rounds({n: [] for n in names}, {n: [] for n in names}, {n: [] for n in names}, {})
    for r, order in enumerate(orders):
        for name in order:
            call = variants[name]
            if keep:
                out.results.pop(name, None)
            if sync is not None:
                sync()
            f0, c0, t0 = _minor_faults(), time.process_time(), time.perf_counter()
            if keep:
                out.results[name] = call()
            else:
                call()
            if sync is not None:
                sync()
            t1, c1, f1 = time.perf_counter(), time.process_time(), _minor_faults()
            if r >= warmup:
                out.seconds[name].append(t1 - t0)
                out.cpu_seconds[name].append(c1 - c0)
                out.minor_faults[name].append(f1 - f0)
    return out


def median_seconds(call: Callable[[], Any], calls: int = 3) -> float:
    """The median wall time of ``calls`` calls of ``call`` in a row."""
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def quartiles(values: Sequence[float]) -> dict[str, float]:
    """``median``, ``q1`` and ``q3`` of ``values`` (inclusive method; one value is all three)."""
    if len(values) < 2:
        return {"median": values[0], "q1": values[0], "q3": values[0]}
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": q2, "q1": q1, "q3": q3}


def round_ratios(num: Sequence[float], den: Sequence[float]) -> list[float]:
    """The per-round ratios ``num[r] / den[r]`` of two variants timed in the same rounds."""
    return [a / b for a, b in zip(num, den, strict=True)]


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> dict[str, float]:
    """:func:`quartiles` of the per-round ratios ``num / den``: a round's noise hits both."""
    return quartiles(round_ratios(num, den))


# -- numbers in reports ------------------------------------------------------------------------
def mean_of(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are not ``None``; ``None`` when there are none."""
    known = [v for v in values if v is not None]
    return statistics.fmean(known) if known else None


def ci95_half_width(values: Sequence[float]) -> float | None:
    """Half the width of the 95 % Student-t interval of the mean; ``None`` under two values."""
    if len(values) < 2:
        return None
    from scipy import stats

    t = float(stats.t.ppf(0.975, len(values) - 1))
    return t * statistics.stdev(values) / math.sqrt(len(values))


def pm(
    mean: float | None,
    std: float | None = None,
    *,
    scale: float = 1.0,
    digits: int = 2,
    none: str = "n/a",
) -> str:
    """``mean ± std``, both times ``scale``; the mean alone without a ``std``, ``none``
    without a mean.

    Example:
        >>> pm(0.9123, 0.0045, scale=100), pm(0.9123, scale=100), pm(None)
        ('91.23 ± 0.45', '91.23', 'n/a')
    """
    if mean is None:
        return none
    text = f"{scale * mean:.{digits}f}"
    return text if std is None else f"{text} ± {scale * std:.{digits}f}"


def mean_std(
    values: Sequence[float], *, scale: float = 1.0, digits: int = 2, empty: str = "-"
) -> str:
    """:func:`pm` of the mean and sample standard deviation of ``values`` (the value alone
    when there is one, ``empty`` when there is none)."""
    if not values:
        return empty
    std = statistics.stdev(values) if len(values) > 1 else None
    return pm(statistics.fmean(values), std, scale=scale, digits=digits)


def interval(
    mean: float,
    low: float | None = None,
    high: float | None = None,
    n: int | None = None,
    *,
    digits: int = 2,
) -> str:
    """A signed difference and its interval; ``(n=N)`` after it where ``n`` is given. With
    fewer than two pairs, or no bounds, the difference alone.

    Example:
        >>> interval(-0.4, -0.62, -0.18, 5), interval(-0.4, n=1), interval(0.1, 0.0, 0.2)
        ('-0.40 [-0.62, -0.18] (n=5)', '-0.40 (n=1)', '+0.10 [+0.00, +0.20]')
    """
    text = f"{mean:+.{digits}f}"
    if low is not None and high is not None and (n is None or n >= 2):
        text += f" [{low:+.{digits}f}, {high:+.{digits}f}]"
    return text if n is None else f"{text} (n={n})"


def median_iqr(median: float, q1: float, q3: float, digits: int = 2) -> str:
    """``median (q1-q3)``: a median and its interquartile range, e.g. ``12.3 (11.9-13.0)``."""
    return f"{median:.{digits}f} ({q1:.{digits}f}-{q3:.{digits}f})"


def percent(fraction: float | None, digits: int = 1, none: str = "n/a") -> str:
    """A fraction in percent without the sign: ``percent(0.1234)`` is ``"12.3"``."""
    return none if fraction is None else f"{100 * fraction:.{digits}f}"


def pass_fail(ok: bool) -> str:
    """``PASS`` or ``FAIL``: a measurement against its target."""
    return "PASS" if ok else "FAIL"


# -- results -----------------------------------------------------------------------------------
def report_header(
    title: str, meta: Mapping[str, Any], *, took: str = "", load_end: str | None = None
) -> list[str]:
    """The lines every results page starts with: the title, then from ``meta`` (a
    :func:`provenance`, or a mapping with its keys) the ``command`` that wrote it, the
    ``machine`` (with the load average at the start), the commit (``git_head``, and whether
    ``src/`` had uncommitted changes: ``git_dirty``) and the ``date``, which ``took`` follows
    (the wall time, say); then, where known, the load average at the end.

    Each line after the title ends in two spaces, a Markdown line break, so that the page's
    own lines may follow at once or after a blank line.
    """
    changes = " (uncommitted changes under src/)" if meta.get("git_dirty") else ""
    lines = [
        f"# {title}",
        "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {meta['machine']}  ",
        f"Commit: {meta.get('git_head') or 'n/a'}{changes}  ",
        f"Date: {meta['date']}{took}  ",
    ]
    if load_end:
        lines.append(f"Load average at end: {load_end}  ")
    return lines


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """The lines of a Markdown table: ``| a | b |``, ``|---|---|``, then one line per row.

    Cells are written with ``str``; every row must have as many cells as the header.
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(cell) for cell in row]
        if len(cells) != len(header):
            raise ValueError(f"{len(cells)} cells for {len(header)} columns: {cells}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_json(path: Path | str, data: Any) -> Path:
    """Write ``data`` as indented JSON (anything else via ``str``) to ``path``, atomically:
    the file is complete or still the previous one. Returns the path."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def run_identity(run: Path | str) -> str | None:
    """A short content hash of a finished training run's ``record.json`` (``None`` when it
    has none): a measurement keyed by it is stale once the run is trained again."""
    import hashlib

    record = Path(run) / "record.json"
    if not record.is_file():
        return None
    return hashlib.sha256(record.read_bytes()).hexdigest()[:16]
