"""``benchmarks/RESULTS.md``, written from a peers.py report (never edited by hand).

The analysis section (which cost dominates, what would reach the targets) comes from
``ANALYSIS.md`` next to this file, written from profiles; it is copied in as it is, so
the figures in the tables and the reasoning stay in one generated page.

Other benchmarks (``ray_host.py --write``, and the sections measured by hand with
``scale.py``, ``devices.py``, ``start_many.py``...) keep their own sections in the page
between ``<!-- NAME: begin -->`` and ``<!-- NAME: end -->`` markers. Re-rendering keeps
every such section, in its order, after the generated part (unless the generated part
already holds it: ``ANALYSIS.md`` carries the Ray section).
"""

from __future__ import annotations

import pathlib
import re
from typing import Any

from _harness import cell, ratio
from scale import rows as scale_rows

HERE = pathlib.Path(__file__).resolve().parent


def _engines(report: dict[str, Any]) -> list[str]:
    header = (
        "engine",
        "workflows",
        "wf/s (median)",
        "spread (min..max)",
        "steps/s",
        "p50 ms",
        "p99 ms",
        "CPU s / 1k wf",
        "peak RSS MB",
    )
    rows: list[list[Any]] = []
    for r in report["rows"]:
        if r["status"] != "measured":
            rows.append([r["engine"], r["workflows"], f"skipped: {r['reason']}", *[""] * 6])
            continue
        lo, hi = r["spread_workflows_per_s"]
        rows.append(
            [
                r["engine"],
                r["workflows"],
                r["workflows_per_s"],
                f"{cell(lo)}..{cell(hi)} ({r['reps']} runs)" if r["reps"] > 1 else "1 run",
                r["steps_per_s"],
                r["p50_ms"],
                r["p99_ms"],
                r["cpu_s_per_1k_workflows"],
                r["peak_rss_mb"],
            ]
        )
    return _markdown(header, rows)


def _markdown(header: tuple[str, ...], rows: list[list[Any]]) -> list[str]:
    """A markdown table: first column left-aligned, the rest right-aligned."""
    out = ["| " + " | ".join(header) + " |"]
    out.append("|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|")
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return out


def _durability(report: dict[str, Any]) -> list[str]:
    seen: dict[str, dict[str, Any]] = {}
    for r in report["rows"]:
        if r["status"] == "measured":
            seen.setdefault(r["engine"], r)
    lines = ["| engine | what it is | durable when a workflow is acknowledged | fsync | driver |"]
    lines.append("|---|---|---|---|---|")
    for name, title in report["engines"].items():
        r = seen.get(name)
        if r is None:
            lines.append(f"| {name} | {title} | not measured in this run | | |")
        else:
            lines.append(f"| {name} | {title} | {r['durable']} | {r['fsync']} | {r['driver']} |")
    return lines


def _ratios(report: dict[str, Any]) -> list[str]:
    lines = []
    best = report.get("best", {})
    if best:
        picks = [
            f"{peer}: " + ", ".join(f"{name} at {int(size):,}" for size, name in by_size.items())
            for peer, by_size in best.items()
        ]
        lines += [
            "Each peer against its fastest setting at each size (" + "; ".join(picks) + ").",
            "",
        ]
    lines.append("| ratio | " + " | ".join(["measured (by workflows)", "target"]) + " |")
    lines.append("|---|---|---:|")
    for key, target in report["targets"].items():
        by_size = report["ratios"].get(key, {})
        values = ", ".join(f"{ratio(v)} at {int(s):,}" for s, v in by_size.items()) or "n/a"
        met = by_size and all(v >= target for v in by_size.values())
        lines.append(f"| {key} | {values} | >= {target}x {'(met)' if met else '(missed)'} |")
    for key, by_size in report["ratios"].items():  # (shown beside them: no target of its own)
        if key not in report["targets"]:
            values = ", ".join(f"{ratio(v)} at {int(s):,}" for s, v in by_size.items())
            lines.append(f"| {key} (`start()` callers only) | {values} | |")
    return lines


def _scale(scale: dict[str, Any] | None) -> list[str]:
    if not scale:
        return ["Not run."]
    if "failed" in scale:
        return [f"Failed: {scale['failed']}."]
    header = (
        "agent names",
        "wf/s",
        "vs smallest",
        "p50 ms",
        "p99 ms",
        "CPU s / 1k wf",
        "RSS MB",
        "KiB per agent",
        "marginal KiB per agent",
        "threads",
    )
    return [
        f"{scale['workflows']:,} workflows per row, one instance per agent name; RSS when "
        "the last workflow finished (every instance alive), from /proc/self/statm.",
        "",
        *_markdown(header, scale_rows(scale["results"])),
    ]


