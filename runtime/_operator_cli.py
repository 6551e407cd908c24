"""``herder inbox`` and the operator commands ``retry``, ``skip``, ``compensate``,
``abandon`` and ``cancel``.

The inbox is read from the store read-only. An operator command changes a workflow, which
only the runtime that runs the store may do (it knows the definitions and has the
agents), and that runtime is usually another process: the command goes through the
store's ``commands`` database (``store/_commands.py``). The CLI appends it, then waits
for the runtime's Supervisor to pick it up and the Scheduler to apply it, exactly as
``rt.retry(...)`` and friends would, and prints the outcome.

Exit codes: 0 applied; 1 refused (the message says why); 3 not applied yet (no runtime
holds the store, or it did not answer within ``--timeout``): the command stays queued
and the next runtime to open the store applies it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from herder.actors import Operate, UnknownWorkflow
from herder.actors.engine import ended_for_good, parked_refusal
from herder.runtime._cli_args import add_json, add_store, operator_name, seconds_arg
from herder.runtime._console import dump_json, print_table
from herder.runtime._inbox import inbox_items
from herder.runtime._inspect import report_corrupt
from herder.store import (
    COMMAND_DONE,
    InvalidInput,
    Store,
    StoreCorrupt,
    WorkflowState,
    append_command,
    is_held,
    new_command,
    normalize,
    wait_outcome,
)

ACTIONS = {
    "retry": "resume a NEEDS_ATTENTION workflow where it stopped",
    "skip": "mark a step done by hand (a failed compensation: undone) and go on",
    "compensate": "undo the completed steps of a running or parked workflow",
    "abandon": "give up on a workflow: nothing more runs, nothing is undone",
    "cancel": "stop a running workflow and undo its completed steps",
}

QUEUED = 3


def add_parsers(sub: Any) -> None:
    """Add ``inbox`` and one subcommand per operator action to the CLI's subparsers."""
    inbox = sub.add_parser("inbox", help="workflows waiting for an operator (read-only)")
    add_store(inbox)
    add_json(inbox)
    inbox.set_defaults(func=lambda args, out: show_inbox(out, args.store, as_json=args.json))
    for action, text in ACTIONS.items():
        cmd = sub.add_parser(action, help=f"{text} (through the running runtime)")
        cmd.add_argument("id", help="the workflow id")
        add_store(cmd)
        cmd.set_defaults(func=lambda args, out: send(out, args))
        cmd.add_argument("--why", required=True, help="the reason, kept in the history")
        cmd.add_argument("--who", help="who acts (default: $USER)")
        cmd.add_argument(
            "--timeout",
            type=seconds_arg,
            default=30.0,
            help="seconds to wait for the runtime (default: %(default)s)",
        )
        if action == "skip":
            cmd.add_argument("--step", help="the step (default: the one needing attention)")
            cmd.add_argument("--result", help="the step's result, as JSON (default: null)")


def queue_refusal(workflow_id: str, state: WorkflowState, action: str) -> str | None:
    """Why a runtime would refuse operator ``action`` on a workflow in ``state``, known
    before the command is queued (the CLI and the console refuse it then), or None."""
    if ended_for_good(state):
        return (
            f"workflow {workflow_id!r} is {state}, and no operator action applies to a "
            "workflow that ended"
        )
    return parked_refusal(workflow_id, state, action)


def show_inbox(out: TextIO, store_path: str, *, as_json: bool) -> int:
    """``herder inbox``: every NEEDS_ATTENTION workflow and the step needing a decision."""
    corrupt: list[StoreCorrupt] = []
    with Store(store_path, readonly=True) as store:
        items = inbox_items(store, corrupt=corrupt)
    report_corrupt(corrupt)  # on stderr: the inbox shows the rest
    if as_json:
        dump_json(out, [i.to_dict() for i in items])
        return 0
    rows = [
        (
            i.id,
            f"{i.name}@{i.version}",
            i.step or "",
            "" if i.step_state is None else str(i.step_state),
            i.attempts,
            (i.step_error or i.error or "")[:70],
            "" if i.heartbeat is None else repr(i.heartbeat)[:30],
        )
        for i in items
    ]
    header = ("id", "workflow", "step", "state", "attempts", "error", "last heartbeat")
    print_table(out, f"{len(items)} waiting for an operator", header, rows)
    return 0


