"""Outcomes that are not a plain answer: a lapsed attempt turned UNKNOWN and probed,
a probe's verdict, and an action that handed its step off with ``ctx.complete_later()``.

What such news means is the engine's (``read_answer``, ``after_lapse``; the probes'
backoff is ``after_probe_failure``); this module carries it out on the Scheduler's
state, so it takes the Scheduler as first argument.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from herder.actors._messages import Outcome
from herder.actors._outcomes import has_probe, probe_name
from herder.actors._run import WorkflowRun
from herder.actors.engine import (
    Escalate,
    Fail,
    HandOff,
    ProbeAgain,
    Reading,
    Succeed,
    after_lapse,
    after_probe_failure,
    handed_off,
    probed,
    read_answer,
    unknown,
    with_timer,
)
from herder.store import StepRecord, StepState, WorkflowState, history_put

if TYPE_CHECKING:
    from herder.actors._scheduler import Scheduler


def on_special_outcome(s: Scheduler, run: WorkflowRun, st: StepRecord, msg: Outcome) -> None:
    """An answer that is not a plain result: a probe's verdict or complete_later()."""
    if st.state is StepState.UNKNOWN:
        s._counters["probes"] += 1
    probe = probe_name(run.specs[st.name].action)
    reading = read_answer(
        st, ok=msg.ok, kind=msg.kind, result=msg.result, error=msg.error, probe=probe
    )
    _follow(s, run, st, reading)


def on_lapsed(s: Scheduler, run: WorkflowRun, st: StepRecord, lapsed: str) -> None:
    """An attempt's (or a probe's) deadline or heartbeat lapsed."""
    _follow(s, run, st, after_lapse(st, lapsed, has_probe=_has_probe(s, run, st)))


def _follow(s: Scheduler, run: WorkflowRun, st: StepRecord, reading: Reading) -> None:
    """Do what the engine read from the answer or lapse."""
    if isinstance(reading, Succeed):
        s._step_succeeded(run, st, reading.result)
    elif isinstance(reading, Fail):
        s._step_failed(run, st, reading.error, reading.types, permanent=reading.permanent)
    elif isinstance(reading, ProbeAgain):
        _probe_later(s, run, st, reading.note, failed=reading.failed)
    elif isinstance(reading, HandOff):
        # The instance is free again; the step waits for complete_step/fail_step under
        # the deadline it already has (same token: the task token stays valid).
        s._counters["handed_off"] += 1
        s._commits.put_step(run, st, handed_off(st, s._clock.time()))
    else:
        # The request may have reached the remote side: ask before retrying.
        s._counters["unknown"] += 1
        new = unknown(st, reading.lapsed, token=s._ctx.next_token(), now=s._clock.time())
        s._commits.put_step(run, st, new)
        s._enqueue(run, st.name, compensating=False)


def _probe_later(
    s: Scheduler, run: WorkflowRun, st: StepRecord, note: str, *, failed: bool
) -> None:
    """Keep the step UNKNOWN and probe again after a backoff; a probe that fails
    (raises, times out) more often than the step's max_attempts parks the workflow."""
    now = s._clock.time()
    new = probed(st, note, failed=failed, token=s._ctx.next_token(), now=now)
    probe = {"kind": "probe", "t": now, "step": st.name, "token": new.token, "error": note}
    s._commits.txn(run.record.id).put(history_put(run.record.id, s._ctx.next_token(), probe))
    failures = new.extra["probe_failures"]
    verdict = after_probe_failure(
        run.specs[st.name],
        probes=new.extra["probes"],
        failures=failures,
        default=s._config.default_retry,
        rand=s._rand.random,
    )
    if isinstance(verdict, Escalate):
        s._commits.put_step(run, st, new)
        s._finish(
            run,
            WorkflowState.NEEDS_ATTENTION,
            error=f"step {st.name!r}: outcome unknown and {failures} probes failed: {note}",
        )
        return
    s._commits.put_step(run, st, with_timer(new.evolve(retry_at=now + verdict.delay)))


def _has_probe(s: Scheduler, run: WorkflowRun, st: StepRecord) -> bool:
    spec = run.specs[st.name]
    registered = s._ctx.agents.get(spec.agent)
    return registered is not None and has_probe(registered[0], spec.action)