def _recovery(recovery: dict[str, Any] | None) -> list[str]:
    if not recovery:
        return ["Not run."]
    if "failed" in recovery:
        return [f"Failed: {recovery['failed']}."]
    header = (
        "in flight",
        "store MB",
        "fill s",
        "Runtime() returned s",
        "registered s",
        "first re-dispatch s",
        "all re-dispatched s",
        "all finished s",
        "peak RSS MB",
    )
    rows = [
        [
            r["in_flight"],
            r["store_mb"],
            r["fill_s"],
            r["opened_s"],
            r["registered_s"],
            r["first_dispatch_s"],
            r["all_redispatched_s"],
            r["all_finished_s"],
            r["peak_rss_mb"],
        ]
        for r in recovery["results"]
    ]
    return [
        "Times from just before `Runtime(path)` in a fresh process, after the process that "
        "filled the store was SIGKILLed. Targets (issue 15) at 100k: first re-dispatch "
        "within 1 s, every workflow re-dispatched within 30 s.",
        "",
        *_markdown(header, rows),
    ]


def _memory(machine: dict[str, Any]) -> str:
    total = machine.get("mem_total") or ""
    if total.endswith(" kB"):
        return f"{int(total[:-3]) / 2**20:.0f} GiB"
    return total or "unknown"


def _sharing(load: dict[str, list[float]]) -> str:
    """Whether other work shared the machine, as the 1-minute load average says."""
    before, after = load["before"][0], load["after"][0]
    said = f"Load average before {before:.1f}, after {after:.1f} (1-minute)."
    if max(before, after) < 2.5:
        return f"- The machine was otherwise idle. {said}"
    return f"- **The machine was shared**: other work ran at the same time. {said}"


def render(report: dict[str, Any]) -> str:
    """The whole page."""
    m = report["machine"]
    load = report["load_average"]
    settings = report["settings"]
    analysis = HERE / "ANALYSIS.md"
    lines = [
        "# herder benchmark results",
        "",
        "Written by `benchmarks/peers.py` (`make bench`, `herder bench --peers`); do not edit "
        "by hand. Ratios measured in one run are what count: absolute numbers move with the "
        "machine's load.",
        "",
        f"- Date: {report['date']} (UTC); suite took {report['suite_seconds']:,.0f} s.",
        f"- Machine: {m.get('cpus')} CPUs ({m.get('cpu_model')}), {_memory(m)} RAM, "
        f"{m.get('platform')}.",
        _sharing(load),
        f"- Python {m.get('python')}; pykka {m.get('pykka')}, lmdb {m.get('lmdb')}, msgpack "
        f"{m.get('msgpack')}; DBOS {m.get('dbos')}, Huey {m.get('huey')}, SQLite "
        f"{m.get('sqlite')}.",
        f"- Workload: travel booking (flight -> hotel -> car), trivial actions; injected "
        f"first-attempt failure rate {report['workload']['fail_rate']:.0%}, action latency "
        f"{report['workload']['latency']:g} s.",
        "- Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()) + ".",
        "",
        "## Engines side by side",
        "",
        *_engines(report),
        "",
        "## Ratios against the targets (issue 15)",
        "",
        *_ratios(report),
        "",
        "## What durable means per engine",
        "",
        *_durability(report),
        "",
        "## herder with many agent names",
        "",
        *_scale(report.get("scale")),
        "",
        "## Recovery after SIGKILL",
        "",
        *_recovery(report.get("recovery")),
        "",
    ]
    if analysis.exists():
        lines += [analysis.read_text().rstrip(), ""]
    return "\n".join(lines)


KEPT = re.compile(r"<!-- ([\w.-]+): begin -->.*?<!-- \1: end -->", re.S)


def kept_sections(text: str) -> list[str]:
    """The sections other benchmarks own in a RESULTS.md page (see the module docstring)."""
    return [m.group(0) for m in KEPT.finditer(text)]


def write_results(path: pathlib.Path, report: dict[str, Any]) -> None:
    """Write RESULTS.md for ``report``, keeping the other benchmarks' sections."""
    page = render(report).rstrip()
    old = kept_sections(path.read_text()) if path.exists() else []
    kept = [section for section in old if section.split("\n", 1)[0] not in page]
    path.write_text("\n\n".join([page, *kept]) + "\n")
