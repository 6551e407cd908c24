"""herder.actors.engine — the pattern's rules as data and pure functions.

What lives here, one concept per module:

- ``_states``: the step and workflow state machines as tables: which moves are legal,
  which states hold a timer, keep a compensation waiting, are undone, restarted,
  skipped or stuck;
- ``_deadline``: a workflow's deadline: what its timer calls for, which attempts it
  supersedes;
- ``_members``: which member of a step's group (``AnyOf``) runs its next attempt;
- ``_retry``: the retry rule (``after_failure``, ``after_probe_failure``);
- ``_step``: one step's transitions as record functions (dispatch, failed, settled, ...);
- ``_answer``: what a probe's verdict, a hand-off, a lapse or a loss means for its step;
- ``_workflow``: what a workflow runs next, when it ends, what compensation undoes;
- ``_operator``: the records an operator's action writes;
- ``_recovery``: what a restart resumes, and poison work (crash counting, parking);
- ``_decision``: a :class:`Decision`: the writes of the events handled, the typed
  effects a batch performs once it is durable, and what happens at once;
- ``_events``: the engine's inputs, as frozen dataclasses;
- ``_runs``: what memory holds of an unfinished workflow, its attempts and queued jobs;
- ``_shapes``: what is made once per plan (steps by name, dependents) and a run built
  from it;
- ``_machine``: :class:`Machine`, the runs in memory and their transitions;
- ``_engine``: :class:`Engine`, what each event means: ``handle(event) -> Decision``;
- ``_actions`` (exported as ``actions``): an operator's action applied to a run.

Everything else that must know these rules (the Scheduler, operator actions,
``herder check``, the inbox and status views, the hypothesis state machine) consults
them; no copy lives elsewhere. Events in, decisions out: the actor shell
(``actors/_scheduler.py``) turns messages into events, commits each decision and
performs its effects.

Imports: herder.store only. No threads, no pykka, no LMDB, no clock reads: time,
randomness and fencing tokens are arguments. herder.actors drives it; herder.runtime
reads its tables.
"""

from herder.actors.engine import _actions as actions
from herder.actors.engine._answer import (
    CRASH_ERROR,
    AskProbe,
    Fail,
    HandOff,
    OutcomeKind,
    ProbeAgain,
    Reading,
    Succeed,
    after_lapse,
    after_loss,
    probe_name,
    read_answer,
)
from herder.actors.engine._deadline import (
    DEADLINE_ERROR,
    DEADLINE_TIMER,
    OnDeadline,
    deadline_reason,
    expired,
    fenced,
    overdue,
    when_due,
)
from herder.actors.engine._decision import (
    Announce,
    Cancel,
    Decision,
    Dispatch,
    Effect,
    Enqueue,
    Fence,
    HistoryWrite,
    Immediate,
    Lost,
    Refuse,
    Reply,
    Resolve,
    StepWrite,
    TimedOut,
    TimerDelete,
    WorkflowWrite,
    Write,
)
from herder.actors.engine._dormant import dormant
from herder.actors.engine._engine import Engine
from herder.actors.engine._events import (
    Answered,
    AttemptLost,
    Beat,
    Completed,
    Event,
    Reserved,
    Resumed,
    Started,
    StartFailed,
    TimerDue,
)
from herder.actors.engine._machine import Defaults, Machine
from herder.actors.engine._members import MEMBER_KEY, member_used, next_member, with_member
from herder.actors.engine._operator import (
    abandoned_step,
    given_up,
    orphan_given_up,
    undo_again,
)
from herder.actors.engine._recovery import (
    Leased,
    poison_message,
    poisoned,
    resumes,
    running_at_crash,
)
from herder.actors.engine._results import ResultLog, gathered
from herder.actors.engine._retry import (
    GIVEN_UP_ERROR,
    UNBUILT_ERROR,
    UNSTORABLE_ERROR,
    Escalate,
    GiveUp,
    RetryIn,
    Verdict,
    after_failure,
    after_probe_failure,
    policy_for,
)
from herder.actors.engine._runs import Attempt, Dispatched, Job, WorkflowRun, unqueue
from herder.actors.engine._states import (
    ALLOWED_STEPS,
    BUSY,
    ENDED_BY_ABANDON,
    OPERATOR_ACTIONS,
    OPERATOR_STEP_NEXT,
    OPERATOR_WORKFLOW_NEXT,
    POISON_ERROR,
    RESTARTABLE,
    SKIPPABLE,
    STEP_NEXT,
    STUCK,
    UNDOING,
    UNSETTLED,
    WAITS_TO_RUN,
    WORKFLOW_NEXT,
    ended_for_good,
    holds_timer,
    operator_refusal,
    parked_refusal,
    parking_refusal,
    reachable,
    stale_refusal,
    stuck_step,
    to_undo,
)
from herder.actors.engine._step import (
    TIMEOUT_ERROR,
    attempt_due_ms,
    attempt_timeout,
    completable,
    dispatch,
    failed,
    handed_off,
    heartbeat,
    idempotency_key,
    lapse,
    ms,
    probed,
    restarted,
    settled,
    stopped,
    succeeded_with,
    unknown,
    why_stale,
    with_timer,
)
from herder.actors.engine._workflow import WIDE, Advance, advance, waits_for, when_compensating

