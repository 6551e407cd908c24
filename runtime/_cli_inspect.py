"""``herder ls``, ``show``, ``stats``, ``check`` and ``schedules``: read-only looks at a
store (fine while a runtime runs); the work is in ``_inspect`` and ``_check``."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from herder.runtime._cli_args import add_json, add_store, count_arg, when_arg
from herder.store import Store, WorkflowState

CANNOT_CHECK = 3
"""``herder check``'s exit code when it could not check (the store missing, locked, not a
store, or damaged below its records): apart from 1, problems found in a store it read."""


def add_parsers(sub: Any) -> None:
    """Add ``ls``, ``show``, ``stats``, ``check`` and ``schedules``."""

    def cmd(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
        add_store(parser)
        add_json(parser)
        parser.set_defaults(func=_run)
        return parser

    ls = cmd("ls", "list workflows, last updated first (read-only; fine while a runtime runs)")
    states = [str(s) for s in WorkflowState]
    ls.add_argument("--state", type=str.upper, choices=states, help="only workflows in this state")
    ls.add_argument(
        "--limit", type=count_arg, default=50, help="at most this many (default 50; 0: all)"
    )
    ls.add_argument(
        "--since",
        type=when_arg(),
        help="only workflows updated since then: a duration back from now (30m, 2h, 7d) "
        "or an ISO date/time",
    )
    show = cmd("show", "one workflow, its steps and history (read-only)")
    show.add_argument("id", help="the workflow id")
    show.add_argument(
        "--attempts", action="store_true", help="each failed attempt with its traceback"
    )
    cmd("stats", "counts of workflows, steps, retries, timer entries, breakers (read-only)")
    check = cmd(
        "check",
        "verify cross-database invariants (read-only); exit 1 on problems, "
        f"{CANNOT_CHECK} if the store could not be read",
    )
    check.set_defaults(error_exit=CANNOT_CHECK)  # (main's exit code for a HerderError)
    cmd("schedules", "periodic schedules and their next firing (read-only)")


def _run(args: argparse.Namespace, out: TextIO) -> int:
    from herder.runtime import _inspect

    with Store(args.store, readonly=True) as store:
        if args.command == "ls":
            _inspect.list_workflows(
                out,
                store,
                state=args.state,
                limit=args.limit or None,
                since=args.since,
                as_json=args.json,
            )
        elif args.command == "show":
            _inspect.show_workflow(out, store, args.id, as_json=args.json, attempts=args.attempts)
        elif args.command == "schedules":
            _inspect.show_schedules(out, store, as_json=args.json)
        elif args.command == "check":
            from herder.runtime._check import run_check

            return run_check(out, store, as_json=args.json)
        else:
            _inspect.show_stats(out, store, as_json=args.json)
    return 0
