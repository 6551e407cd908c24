"""complete_step and fail_step: a step handed off with ``ctx.complete_later()`` completed.

:class:`Completions` checks that the task token's attempt is still the step's current one,
has the engine record the outcome, and answers through a future that settles once it is
durable. It runs on the Scheduler's thread, for the :class:`~herder.actors._operator.Operator`.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future

from herder.actors._clock import MessageClock
from herder.actors._commits import CommitPipeline
from herder.actors._engine import EngineContext
from herder.actors._errors import CompletionRefused, InvalidState
from herder.actors._messages import Complete
from herder.actors._recovery import Recovery, Shell
from herder.actors.engine import (
    Completed,
    Engine,
    Refuse,
    Resolve,
    completable,
    lapse,
    overdue,
    why_stale,
)
from herder.store import InvalidInput, Plan, normalize


class Completions:
    """complete_step's outcomes; see the module docstring."""

    def __init__(
        self,
        ctx: EngineContext,
        *,
        engine: Engine,
        commits: CommitPipeline,
        recovery: Recovery,
        shell: Shell,
        plans: Mapping[tuple[str, int], Plan],
        clock: MessageClock,
    ) -> None:
        self._store = ctx.store
        self._config = ctx.config
        self._engine = engine
        self._commits = commits
        self._recovery = recovery
        self._shell = shell
        self._plans = plans
        self._clock = clock

    def complete(self, msg: Complete) -> Future[None]:
        """Record the outcome of a step handed off with ``ctx.complete_later()``.

        Refused with :class:`CompletionRefused` when the task token's attempt is no longer
        the step's current one (it failed or timed out and was retried, or the step finished).
        """
        # A workflow recovery has not taken back yet is taken back for it (as for an
        # operator's action), and resumes after it.
        fresh = self._recovery.take_back(msg.workflow_id)
        try:
            return self._complete(msg)
        finally:
            if fresh is not None:
                self._recovery.taken_back(fresh)
                self._shell.settle()  # what it resumed is dispatched now

    def _complete(self, msg: Complete) -> Future[None]:
        wid, run = msg.workflow_id, self._engine.runs.get(msg.workflow_id)
        st = None if run is None else run.steps.get(msg.step)
        if run is not None and st is None:
            raise InvalidInput(
                f"workflow {wid!r} has no step {msg.step!r}: the task token was not issued "
                "for it; nothing was recorded"
            )
        if run is None or st is None:
            record = self._store.get_workflow(wid)
            if record is None:  # (its token was handed out once its creation was durable)
                raise CompletionRefused(
                    f"workflow {wid!r} is no longer stored: it finished and was deleted "
                    f"(retention or herder purge), or the token is from another store; step "
                    f"{msg.step!r} can no longer be completed; the completion was not recorded"
                )
            if not record.state.is_final and (record.name, record.version) not in self._plans:
                raise InvalidState(
                    f"workflow {wid!r} awaits its definition "
                    f"{record.name!r} version {record.version}; register it, then complete"
                )
            ending = "was parked meanwhile" if wid in self._commits.parking else "has just finished"
            refused = CompletionRefused(
                f"workflow {wid!r} "
                + (ending if not record.state.is_final else f"is {record.state}")
                + f": step {msg.step!r} can no longer be completed; the completion was not "
                "recorded"
            )
            if record.state.is_final or not self._commits.pending(wid):
                raise refused
            # Its end is on its way to disk: refused once it is there, as an operator's
            # action is (a duplicate webhook, say, right after the one that finished it).
            later: Future[None] = Future()
            self._commits.txn(wid).effects.append(Refuse(later, refused))
            self._shell.settle()
            return later
        waiting = completable(st, queued=st.name in run.queued)
        # A timeout or the workflow's deadline that ran out (while no process ran, say)
        # refuses it too, before the sweep comes to it.
        d, now = self._engine.defaults, self._clock.time()
        lapsed = lapse(st, run.specs[st.name], now, d.default_timeout, d.probe_timeout)
        late = overdue(run.record.state, run.record.deadline, now)
        if st.token != msg.token or not waiting or lapsed is not None or late is not None:
            raise CompletionRefused(
                f"step {msg.step!r} of workflow {msg.workflow_id!r} is {st.state} at attempt "
                f"{st.attempt}; the attempt this task token names is no longer current "
                f"({late or why_stale(st, lapsed)}), so the completion was not recorded"
            )
        result = None
        if msg.ok:
            result = normalize(
                msg.result, limit=self._config.max_result_bytes, what=f"result of {msg.step!r}"
            )
        done: Future[None] = Future()
        event = Completed(
            msg.workflow_id,
            msg.step,
            msg.ok,
            result,
            msg.error,
            msg.error_types,
            msg.permanent,
            msg.traceback,
        )
        self._shell.handle(event)
        self._commits.txn(run.record.id).effects.append(Resolve(done))
        self._shell.settle()
        return done
