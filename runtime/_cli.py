"""The ``herder`` command line (also ``python -m herder.runtime``).

One argparse subcommand per job, registered by family: each family module has
``add_parsers(sub)``, which adds its subcommands and sets ``func(args, out) -> exit code``
on each. The families are listed in :data:`FAMILIES`; a new one is a module and a line
there. ``_cli_inspect`` (ls, show, stats, check, schedules: read-only), ``_operator_cli`` (inbox;
retry, skip, compensate, abandon, cancel through the running runtime), ``_cli_daemon``
(run, handoff), ``_cli_admin`` (purge, compact),
``_cli_ui`` (ui, the web console). ``demo`` and ``bench`` pass the rest of the
command line to their own parsers.

``--store`` defaults to ``$HERDER_STORE``. Exit codes: 0 done, 1 the command failed
(message on stderr), 2 bad usage, 3 an operator command is queued but not applied yet
(``check``: it could not read the store; its 1 is problems found), 130 interrupted (Ctrl-C).
A stdout whose reader left (``herder ls | head``) ends it quietly with 0; any other broken
pipe (a connection of the command's own) is a failure.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import TextIO

from herder.runtime import _cli_admin, _cli_daemon, _cli_inspect, _cli_ui, _operator_cli
from herder.runtime._cli_args import require_store
from herder.runtime._console import reader_gone, reader_left
from herder.store import HerderError

FAMILIES = (_cli_inspect, _operator_cli, _cli_daemon, _cli_admin, _cli_ui)
"""Modules whose ``add_parsers(sub)`` add subcommands, in the order ``--help`` lists them."""


def herder_version() -> str:
    """The installed distribution's version."""
    try:
        return version("herder")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="herder", description="Inspect and operate herder stores; run the demo."
    )
    parser.add_argument("--version", action="version", version=f"herder {herder_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="book trips under faults, SIGKILL the worker, resume")
    demo.add_argument("args", nargs="*", help="see `herder demo --help`")
    bench = sub.add_parser(
        "bench", help="run benchmarks/throughput.py (--peers: peers.py) from a source checkout"
    )
    bench.add_argument("args", nargs="*", help="passed to the script")
    for family in FAMILIES:
        family.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Entry point of the ``herder`` console script; returns the exit code."""
    out = out or sys.stdout
    argv = list(sys.argv[1:] if argv is None else argv)
    name = "herder"  # (as a message names the command, once it is known)
    try:
        if argv and argv[0] in _PASS_THROUGH:  # their own parsers take the rest, options too
            name = f"herder {argv[0]}"
            return _PASS_THROUGH[argv[0]](argv[1:], out)
        args = _parser().parse_args(argv)
        name = f"herder {args.command}"
        require_store(args)
        try:
            code: int = args.func(args, out)
        except HerderError as exc:
            sys.stderr.write(f"{name}: {exc}\n")
            return int(getattr(args, "error_exit", 1))  # (check: 3, apart from its problems)
    except BrokenPipeError:  # `herder ls | head`, `herder demo | head`
        if not reader_gone(out):  # (a socket or pipe of the command's own broke: an error)
            raise
        return _reader_left()
    except KeyboardInterrupt:  # Ctrl-C while a command starts, reads or waits: no traceback
        sys.stderr.write(f"{name}: interrupted\n")
        return 130
    return code


def _reader_left() -> int:
    """The reader of stdout left, which is fine: exit 0 (``check`` keeps its outcome)."""
    reader_left()
    return 0


def _demo(argv: Sequence[str], out: TextIO) -> int:
    from herder.runtime._demo import run_demo

    return run_demo(argv, out)


def _bench(argv: Sequence[str], out: TextIO) -> int:
    from herder.runtime._admin import bench

    return bench(argv, out)


_PASS_THROUGH: dict[str, Callable[[Sequence[str], TextIO], int]] = {
    "demo": _demo,
    "bench": _bench,
}
