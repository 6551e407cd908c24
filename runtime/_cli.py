"""The ``herder`` command line (also ``python -m herder.runtime``).

One argparse subcommand per job; each lives in the module that does it: ``_demo`` (the
demo), ``_inspect`` (ls, show, stats, schedules: read-only), ``_check`` (check: read-only),
``_operator_cli`` (inbox; retry, skip, compensate, abandon, cancel through the running
runtime), ``_admin`` (bench), ``_daemon`` (run, handoff).
Exit codes: 0 done, 1 the command failed (message on stderr), 2 bad usage, 3 an operator
command is queued but not applied yet.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from herder.runtime import _operator_cli
from herder.store import DEFAULT_LEASE, HerderError, Store, WorkflowState


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="herder", description="Inspect and operate herder stores; run the demo."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="book trips under faults, SIGKILL the worker, resume")
    demo.add_argument("args", nargs="*", help="see `herder demo --help`")

    def with_store(name: str, help_text: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--store", required=True, help="the store directory")
        cmd.add_argument("--json", action="store_true", help="print JSON instead of a table")
        return cmd

    ls = with_store("ls", "list workflows (read-only; fine while a runtime runs)")
    states = [str(s) for s in WorkflowState]
    ls.add_argument("--state", type=str.upper, choices=states, help="only workflows in this state")
    ls.add_argument("--limit", type=int, help="at most this many")
    show = with_store("show", "one workflow and its steps (read-only)")
    show.add_argument("id", help="the workflow id")
    with_store("stats", "counts of workflows, steps, retries, timers, breakers (read-only)")
    with_store("check", "verify cross-database invariants (read-only); exit 1 on problems")
    with_store("schedules", "periodic schedules and their next firing (read-only)")
    _operator_cli.add_parsers(sub)

    run = sub.add_parser("run", help="run a daemon from an app factory (systemd-friendly)")
    run.add_argument("--store", required=True, help="the store directory")
    run.add_argument("--app", required=True, help="module:factory; factory(rt) registers")
    run.add_argument("--standby", action="store_true", help="wait for the lease, then take over")
    run.add_argument("--lease", type=float, default=DEFAULT_LEASE, help="lease seconds")
    run.add_argument("--drain-timeout", type=float, default=30.0, help="seconds at shutdown")
    handoff = sub.add_parser("handoff", help="ask the runtime holding a store to hand over")
    handoff.add_argument("--store", required=True, help="the store directory")
    handoff.add_argument(
        "--deadline", type=float, default=30.0, help="seconds running attempts may finish in"
    )
    handoff.add_argument("--wait", type=float, default=60.0, help="seconds to wait for it")

    bench = sub.add_parser(
        "bench", help="run benchmarks/throughput.py (--peers: peers.py) from a source checkout"
    )
    bench.add_argument("args", nargs="*", help="passed to the script")
    return parser


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Entry point of the ``herder`` console script; returns the exit code."""
    out = out or sys.stdout
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _PASS_THROUGH:  # their own parsers take the rest, options too
        return _PASS_THROUGH[argv[0]](argv[1:], out)
    args = _parser().parse_args(argv)
    try:
        return _run(args, out)
    except BrokenPipeError:  # `herder ls | head`: the reader left, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except HerderError as exc:
        sys.stderr.write(f"herder {args.command}: {exc}\n")
        return 1


def _demo(argv: Sequence[str], out: TextIO) -> int:
    from herder.runtime._demo import run_demo

    return run_demo(argv, out)


def _bench(argv: Sequence[str], out: TextIO) -> int:
    from herder.runtime._admin import bench

    return bench(argv, out)


_PASS_THROUGH = {"demo": _demo, "bench": _bench}


def _run(args: argparse.Namespace, out: TextIO) -> int:
    command = args.command
    if command in ("run", "handoff"):
        from herder.runtime import _daemon

        if command == "handoff":
            return _daemon.request_handoff(args.store, args.deadline, args.wait, out)
        return _daemon.run_app(
            args.store,
            args.app,
            standby=args.standby,
            lease=args.lease,
            drain_timeout=args.drain_timeout,
            out=out,
        )
    if command in _operator_cli.ACTIONS:
        return _operator_cli.send(out, args)
    if command == "inbox":
        return _operator_cli.show_inbox(out, args.store, as_json=args.json)
    from herder.runtime import _inspect

    with Store(args.store, readonly=True) as store:
        if command == "ls":
            _inspect.list_workflows(
                out, store, state=args.state, limit=args.limit, as_json=args.json
            )
        elif command == "show":
            _inspect.show_workflow(out, store, args.id, as_json=args.json)
        elif command == "schedules":
            _inspect.show_schedules(out, store, as_json=args.json)
        elif command == "check":
            from herder.runtime._check import run_check

            return run_check(out, store, as_json=args.json)
        else:
            _inspect.show_stats(out, store, as_json=args.json)
    return 0
