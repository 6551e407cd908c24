"""The step transitions that run on every step are built by generated copies
(``store.replacer``), not ``evolve``: they must build exactly what ``evolve`` would."""

from __future__ import annotations

import pytest

from herder.actors.engine import dispatch, idempotency_key, settled, succeeded_with
from herder.store import StepRecord, StepSpec, StepState

RUNNING = StepRecord(
    "w1",
    "book",
    StepState.DISPATCHED,
    attempt=2,
    token=7,
    deadline=40.0,
    heartbeat_deadline=15.0,
    retry_at=3.0,
    timer_ms=15000,
    error="earlier",
    error_type="X",
    comp_attempt=1,
    heartbeat={"at": 1},
    updated=5.0,
    extra={"probes": 1},
)


def test_a_success_is_settled_succeeded_to_be_undone_by_its_token() -> None:
    new = succeeded_with(RUNNING, {"pnr": 1}, 9, 12.0)
    assert new == settled(
        RUNNING,
        StepState.SUCCEEDED,
        9,
        12.0,
        result={"pnr": 1},
        done_token=9,
        succeeded=True,
    )
    assert (new.deadline, new.heartbeat_deadline, new.retry_at, new.timer_ms) == (None,) * 4
    assert (new.error, new.error_type, new.heartbeat, new.extra) == (
        None,
        None,
        {"at": 1},
        {"probes": 1},
    )


@pytest.mark.parametrize(
    ("st", "compensating", "expected"),
    [
        (RUNNING.evolve(state=StepState.RETRY_WAIT), False, (StepState.DISPATCHED, 3, 1, 5.0)),
        (RUNNING.evolve(state=StepState.SUCCEEDED), True, (StepState.COMPENSATING, 2, 2, 5.0)),
        (RUNNING.evolve(state=StepState.UNKNOWN), False, (StepState.UNKNOWN, 2, 1, 30.0)),
    ],
    ids=["forward", "compensation", "probe"],
)
def test_an_attempt_is_recorded_with_its_deadlines_and_no_timer(
    st: StepRecord, compensating: bool, expected: tuple[StepState, int, int, float]
) -> None:
    state, attempt, comp_attempt, window = expected
    spec = StepSpec("book", "air", "book", timeout=60.0, heartbeat_timeout=5.0)
    new, lapses_in = dispatch(
        st,
        spec,
        compensating=compensating,
        token=11,
        now=100.0,
        default_timeout=300.0,
        probe_timeout=30.0,
    )
    probing = state is StepState.UNKNOWN
    assert new == st.evolve(
        state=state,
        attempt=attempt,
        comp_attempt=comp_attempt,
        token=11,
        deadline=130.0 if probing else 160.0,
        heartbeat_deadline=None if probing else 105.0,
        retry_at=None,
        timer_ms=None,
        updated=100.0,
    )
    assert lapses_in == window


@pytest.mark.parametrize(
    ("workflow_id", "step", "compensating", "key"),
    [
        ("order-1", "pay", False, "order-1/pay"),  # plain names keep the keys they had
        ("order-1", "pay", True, "order-1/pay/compensate"),
        ("order/1", "pay", False, "order/1/pay"),  # an id is left as it is
        ("order/1", "1/pay", False, "order/1/1%2Fpay"),
        ("order", "a/compensate", False, "order/a%2Fcompensate"),
        ("o/pay", "compensate", False, "o/pay/%63ompensate"),
        ("o", "50%", False, "o/50%25"),
    ],
)
def test_an_idempotency_key_names_one_operation(
    workflow_id: str, step: str, compensating: bool, key: str
) -> None:
    assert idempotency_key(workflow_id, step, compensating=compensating) == key


def test_no_two_operations_share_an_idempotency_key() -> None:
    # The collisions the workflow definition review found, and their neighbours.
    ids = ["order", "order/1", "order/1/1", "o", "o/pay", "o/pay/compensate"]
    steps = ["pay", "1/pay", "a", "a/compensate", "compensate", "%63ompensate", "50%", "1%2Fpay"]
    operations = [(w, s, c) for w in ids for s in steps for c in (False, True)]
    keys = {idempotency_key(w, s, compensating=c): (w, s, c) for w, s, c in operations}
    assert len(keys) == len(operations)
