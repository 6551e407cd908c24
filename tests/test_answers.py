"""The hosts' outcomes on their way to the Scheduler (actors/_answers.py): batched behind
one DRAIN message, none lost, none reordered, a dead Scheduler's flag cleared."""

from __future__ import annotations

import queue
import threading
from typing import Any

import pytest

from herder.actors._answers import DRAIN, Answers


class _Inbox:
    """A Scheduler stand-in: its inbox, and a drain that takes as ``Scheduler._on_drain``."""

    def __init__(self) -> None:
        self.inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.answers = Answers(self.inbox.put)
        self.taken: list[Any] = []
        self.drains = 0

    def handle_one(self, timeout: float = 10.0) -> Any:
        message = self.inbox.get(timeout=timeout)
        if message is DRAIN:
            self.drains += 1
            pending, n = self.answers.taking()
            for _ in range(n):
                self.taken.append(pending.popleft())
        return message


@pytest.mark.timeout(30)
def test_a_burst_of_outcomes_costs_one_message_and_keeps_its_order() -> None:
    box = _Inbox()
    for i in range(100):
        box.answers.put(i)
    assert box.inbox.qsize() == 1  # one DRAIN for the whole burst
    box.handle_one()
    assert box.taken == list(range(100))
    assert box.inbox.empty()
    box.answers.put(100)  # the next outcome tells a drain again
    box.handle_one()
    assert box.taken == list(range(101))


@pytest.mark.timeout(30)
def test_outcomes_queued_while_a_drain_runs_get_a_drain_of_their_own() -> None:
    box = _Inbox()
    box.answers.put("a")
    assert box.inbox.get() is DRAIN
    pending, n = box.answers.taking()  # the drain began: it takes one
    box.answers.put("b")  # came after the count: a new DRAIN is told
    assert [pending.popleft() for _ in range(n)] == ["a"]
    box.handle_one()
    assert box.taken == ["b"]


@pytest.mark.timeout(30)
def test_a_drain_handled_the_instant_it_is_told_finds_the_outcome() -> None:
    """The worst interleaving, made deterministic: the Scheduler takes the DRAIN before
    the host's ``put`` returns. The outcome is queued before the drain is told, so the
    drain finds it."""
    taken: list[Any] = []

    def at_once(message: Any) -> None:
        assert message is DRAIN
        pending, n = answers.taking()
        taken.extend(pending.popleft() for _ in range(n))

    answers = Answers(at_once)
    answers.put("a")
    answers.put("b")
    assert taken == ["a", "b"]
    assert len(answers) == 0


@pytest.mark.timeout(30)
def test_a_message_told_after_an_outcome_comes_after_it() -> None:
    """A host's later message (an instance's crash, through the inbox) never overtakes
    the outcomes it queued before it."""
    box = _Inbox()
    box.answers.put("first")
    box.inbox.put("crash")
    box.answers.put("second")  # a drain is on its way already: no new one
    order = []
    while not box.inbox.empty():
        message = box.handle_one()
        if message is DRAIN:
            order.extend(box.taken)
            box.taken.clear()
        else:
            order.append(message)
    assert order.index("first") < order.index("crash")


@pytest.mark.timeout(60)
def test_no_outcome_is_lost_between_many_hosts_and_the_scheduler() -> None:
    box = _Inbox()
    hosts, each = 8, 5_000
    done = threading.Event()

    def host(h: int) -> None:
        for i in range(each):
            box.answers.put((h, i))

    threads = [threading.Thread(target=host, args=(h,)) for h in range(hosts)]
    for t in threads:
        t.start()

    def joined() -> None:
        for t in threads:
            t.join()
        done.set()

    threading.Thread(target=joined).start()
    while not done.is_set() or not box.inbox.empty():
        try:
            box.handle_one(timeout=0.05)
        except queue.Empty:
            continue
    assert len(box.taken) == hosts * each, "an outcome was left without a drain"
    for h in range(hosts):  # each host's outcomes in the order it sent them
        assert [i for hh, i in box.taken if hh == h] == list(range(each))
    assert box.drains < hosts * each  # batched, not one message per outcome


@pytest.mark.timeout(30)
def test_a_new_scheduler_takes_what_a_dead_one_left() -> None:
    dead: queue.SimpleQueue[Any] = queue.SimpleQueue()
    box = _Inbox()
    current = [dead.put]

    def tell_scheduler(message: Any) -> None:  # as EngineContext's: to the one that runs
        current[0](message)

    box.answers = answers = Answers(tell_scheduler)
    answers.put("stale")  # told to a Scheduler that died with the DRAIN in its inbox
    answers.put("dropped")  # (the new Scheduler does not keep this one)
    answers.put("also")
    assert dead.qsize() == 1
    assert box.inbox.empty()
    current[0] = box.inbox.put  # the next Scheduler runs
    answers.put("late")  # the flag is still set: no DRAIN for it yet
    assert box.inbox.empty()
    answers.restart(keep=lambda waiting: waiting != "dropped")
    box.handle_one()
    assert box.taken == ["stale", "also", "late"]
    answers.put("fresh")  # and the flag works again
    box.handle_one()
    assert box.taken == ["stale", "also", "late", "fresh"]


class _SpyLock:
    """A lock that says when someone finds it held (the teller's, in Answers)."""

    def __init__(self, found_held: threading.Event) -> None:
        self._real = threading.Lock()
        self._found_held = found_held

    def locked(self) -> bool:
        held = self._real.locked()
        if held:
            self._found_held.set()
        return held

    def __enter__(self) -> None:
        self._real.acquire()

    def __exit__(self, *_exc: object) -> None:
        self._real.release()


@pytest.mark.timeout(30)
def test_a_message_told_after_a_put_comes_after_the_drain_another_host_is_telling() -> None:
    """Host A saw no drain on its way, set the flag and is still telling its DRAIN (held
    by the GIL, a loaded machine); host B's put sees the flag set. B's next message (a
    start's Unadmit, a cancel, an instance's crash) must not reach the inbox before A's
    DRAIN: the Scheduler would take B's early Admit after its Unadmit and run a workflow
    that was never created. B's put waits until A's DRAIN is told."""
    inbox: list[Any] = []
    go = threading.Event()  # B found A telling (or, broken: B's put returned at once)
    telling = threading.Event()

    def tell(message: Any) -> None:
        if not telling.is_set():  # A's DRAIN: held until B has come by
            telling.set()
            assert go.wait(10)
        inbox.append(message)

    answers = Answers(tell)
    answers._lock = _SpyLock(go)  # type: ignore[assignment]
    host_a = threading.Thread(target=answers.put, args=("a",))
    host_a.start()
    assert telling.wait(10)  # A is inside its tell: the flag is set, no DRAIN told yet

    def host_b() -> None:
        answers.put("b")
        inbox.append("after b")
        go.set()

    b = threading.Thread(target=host_b)
    b.start()
    host_a.join(10)
    b.join(10)
    assert inbox == [DRAIN, "after b"]
