"""What the benchmark scripts share: the machine, provenance, Markdown tables and JSON results.

Every script in ``benchmarks/`` runs as ``python benchmarks/NAME.py``, so this folder is
``sys.path[0]`` and ``from common import ...`` works without touching ``sys.path``.

* :func:`cpu_model`, :func:`load_average`, :func:`memory_gb`, :func:`cpu_snapshot` and
  :func:`other_cpu_share`: the machine a measurement ran on and how busy it was;
* :func:`machine_description`: all of it in one sentence (CPU, cores, load, torch, processes);
* :func:`command_line`, :func:`portable`, :func:`git`, :func:`git_head`, :func:`git_dirty`, :func:`utc_date`,
  :func:`now_iso` and :func:`provenance`: how and from which code a result was produced;
* :func:`markdown_table`: a header and rows as the lines of a Markdown table;
* :func:`write_json`: a results file, written atomically (an interrupted write leaves the
  previous file).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "REPO",
    "cpu_model",
    "load_average",
    "memory_gb",
    "cpu_snapshot",
    "other_cpu_share",
    "machine_description",
    "command_line",
    "portable",
    "git",
    "git_head",
    "git_dirty",
    "utc_date",
    "now_iso",
    "provenance",
    "markdown_table",
    "write_json",
    "run_identity",
]

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


# -- results -----------------------------------------------------------------------------------
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
