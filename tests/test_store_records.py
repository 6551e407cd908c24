"""Every record type survives encode -> store -> decode; key helpers invert each other."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import pytest

from herder.store import (
    SCHEMA_VERSION,
    EncodeError,
    Plan,
    Put,
    RetryPolicy,
    StepRecord,
    StepSpec,
    StepState,
    Store,
    Transition,
    WorkflowRecord,
    WorkflowState,
    builder,
    definition_key,
    encode,
    encoder,
    peek_field,
    peek_fields,
    replacer,
    split_step_key,
    split_timer_key,
    step_key,
    timer_key,
    timer_upper_bound,
    workflow_key,
)
from herder.store._records import MAP_VERSION

POLICY = RetryPolicy(
    max_attempts=5,
    initial_interval=0.1,
    backoff_coefficient=2.0,
    max_interval=30.0,
    jitter=0.1,
    non_retryable=(ValueError, "pkg.Custom"),
)
SPEC = StepSpec(
    name="flight",
    agent="airline",
    action="book",
    after=("quote",),
    compensate="cancel",
    timeout=30.0,
    heartbeat_timeout=5.0,
    retry=POLICY,
    compensate_retry=RetryPolicy(max_attempts=2),
)
PLAN = Plan(name="trip", version=3, steps=(StepSpec("quote", "airline", "quote"), SPEC))
WORKFLOW = WorkflowRecord(
    id="order-42",
    name="trip",
    version=3,
    input={"who": "ada", "n": [1, 2.5, None, True, b"\x00raw"]},
    state=WorkflowState.COMPENSATING,
    created=1.5,
    updated=2.5,
    error="boom",
    recoveries=2,
    agents={"flight": "airline:eu"},
    trace="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    deadline=1234.5,
    reason="step 'car' failed: sold out",
)
STEP = StepRecord(
    workflow_id="order-42",
    name="flight",
    state=StepState.RETRY_WAIT,
    attempt=2,
    token=7,
    deadline=10.0,
    heartbeat_deadline=11.0,
    retry_at=12.0,
    timer_ms=12_000,
    result={"pnr": "X1"},
    error="timeout",
    error_type="builtins.TimeoutError",
    done_token=5,
    succeeded=True,
    comp_attempt=1,
    heartbeat={"pct": 50},
    updated=3.0,
    extra={"note": "é"},
)


@pytest.fixture
def store(tmp_path: pathlib.Path) -> Store:
    return Store(tmp_path / "s")


def _put(store: Store, db: str, key: bytes, value: object) -> None:
    store.writer.submit(Transition((Put(db, key, encode(value)),))).result(timeout=10)


@pytest.mark.parametrize("layout", ["to_stored", "to_dict"], ids=["schema3", "schema2"])
def test_workflow_and_step_records_round_trip_through_the_store(
    tmp_path: pathlib.Path, store: Store, layout: str
) -> None:
    _put(store, "workflows", workflow_key(WORKFLOW.id), getattr(WORKFLOW, layout)())
    _put(store, "steps", STEP.key, getattr(STEP, layout)())
    store.close()
    with Store(tmp_path / "s", readonly=True) as ro:
        assert ro.get_workflow("order-42") == WORKFLOW
        assert ro.get_step("order-42", "flight") == STEP
        assert ro.steps_of("order-42") == [STEP]
        assert ro.get_workflow("missing") is None
        assert ro.get_step("order-42", "missing") is None


def test_a_schema_3_workflow_written_before_deadlines_reads_without_one() -> None:
    older = WORKFLOW.to_stored()[:-2]  # as stored before the deadline field was appended
    assert WorkflowRecord.from_dict(older) == dataclasses.replace(
        WORKFLOW, deadline=None, reason=None
    )
    with pytest.raises(ValueError, match="schema 3 WorkflowRecord"):
        WorkflowRecord.from_dict(older[:-1])  # a field every array has is missing


def test_a_schema_3_workflow_written_before_reasons_reads_without_one() -> None:
    older = WORKFLOW.to_stored()[:-1]  # as stored before the reason field was appended
    assert WorkflowRecord.from_dict(older) == dataclasses.replace(WORKFLOW, reason=None)
    newer = [*WORKFLOW.to_stored(), "a field a later version appended"]
    assert WorkflowRecord.from_dict(newer) == WORKFLOW


@pytest.mark.parametrize("record", [WORKFLOW, STEP], ids=["workflow", "step"])
def test_hand_written_to_dict_and_evolve_cover_every_field(record: Any) -> None:
    names = [f.name for f in dataclasses.fields(record)]
    assert record.to_dict() == {"v": MAP_VERSION, **{n: getattr(record, n) for n in names}}
    assert record.to_stored() == [SCHEMA_VERSION, *(getattr(record, n) for n in names)]
    changes = {"updated": 99.0, "error": "changed"}
    assert record.evolve(**changes) == dataclasses.replace(record, **changes)
    assert record.evolve() == record
    with pytest.raises(TypeError, match="no field"):
        record.evolve(nonsense=1)


@pytest.mark.parametrize("record", [WORKFLOW, STEP], ids=["workflow", "step"])
def test_a_replacer_changes_its_fields_in_the_order_named_and_keeps_the_rest(record: Any) -> None:
    replace = replacer(type(record), "updated", "error")
    copy = replace(record, 99.0, "changed")
    assert copy == record.evolve(error="changed", updated=99.0)
    assert type(copy) is type(record)
    assert copy is not record
    with pytest.raises(TypeError, match="named once each"):
        replacer(type(record), "updated", "nonsense")
    with pytest.raises(TypeError, match="named once each"):
        replacer(type(record), "updated", "updated")


@pytest.mark.parametrize("record", [WORKFLOW, STEP], ids=["workflow", "step"])
def test_a_builder_makes_what_the_constructor_makes(record: Any) -> None:
    values = [getattr(record, f.name) for f in dataclasses.fields(record)]
    built = builder(type(record))(*values)
    assert built == type(record)(*values) == record
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.updated = 1.0  # still frozen


@pytest.mark.parametrize(
    ("state", "done_token", "succeeded"),
    [
        (StepState.SUCCEEDED, 5, True),
        (StepState.FAILED, 5, False),  # a failure that may have taken effect: undone
        (StepState.FAILED, None, False),
        (StepState.COMPENSATING, 5, True),
        (StepState.COMPENSATED, 5, True),
        (StepState.PENDING, 5, False),  # restarted by an operator after such a failure
        (StepState.DISPATCHED, 5, False),
    ],
)
def test_a_step_stored_before_succeeded_existed_reads_back_with_it(
    store: Store, state: StepState, done_token: int | None, succeeded: bool
) -> None:
    old = STEP.evolve(state=state, done_token=done_token).to_dict()
    del old["succeeded"]  # done_token alone said "succeeded" (and "to be undone") then
    _put(store, "steps", STEP.key, old)
    step = store.get_step("order-42", "flight")
    assert step is not None
    assert (step.succeeded, step.done_token) == (succeeded, done_token)


def test_plan_step_spec_and_retry_policy_round_trip_through_the_store(store: Store) -> None:
    key = definition_key(PLAN.name, PLAN.version)
    _put(store, "definitions", key, PLAN.to_dict())
    _put(store, "meta", b"policy", POLICY.to_dict())
    _put(store, "meta", b"spec", SPEC.to_dict())
    plan = Plan.from_dict(store.get("definitions", key))
    assert plan == PLAN
    assert plan.fingerprint() == PLAN.fingerprint()
    assert RetryPolicy.from_dict(store.get("meta", b"policy")) == POLICY
    assert StepSpec.from_dict(store.get("meta", b"spec")) == SPEC
    store.close()


def test_key_helpers_invert_each_other() -> None:
    assert split_step_key(step_key("wf-é", "step")) == ("wf-é", "step")
    assert split_timer_key(timer_key(123_456, "wf", "s")) == (123_456, "wf", "s")
    assert workflow_key("abc") == b"abc"
    assert timer_key(5, "wf", "s") < timer_upper_bound(5) <= timer_key(6, "a", "a")
    assert timer_key(2**40, "a", "a") > timer_key(255, "z", "z")  # big-endian orders by time
    assert definition_key("trip", 1) < definition_key("trip", 256)


def test_workflows_filters_by_state_and_due_timers_stop_at_the_bound(store: Store) -> None:
    for i, state in enumerate([WorkflowState.RUNNING, WorkflowState.SUCCEEDED] * 3):
        _put(
            store,
            "workflows",
            workflow_key(f"w{i}"),
            WORKFLOW.evolve(id=f"w{i}", state=state).to_dict(),
        )
    for due in (5, 10, 10, 11):
        _put(store, "timers", timer_key(due, f"w{due}", f"s{store.count('timers')}"), {"due": due})
    running = [w.id for w in store.workflows(state="RUNNING")]
    assert running == ["w0", "w2", "w4"]
    assert len(list(store.workflows())) == 6
    due = store.due_timers(10)
    assert [(d, v["due"]) for d, _, _, v in due] == [(5, 5), (10, 10), (10, 10)]
    assert len(store.due_timers(10, limit=2)) == 2
    assert store.due_timers(4) == []
    store.close()


def test_a_stored_array_of_another_version_or_too_short_is_refused() -> None:
    stored = STEP.to_stored()
    assert StepRecord.from_dict([*stored, "a field a later minor version added"]) == STEP
    with pytest.raises(ValueError, match="schema 3"):
        StepRecord.from_dict(stored[:-1])
    with pytest.raises(ValueError, match="schema 3"):
        StepRecord.from_dict([4, *stored[1:]])
    with pytest.raises(ValueError, match="no state"):
        WorkflowRecord.from_dict([SCHEMA_VERSION, "w", "n", 1, None, "NOT_A_STATE", *[0] * 8])


def test_an_encoder_gives_the_bytes_encode_gives_and_its_errors() -> None:
    own = encoder()
    values: list[Any] = [
        STEP.to_stored(),
        WORKFLOW.to_stored(),
        {"a": [1, 2.5, None]},
        "x" * (3 << 20),
    ]
    for value in [*values, *values]:  # (the second time from a Packer that packed them all)
        assert own(value) == encode(value)
    with pytest.raises(EncodeError, match="cannot be stored"):
        own([object()])
    assert own(values[0]) == encode(values[0])  # a failed pack leaves nothing behind


def test_peek_field_reads_a_name_from_either_layout_without_the_rest() -> None:
    record = WorkflowRecord("w-1", "order", 2, {"blob": "x" * 100})
    for stored in (record.to_stored(), record.to_dict()):
        data = encode(stored)
        assert peek_field(data, WorkflowRecord, "name") == "order"
        assert peek_field(data, WorkflowRecord, "version") == 2
        assert peek_field(data[:40], WorkflowRecord, "name") == "order"  # (the rest unread)
    with pytest.raises(KeyError):
        peek_field(encode([3, "w-1"]), WorkflowRecord, "name")  # an array too short
    for garbage in (b"", b"\xc1", encode(7), encode([3, "w-1", ["unfinished"]])[:9]):
        with pytest.raises(ValueError, match=r"OutOfData|Unexpected type"):
            peek_field(garbage, WorkflowRecord, "name")


def test_peek_fields_reads_several_fields_of_either_layout_in_one_pass() -> None:
    record = WorkflowRecord("w-1", "order", 2, {"blob": "x" * 100}, error="e", deadline=9.0)
    names = ("id", "state", "updated", "error", "deadline")
    want = {"id": "w-1", "state": "PENDING", "updated": 0.0, "error": "e", "deadline": 9.0}
    stored = record.to_stored()
    for layout in (stored, record.to_dict()):
        assert peek_fields(encode(layout), WorkflowRecord, names) == want
    older = stored[: stored.index(9.0)]  # an array written before `deadline` was added
    del want["deadline"]  # (a field the record lacks is left out)
    assert peek_fields(encode(older), WorkflowRecord, names) == want