__all__ = [
    "ALLOWED_STEPS",
    "BUSY",
    "CRASH_ERROR",
    "DEADLINE_ERROR",
    "DEADLINE_TIMER",
    "ENDED_BY_ABANDON",
    "GIVEN_UP_ERROR",
    "MEMBER_KEY",
    "OPERATOR_ACTIONS",
    "OPERATOR_STEP_NEXT",
    "OPERATOR_WORKFLOW_NEXT",
    "POISON_ERROR",
    "RESTARTABLE",
    "SKIPPABLE",
    "STEP_NEXT",
    "STUCK",
    "TIMEOUT_ERROR",
    "UNBUILT_ERROR",
    "UNDOING",
    "UNSETTLED",
    "UNSTORABLE_ERROR",
    "WAITS_TO_RUN",
    "WIDE",
    "WORKFLOW_NEXT",
    "Advance",
    "Announce",
    "Answered",
    "AskProbe",
    "Attempt",
    "AttemptLost",
    "Beat",
    "Cancel",
    "Completed",
    "Decision",
    "Defaults",
    "Dispatch",
    "Dispatched",
    "Effect",
    "Engine",
    "Enqueue",
    "Escalate",
    "Event",
    "Fail",
    "Fence",
    "GiveUp",
    "HandOff",
    "HistoryWrite",
    "Immediate",
    "Job",
    "Leased",
    "Lost",
    "Machine",
    "OnDeadline",
    "OutcomeKind",
    "ProbeAgain",
    "Reading",
    "Refuse",
    "Reply",
    "Reserved",
    "Resolve",
    "ResultLog",
    "Resumed",
    "RetryIn",
    "StartFailed",
    "Started",
    "StepWrite",
    "Succeed",
    "TimedOut",
    "TimerDelete",
    "TimerDue",
    "Verdict",
    "WorkflowRun",
    "WorkflowWrite",
    "Write",
    "abandoned_step",
    "actions",
    "advance",
    "after_failure",
    "after_lapse",
    "after_loss",
    "after_probe_failure",
    "attempt_due_ms",
    "attempt_timeout",
    "completable",
    "deadline_reason",
    "dispatch",
    "dormant",
    "ended_for_good",
    "expired",
    "failed",
    "fenced",
    "gathered",
    "given_up",
    "handed_off",
    "heartbeat",
    "holds_timer",
    "idempotency_key",
    "lapse",
    "member_used",
    "ms",
    "next_member",
    "operator_refusal",
    "orphan_given_up",
    "overdue",
    "parked_refusal",
    "parking_refusal",
    "poison_message",
    "poisoned",
    "policy_for",
    "probe_name",
    "probed",
    "reachable",
    "read_answer",
    "restarted",
    "resumes",
    "running_at_crash",
    "settled",
    "stale_refusal",
    "stopped",
    "stuck_step",
    "succeeded_with",
    "to_undo",
    "undo_again",
    "unknown",
    "unqueue",
    "waits_for",
    "when_compensating",
    "when_due",
    "why_stale",
    "with_member",
    "with_timer",
]
