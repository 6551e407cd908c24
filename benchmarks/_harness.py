"""Helpers shared by the benchmarks: progress lines, percentiles, tables, the JSON report.

The benchmarks are scripts (``python benchmarks/NAME.py``), so this module is imported as
``_harness`` from the scripts' own directory.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def progress(tag: str, message: str) -> None:
    """A progress line on stderr, so stdout stays the table."""
    print(f"[{tag}] {message}", file=sys.stderr, flush=True)


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of samples, nearest rank; 0.0 for no samples."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(samples: Sequence[float], scale: float = 1e6, unit: str = "us") -> dict[str, float]:
    """p50/p99/mean of samples (seconds), scaled (default: microseconds), and n."""
    ordered = sorted(samples)
    return {
        f"p50_{unit}": percentile(ordered, 0.50) * scale,
        f"p99_{unit}": percentile(ordered, 0.99) * scale,
        f"mean_{unit}": (statistics.fmean(ordered) if ordered else 0.0) * scale,
        "n": len(ordered),
    }


def machine() -> dict[str, Any]:
    """What the numbers depend on: CPUs (and those the process may run on, when it is
    pinned: ``taskset -c 1`` changes every row, docs/operations.md) and library
    versions."""
    versions = {}
    for dist in ("pykka", "lmdb", "msgpack"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    facts: dict[str, Any] = {"cpus": os.cpu_count()}
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    if allowed is not None and len(allowed) != os.cpu_count():
        facts["pinned_to"] = allowed
    return {**facts, "python": platform.python_version(), **versions}


def machine_facts() -> dict[str, Any]:
    """:func:`machine` plus what RESULTS.md states: CPU model, memory, OS, peer versions."""
    import sqlite3

    facts = machine()
    for dist in ("dbos", "huey"):
        try:
            facts[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            facts[dist] = None
    facts["sqlite"] = sqlite3.sqlite_version
    facts["platform"] = platform.platform()
    facts["cpu_model"] = _proc_field("/proc/cpuinfo", "model name")
    facts["mem_total"] = _proc_field("/proc/meminfo", "MemTotal")
    return facts


def _proc_field(path: str, name: str) -> str | None:
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """Resident memory of this process now, in MiB (Linux /proc; 0.0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


def cell(value: Any) -> str:
    """One table cell: floats with thousands separators and no decimals when >= 100, with
    two decimals otherwise; ints with thousands separators; anything else with ``str``."""
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def ratio(value: float) -> str:
    """A ratio against a target, to three significant digits: 0.148x is not shown as
    0.15x beside a target of 0.15 that it missed."""
    return f"{value:.3g}x"


def render_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table of ``cell`` values: first column left-aligned, the rest
    right-aligned."""

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]

    def line(values: Sequence[str]) -> str:
        first = values[0].ljust(widths[0])
        rest = (v.rjust(w) for v, w in zip(values[1:], widths[1:], strict=True))
        return "  ".join((first, *rest))

    out = [line(list(header)), "-" * (sum(widths) + 2 * (len(widths) - 1))]
    out += [line(r) for r in cells]
    return "\n".join(out)


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Write the JSON report (creating its directory) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
