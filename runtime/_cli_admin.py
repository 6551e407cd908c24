"""``herder purge`` (delete finished workflows), ``herder compact`` (shrink the file) and
``herder backup`` (a consistent copy, also while a runtime runs).

``purge`` deletes workflows in the given states (default: the finished ones, SUCCEEDED,
COMPENSATED, CANCELLED, ABANDONED) last updated before a cutoff, with their steps,
history, timers and index entries. While a runtime runs the store it goes through the
command channel and that runtime works it off a batch per sweep (exit 3 if it is not done
within ``--timeout``: it carries on; at once if that runtime stops meanwhile: it stays
queued for the next); with none it deletes directly. Either way the
count so far is shown on stderr while it works (``CountLine``; through a runtime, the
count it records on the command per batch). ``--dry-run`` only counts. ``--older-than``
is an age: a runtime takes it back from its own clock, on which the records' times are
written, and the cutoff printed is the one it used; offline (and
for ``--dry-run``) it is taken back from the wall clock. ``compact`` is offline (see
``store/_compact.py``); ``backup`` is not (``store/_backup.py``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from contextlib import closing
from typing import Any, TextIO

from herder.runtime._cli_args import add_store, operator_name, seconds_arg, when_arg
from herder.runtime._console import CountLine
from herder.runtime._inspect import shown_time
from herder.runtime._operator_cli import told_if_interrupted, wait_while_held
from herder.store import (
    COMMAND_DONE,
    FINISHED,
    PURGEABLE,
    SCHEMA_VERSION,
    Store,
    StoreError,
    append_command,
    backup,
    compact,
    count_purgeable,
    has_store,
    is_held,
    new_command,
    purge,
)

QUEUED = 3


def add_parsers(sub: Any) -> None:
    """Add ``purge``, ``compact`` and ``backup``."""
    cmd = sub.add_parser("purge", help="delete finished workflows older than a cutoff")
    add_store(cmd)
    when = cmd.add_mutually_exclusive_group(required=True)
    when.add_argument(
        "--older-than",
        type=when_arg(age=True),
        help="last updated longer ago than this (7d, 12h, 30m)",
    )
    when.add_argument("--before", type=when_arg(), help="last updated before this ISO date/time")
    cmd.add_argument(
        "--state",
        action="append",
        type=str.upper,
        choices=sorted(PURGEABLE),
        help="only this state (repeatable; default: every finished state)",
    )
    cmd.add_argument("--dry-run", action="store_true", help="only count what would go")
    cmd.add_argument(
        "--timeout",
        type=seconds_arg,
        default=600.0,
        help="seconds to wait for a running runtime (default: %(default)s)",
    )
    cmd.set_defaults(func=_purge)
    pack = sub.add_parser("compact", help="shrink the store file (offline: no runtime running)")
    add_store(pack)
    pack.set_defaults(func=_compact)
    copy = sub.add_parser(
        "backup", help="copy the store as of one commit (fine while a runtime runs)"
    )
    add_store(copy)
    copy.add_argument("dest", help="directory to write the copy to (new or empty)")
    copy.set_defaults(func=_backup)


def _purge(args: argparse.Namespace, out: TextIO) -> int:
    before = args.before if args.older_than is None else time.time() - args.older_than
    states = frozenset(args.state) if args.state else FINISHED
    path = args.store
    if not has_store(path):  # (Store(path) would create one)
        raise StoreError(f"no store at {path} (no data.mdb there): check --store")
    what = _described(states, before)
    # Read-only first: a foreign LMDB environment is refused before anything is written
    # into it, and so is a store of an older herder (below).
    with Store(path, readonly=True) as store:
        if args.dry_run:
            out.write(f"would delete {count_purgeable(store, before, states)} {what}\n")
            return 0
        schema = store.schema_version
    if schema < SCHEMA_VERSION:
        # Offline, a write would mark it with this herder's schema, which the older
        # herder refuses to open; online, its runtime is that older herder, which has
        # no purge command. Nothing is written either way.
        raise StoreError(
            f"store {path} has schema version {schema}, from an older herder, which has "
            f"no purge; purging it with this one would mark it {SCHEMA_VERSION}, which "
            "the older herder cannot open. Upgrade the runtime that runs it to this "
            "herder first (its first open upgrades the store), then purge"
        )
    if not is_held(path):
        with Store(path) as store, closing(CountLine("herder purge", "deleted")) as progress:
            deleted = purge(store, before, states, progress=progress.update)
        out.write(f"deleted {deleted} {what}\n")
        return 0
    who = operator_name()
    # An age is taken back from the runtime's clock, on which the records' times are
    # written (see runtime/_retention.py); ``before`` is the wall clock's, as offline.
    aged = {} if args.older_than is None else {"older_than": args.older_than}
    command = new_command(
        "purge",
        "",
        args={"before": before, **aged, "states": sorted(states)},
        who=who,
        why="herder purge",
    )
    command_id = append_command(path, command)
    then = "the runtime holding the store carries the purge on, a batch per sweep"
    with (
        told_if_interrupted("herder purge", command_id, then),
        closing(CountLine("herder purge", "deleted")) as progress,
    ):
        outcome, held = wait_while_held(path, command_id, args.timeout, _shown(progress))
    if outcome is None and not held:
        sys.stderr.write(
            f"herder purge: the runtime let go of the store {path} (it stopped) before "
            f"finishing command #{command_id}; it stays queued and the next runtime to "
            "open the store carries it on (or run `herder purge` again with none running: "
            "it deletes directly)\n"
        )
        return QUEUED
    if outcome is None:
        sys.stderr.write(
            f"herder purge: the runtime has not finished command #{command_id} within "
            f"{args.timeout} s; it carries on, a batch per sweep (see `herder ls`)\n"
        )
        return QUEUED
    if outcome["state"] != COMMAND_DONE:
        sys.stderr.write(f"herder purge: failed: {outcome['error']}\n")
        return 1
    used = outcome.get("args", {}).get("before", before)  # (the runtime's, from its clock)
    what = _described(states, used)
    out.write(f"deleted {outcome.get('deleted', 0)} {what} (through the running runtime)\n")
    return 0


def _compact(args: argparse.Namespace, out: TextIO) -> int:
    with closing(CountLine("herder compact", "bytes copied")) as progress:
        before, after = compact(args.store, progress.update)
    out.write(f"compacted {args.store}: {before:,} -> {after:,} bytes\n")
    return 0


def _backup(args: argparse.Namespace, out: TextIO) -> int:
    with closing(CountLine("herder backup", "bytes copied")) as progress:
        size = backup(args.store, args.dest, progress.update)
    out.write(f"backed up {args.store} into {args.dest}: {size:,} bytes\n")
    return 0


def _shown(progress: CountLine) -> Callable[[dict[str, Any]], None]:
    """Show a pending purge command's count so far (the runtime records it per batch)."""

    def show(command: dict[str, Any]) -> None:
        deleted = command.get("deleted")
        if isinstance(deleted, int) and not isinstance(deleted, bool):
            progress.update(deleted)

    return show


def _described(states: frozenset[str], before: float) -> str:
    return f"{', '.join(sorted(states))} workflows last updated before {shown_time(before)}"
