"""A Ray worker process is a mailbox (``herder.actors.ray._worker.SlotWorker``): one
``exchange`` starts a batch of attempts on the process's own threads and returns every
answer finished since the last, with heartbeats in and flags out. Exercised here on the
class itself, in this process (the marker ``ray``: it needs Ray importable)."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest

from herder.runtime import Agent, StepContext

pytestmark = [pytest.mark.ray, pytest.mark.timeout(60)]
_worker = pytest.importorskip("herder.actors.ray._worker")

WAIT = 30.0
TOGETHER = threading.Barrier(3)
GO = threading.Event()
BEAT = threading.Event()


class Mailboxed(Agent):
    def together(self, ctx: StepContext) -> int:
        TOGETHER.wait(WAIT)  # passes only if all three attempts run at once
        GO.wait(WAIT)
        return ctx.token

    def held(self, ctx: StepContext) -> int:
        GO.wait(WAIT)
        return ctx.token

    def beat_until_superseded(self, ctx: StepContext) -> list[bool]:
        ctx.heartbeat({"n": 1})
        BEAT.set()
        flagged = threading.Event()
        while not (ctx.superseded or ctx.cancelled) and not flagged.wait(0.01):
            pass  # the flags are plain attributes a poll sets: watched, as an action would
        return [ctx.superseded, ctx.cancelled]


def attempt(slot: int, action: str, token: int) -> tuple[Any, ...]:
    fields = {
        "workflow_id": f"w{token}",
        "step": "s",
        "action": action,
        "attempt": 1,
        "input": None,
        "results": {},
        "idempotency_key": f"k{token}",
        "token": token,
        "compensating": False,
        "trace_context": None,
        "deadline": None,
        "cancelled": False,
    }
    return (slot, f"m#{slot}", action, fields)


def worker(slots: int) -> Any:
    w = _worker.SlotWorker("m", 1 << 20, slots)
    for slot in range(slots):
        assert w.start_slot(slot, f"m#{slot}", Mailboxed) is None
    return w


def exchange(w: Any, batch: list[Any] | None, flags: list[Any] | None = None) -> Any:
    return _worker.unpack(w.exchange(None if batch is None else _worker.pack(batch), flags or []))


def test_one_exchange_starts_a_batch_at_once_and_one_returns_every_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_worker, "POLL", 0.01)
    w = worker(3)
    started = exchange(w, [attempt(slot, "together", 10 + slot) for slot in range(3)])
    assert started == [[], []]  # none answered within POLL: they wait for GO
    GO.set()
    with w._cond:
        assert w._cond.wait_for(lambda: len(w._answers) == 3, timeout=WAIT)
    answers, beats = exchange(w, None)
    outcomes = {t: _worker.unpacked(a, "m", "m#0", t) for t, a in answers}
    assert {t: (o.ok, o.result) for t, o in outcomes.items()} == {
        10: (True, 10),
        11: (True, 11),
        12: (True, 12),
    }
    assert beats == []


def test_a_newer_exchange_releases_the_one_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_worker, "POLL", WAIT)  # only a release or an answer ends a wait
    w = worker(1)
    GO.clear()
    first: list[Any] = []
    waiting = threading.Thread(target=lambda: first.append(exchange(w, None)))
    waiting.start()
    with w._cond:
        assert w._cond.wait_for(lambda: w._turn == 1, timeout=WAIT)
    second: list[Any] = []
    newer = threading.Thread(target=lambda: second.append(exchange(w, [attempt(0, "held", 5)])))
    newer.start()
    waiting.join(WAIT)
    assert first == [[[], []]]  # released, with nothing (the attempt waits for GO)
    assert second == []  # the newer one waits in its place
    GO.set()
    newer.join(WAIT)
    assert [[t, a[1]] for t, a in second[0][0]] == [[5, 5]]


def test_an_exchange_brings_a_running_attempts_heartbeat_in_and_its_flags_out() -> None:
    w = worker(1)
    _, beats = exchange(w, [attempt(0, "beat_until_superseded", 7)])
    assert BEAT.wait(WAIT)
    if not beats:  # it beat after that exchange returned: the next one brings it
        _, beats = exchange(w, None)
    assert beats == [[7, {"n": 1}]]
    answers: list[Any] = []
    while not answers:  # the flag reaches the attempt, which answers what it saw
        answers, _ = exchange(w, None, [(7, True, False)])
    assert [(t, _worker.unpacked(a, "m", "m#0", t).result) for t, a in answers] == [
        (7, [True, False])
    ]


def test_an_older_exchange_arriving_late_does_not_lower_a_flag() -> None:
    # Exchanges run on Ray's threads: one sent before a flag went up (it carries only
    # "cancelled") may arrive after the one that carries "superseded" too.
    w = worker(1)
    w._pool.submit = lambda *args: None  # the attempt is registered, never run
    exchange(w, [attempt(0, "held", 9)], [(9, True, True)])
    exchange(w, None, [(9, False, True)])
    port = w._ports[9]
    assert (port.superseded, port.cancelled) == (True, True)


def test_an_attempt_for_an_instance_the_slot_no_longer_holds_is_a_crash() -> None:
    w = worker(1)
    w.drop_slot(0, "m#other")  # a stale stop (another instance's) leaves the object alone
    assert w._objects[0][0] == "m#0"
    w.drop_slot(0, "m#0")
    answers, _ = exchange(w, [attempt(0, "together", 3)])
    while not answers:
        answers, _ = exchange(w, None)
    assert len(answers) == 1
    assert isinstance(answers[0][1], str)
    assert "holds no object" in answers[0][1]


class DoubtfulPort:
    """An attempt's port while the runtime may have lost its lease (it was paused)."""

    cancelled = superseded = False

    def __init__(self) -> None:
        self.waited: list[float] = []

    def leased(self, wait: float) -> bool:
        self.waited.append(wait)
        return False


