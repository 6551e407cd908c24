"""``herder run`` (a daemon from an app factory) and ``herder handoff``; the work is in
``_daemon``."""

from __future__ import annotations

import argparse
from typing import Any, TextIO

from herder.runtime._cli_args import (
    add_store,
    app_arg,
    deadline_arg,
    lease_arg,
    retention_arg,
    seconds_arg,
)
from herder.store import DEFAULT_LEASE


def add_parsers(sub: Any) -> None:
    """Add ``run`` and ``handoff``."""
    run = sub.add_parser("run", help="run a daemon from an app factory (systemd-friendly)")
    add_store(run)
    run.add_argument(
        "--app", required=True, type=app_arg, help="module:factory; factory(rt) registers"
    )
    run.add_argument("--standby", action="store_true", help="wait for the lease, then take over")
    run.add_argument(
        "--lease",
        type=lease_arg,
        default=DEFAULT_LEASE,
        help="lease seconds (default: %(default)s)",
    )
    run.add_argument(
        "--drain-timeout",
        type=seconds_arg,
        default=30.0,
        help="seconds running attempts may finish in at shutdown (default: %(default)s)",
    )
    run.add_argument(
        "--retention",
        type=retention_arg,
        default="7d",
        help="how long finished workflows are kept (7d, 12h; none: all; default: %(default)s)",
    )
    run.set_defaults(func=_run)
    handoff = sub.add_parser("handoff", help="ask the runtime holding a store to hand over")
    add_store(handoff)
    handoff.add_argument(
        "--deadline",
        type=deadline_arg,
        default=30.0,
        help="seconds running attempts may finish in (default: %(default)s)",
    )
    handoff.add_argument(
        "--wait",
        type=seconds_arg,
        default=None,
        help="seconds to wait for the lease to move (default: the deadline plus two of the "
        "runtime's leases; 0: do not wait)",
    )
    handoff.add_argument(
        "--force",
        action="store_true",
        help="hand over even when no standby waits (the runtime stops; nothing takes over)",
    )
    handoff.set_defaults(func=_handoff)


def _run(args: argparse.Namespace, out: TextIO) -> int:
    from herder.runtime._daemon import leave, run_app

    code = 1  # (unless it returns: main says what it raised, and exits 1 or 130)
    try:
        code = run_app(
            args.store,
            args.app,
            standby=args.standby,
            lease=args.lease,
            drain_timeout=args.drain_timeout,
            retention=args.retention,
            out=out,
        )
    except KeyboardInterrupt:
        code = 130  # (main's exit for Ctrl-C, which leave() may give in its stead)
        raise
    finally:
        leave(code)  # (not waiting for ever for the app's threads)
    return code


def _handoff(args: argparse.Namespace, out: TextIO) -> int:
    from herder.runtime._daemon import request_handoff

    return request_handoff(args.store, args.deadline, args.wait, out, force=args.force)