def _strict(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON value; store a number, or a string")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # (1e400: Python reads it as infinity)
        raise ValueError(f"{text} is beyond a float's range; store a smaller number, or a string")
    return value


def skip_result(text: str | None) -> Any:
    """``--result`` as the skip's result, checked as the API checks one (ValueError if
    it is not JSON, or is a value the store cannot keep)."""
    if text is None:
        return None
    try:
        value = json.loads(text, parse_constant=_strict, parse_float=_finite)
    except ValueError as exc:  # (JSONDecodeError, NaN/Infinity, 1e400: not JSON either)
        raise ValueError(f"--result is not valid JSON: {exc}") from None
    return normalize(value, what="--result")  # (EncodeError: 2**64, a lone surrogate)


def send(out: TextIO, args: argparse.Namespace) -> int:
    """Send one operator command to the runtime holding the store and report its outcome."""
    action, path = args.command, args.store
    command_args: dict[str, Any] = {}
    if action == "skip":
        command_args["step"] = args.step
        try:
            command_args["result"] = skip_result(args.result)
        except ValueError as exc:
            sys.stderr.write(f"herder skip: {exc}; nothing was queued\n")
            return 2
        except RecursionError:
            sys.stderr.write("herder skip: --result is nested too deeply to read\n")
            return 2
    who = operator_name(args.who)
    try:  # the API's checks, before anything is queued (exit 2: bad usage)
        if not args.why.strip():
            raise InvalidInput("--why is empty; say why (it is kept in the history)")
        Operate(action, args.id, command_args.get("step"), who=who, why=args.why).check()
    except InvalidInput as exc:
        sys.stderr.write(f"herder {action}: {exc}; nothing was queued\n")
        return 2
    with Store(path, readonly=True) as store:
        record = store.get_workflow(args.id)
    if record is None:
        raise UnknownWorkflow(f"no workflow with id {args.id!r} in {path}")
    refusal = queue_refusal(args.id, record.state, action)
    if refusal is not None:
        sys.stderr.write(f"herder {action}: refused: {refusal}; nothing was queued\n")
        return 1
    running = is_held(path)
    command = new_command(  # (refused where it applies if the workflow moved on by then)
        action, args.id, args=command_args, who=who, why=args.why, decided_on=str(record.state)
    )
    command_id = append_command(path, command)
    if not running:
        sys.stderr.write(
            f"herder {action}: no runtime holds the store {path}; command #{command_id} is "
            "queued and the next runtime to open the store applies it (once the workflow's "
            "definition is registered)\n"
        )
        return QUEUED
    then = f"the runtime applies it all the same (see `herder show {args.id}`)"
    with told_if_interrupted(f"herder {action}", command_id, then):
        outcome, held = wait_while_held(path, command_id, args.timeout)
    if outcome is None and not held:
        sys.stderr.write(
            f"herder {action}: the runtime let go of the store {path} (it stopped) before "
            f"applying command #{command_id}; it stays queued and the next runtime to open "
            "the store applies it (once the workflow's definition is registered)\n"
        )
        return QUEUED
    if outcome is None:
        sys.stderr.write(
            f"herder {action}: the runtime did not apply command #{command_id} within "
            f"{args.timeout} s; it stays queued and is applied when the runtime gets to it "
            f"(if that runtime has no definition {record.name!r} version {record.version} "
            "registered, as after an upgrade that dropped it, the workflow and the "
            "command wait for it: register it with add_workflow, or abandon the "
            "workflow)\n"
        )
        return QUEUED
    if outcome["state"] != COMMAND_DONE:
        sys.stderr.write(f"herder {action}: refused: {outcome['error']}\n")
        return 1
    taken = outcome.get("step")  # (a skip of no --step: the one the runtime took)
    step = f", step {taken!r}" if action == "skip" and taken else ""
    out.write(f"{action} {args.id}: done{step} (command #{command_id}, by {who})\n")
    return 0


@contextlib.contextmanager
def told_if_interrupted(name: str, command_id: int, then: str) -> Iterator[None]:
    """Ctrl-C while waiting for queued command ``command_id``: say, before the CLI's
    "interrupted", that it stays queued and what becomes of it (``then``): the wait
    ends, the command does not."""
    try:
        yield
    except KeyboardInterrupt:
        sys.stderr.write(
            f"{name}: command #{command_id} stays queued (ending the wait does not "
            f"withdraw it): {then}\n"
        )
        raise


LOOK = 0.5
"""Seconds between two asks of whether a runtime still holds the store, while waiting."""


def wait_while_held(
    path: str,
    command_id: int,
    timeout: float,
    pending: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[dict[str, Any] | None, bool]:
    """The command's outcome within ``timeout`` (None: still pending), and whether a
    runtime held the store all along: asked before each look of :data:`LOOK` seconds, so
    one that stops meanwhile (a deploy, a crash) ends the wait, not the timeout, which
    then blamed a runtime that was gone. ``pending`` is ``wait_outcome``'s."""
    deadline = time.monotonic() + timeout
    while True:
        held = is_held(path)  # (before the look: one that applies it and stops is seen)
        left = max(0.0, deadline - time.monotonic())
        outcome = wait_outcome(path, command_id, min(LOOK, left), pending=pending)
        if outcome is not None or not held:
            return outcome, held
        if left <= LOOK:
            return None, True
