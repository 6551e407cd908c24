"""herder.actors.engine — the pattern's rules as data and pure functions.

What lives here: the step and workflow state machines as tables (``_states``): which
moves are legal, which states hold a timer, which keep a compensation waiting, which
are undone, restarted, skipped or stuck; the retry rule (``_retry``); one step's
transitions as pure record functions (``_step``); a workflow's rules: what runs next,
when it ends, what is undone (``_workflow``); and the typed effects a decision causes
once its writes are durable (``_decision``); what a marked answer or a lapse means
(``_answer``). Everything else that must know these rules
(the Scheduler, operator actions, ``herder check``, the inbox and status views, the
hypothesis state machine) consults these tables; no copy of them lives elsewhere.
The engine grows toward ``design/structure.md``: events in, decisions out.

Imports: herder.store only. No threads, no pykka, no LMDB, no clock reads: time,
randomness and fencing tokens are arguments. herder.actors drives it; herder.runtime
reads its tables.
"""

from herder.actors.engine._answer import (
    AskProbe,
    Fail,
    HandOff,
    OutcomeKind,
    ProbeAgain,
    Reading,
    Succeed,
    after_lapse,
    read_answer,
)
from herder.actors.engine._decision import Announce, Dispatch, Effect, Refuse, Reply, Resolve
from herder.actors.engine._retry import (
    Escalate,
    GiveUp,
    RetryIn,
    Verdict,
    after_failure,
    after_probe_failure,
    policy_for,
)
from herder.actors.engine._states import (
    ALLOWED_STEPS,
    BUSY,
    ENDED_BY_ABANDON,
    OPERATOR_STEP_NEXT,
    OPERATOR_WORKFLOW_NEXT,
    RESTARTABLE,
    SKIPPABLE,
    STEP_NEXT,
    STUCK,
    UNDOING,
    WAITS_TO_RUN,
    WORKFLOW_NEXT,
    holds_timer,
    reachable,
    to_undo,
)
from herder.actors.engine._step import (
    TIMEOUT_ERROR,
    dispatch,
    failed,
    handed_off,
    heartbeat,
    lapse,
    ms,
    probed,
    restarted,
    settled,
    stopped,
    unknown,
    with_timer,
)
from herder.actors.engine._workflow import Advance, advance, when_compensating

__all__ = [
    "ALLOWED_STEPS",
    "BUSY",
    "ENDED_BY_ABANDON",
    "OPERATOR_STEP_NEXT",
    "OPERATOR_WORKFLOW_NEXT",
    "RESTARTABLE",
    "SKIPPABLE",
    "STEP_NEXT",
    "STUCK",
    "TIMEOUT_ERROR",
    "UNDOING",
    "WAITS_TO_RUN",
    "WORKFLOW_NEXT",
    "Advance",
    "Announce",
    "AskProbe",
    "Dispatch",
    "Effect",
    "Escalate",
    "Fail",
    "GiveUp",
    "HandOff",
    "OutcomeKind",
    "ProbeAgain",
    "Reading",
    "Refuse",
    "Reply",
    "Resolve",
    "RetryIn",
    "Succeed",
    "Verdict",
    "advance",
    "after_failure",
    "after_lapse",
    "after_probe_failure",
    "dispatch",
    "failed",
    "handed_off",
    "heartbeat",
    "holds_timer",
    "lapse",
    "ms",
    "policy_for",
    "probed",
    "reachable",
    "read_answer",
    "restarted",
    "settled",
    "stopped",
    "to_undo",
    "unknown",
    "when_compensating",
    "with_timer",
]