def test_an_attempt_whose_lease_is_in_doubt_is_not_sent_to_ray(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As a local attempt (tests/test_lease_gate.py): a runtime paused past its lease
    # starts nothing it had queued, since a standby may be running those steps already.
    from herder.actors._messages import UNSTARTED, Run
    from herder.actors.ray import _courier
    from herder.actors.ray._courier import Courier, Process

    def wait(refs: list[Any], **options: Any) -> tuple[list[Any], list[Any]]:
        threading.Event().wait(options.get("timeout", 0))  # no cluster: nothing comes in
        return [], refs

    monkeypatch.setattr(_courier, "ray", SimpleNamespace(wait=wait))
    sent: list[Any] = []
    handle = SimpleNamespace(exchange=SimpleNamespace(remote=lambda *a: sent.append(a)))
    workers = SimpleNamespace(lost=lambda proc: None, was_replaced=lambda token: False)
    courier = Courier(workers)  # type: ignore[arg-type]
    port = DoubtfulPort()
    context = StepContext("w", "s", "act", 1, None, {}, "w/s", 7, False, port)  # type: ignore[arg-type]
    answered = threading.Event()
    answers: list[Any] = []

    def reply(outcome: Any) -> None:
        answers.append(outcome)
        answered.set()

    try:
        proc = Process(handle, "m")
        courier.submit(proc, 0, "m#0", None, Run("m", "m#0", "act", 7, context), reply=reply)  # type: ignore[arg-type]
        assert answered.wait(WAIT)
    finally:
        courier.close()
    assert [(a.token, a.ok, a.kind) for a in answers] == [(7, False, UNSTARTED)]
    assert sent == []
    assert proc.calls == {}
    assert max(port.waited) > 0  # it waited for a renewal first, on a thread of its own


def test_a_stopping_proxy_waiting_for_an_attempt_never_sent_is_told_it_ended(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A proxy stopped (its agent removed) while its attempt waits for a lease renewal
    # waits for that attempt to end before it gives its slot back: answered as not
    # started, it has ended too.
    from herder.actors._messages import Run
    from herder.actors.ray import _courier
    from herder.actors.ray._courier import Courier, Process

    def wait(refs: list[Any], **options: Any) -> tuple[list[Any], list[Any]]:
        threading.Event().wait(options.get("timeout", 0))  # no cluster: nothing comes in
        return [], refs

    registered = threading.Event()

    class LateDoubt(DoubtfulPort):
        def leased(self, wait: float) -> bool:
            if wait > 0:  # the sender's wait for a renewal: the proxy stops meanwhile
                registered.wait(WAIT)
            return super().leased(wait)

    monkeypatch.setattr(_courier, "ray", SimpleNamespace(wait=wait))
    handle = SimpleNamespace(exchange=SimpleNamespace(remote=lambda *a: None))
    workers = SimpleNamespace(lost=lambda proc: None, was_replaced=lambda token: False)
    courier = Courier(workers)  # type: ignore[arg-type]
    context = StepContext("w", "s", "act", 1, None, {}, "w/s", 7, False, LateDoubt())  # type: ignore[arg-type]
    ended: list[str | None] = []
    told = threading.Event()

    def then(crash: str | None) -> None:
        ended.append(crash)
        told.set()

    try:
        proc = Process(handle, "m")
        run = Run("m", "m#0", "act", 7, context)
        courier.submit(proc, 0, "m#0", None, run, reply=lambda outcome: None)  # type: ignore[arg-type]
        assert courier.after_attempt(proc, "m#0", then)
        registered.set()
        assert told.wait(WAIT)
    finally:
        courier.close()
    assert ended == [None]
    assert proc.retiring == {}
