"""Answers: the agent hosts' outcomes on their way to the Scheduler, batched (and the
starts admitted while their creation is on its way: ``runtime/_handle.py``, with the
definitions registered meanwhile: ``Define``, which a start made with one must follow).

Each attempt's outcome used to be a message of its own: a pykka envelope, an inbox put
and get, and a Scheduler turn (a clock read, a pump of the agent's queue, a flush
check) per step. At 256 in flight the outcomes come in bursts, so the hosts now append
them to one deque and tell the Scheduler a :data:`DRAIN` only when none is on its way;
the Scheduler takes the whole burst in one turn (``Scheduler._on_drain``) and pumps
and flushes once per :data:`~herder.actors._scheduler.FLUSH_AT` workflows, as it did
per message.

Nothing is lost or reordered, with a lock taken only to tell (the deque's
``append``/``popleft`` are atomic, a bool store too, and only the Scheduler's thread
takes):

- a host appends, *then* tells a drain unless ``told`` says one is on its way; ``told``
  is set, and its DRAIN told, under a lock, so a host that finds the flag set while the
  lock is held waits for that DRAIN to be in the inbox before its ``put`` returns (else
  its next message, told at once, could overtake it: a start's Unadmit before its early
  Admit ran a workflow that was never created);
- the Scheduler clears ``told``, *then* counts the outcomes it will take
  (:meth:`Answers.taking`), so every outcome appended after that count finds ``told``
  clear, or set by an appender who told a drain after it;
- so each outcome is taken no later than the drain that was in the inbox, or sent, when
  it was appended, and a host's later messages (an instance's crash) still come after
  its earlier outcomes. Of two hosts that both saw ``told`` clear, the second finds it
  set under the lock, or cleared by a drain that began since, and tells another (which
  takes what is left, or nothing).

A drain takes only what was there when it began, so outcomes that keep coming cannot
hold the Scheduler from its other messages (a durable batch, a start): what came since
has a drain of its own behind them.

A Scheduler that died left ``told`` set with its drain in a dead inbox: the next one
calls :meth:`Answers.restart` when it starts, which takes what waits (outcomes are
stale by then: their tokens are not in flight any more) and clears the flag. It drops
the starts on their way that its predecessor was told of: what followed one (the
Unadmit of a creation that failed) may have died in that inbox, and the recovery that
comes next takes each that landed from the store, or has its Landing admit it
(``EngineContext.early_epoch``). It drops the definitions too: it reads them all from
``EngineContext.plans``, which may hold another since (a promoted standby's registered
plan gives way to the stored one of a started version).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Final


class Drain:
    """Scheduler message: take the outcomes waiting in :class:`Answers`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "DRAIN"


DRAIN: Final = Drain()


class Answers:
    """The outcomes waiting for the Scheduler (the module docstring)."""

    __slots__ = ("_lock", "_queue", "_tell", "told")

    def __init__(self, tell: Callable[[Any], None]) -> None:
        self._queue: deque[Any] = deque()
        self._tell = tell  # to the current Scheduler (EngineContext.tell_scheduler)
        self.told = False  # a DRAIN is on its way (or being handled)
        self._lock = threading.Lock()  # held while told is set and its DRAIN told

    def put(self, outcome: Any) -> None:
        """An attempt ended: queue its outcome (any host thread). Once this returns, a
        DRAIN that takes it is in the inbox (or being handled)."""
        self._queue.append(outcome)
        if self.told and not self._lock.locked():
            return  # (the lock is free: the DRAIN the flag stands for has been told)
        with self._lock:
            if not self.told:
                self.told = True
                self._tell(DRAIN)

    def taking(self) -> tuple[deque[Any], int]:
        """The Scheduler takes: the queue and how many to pop from it now."""
        self.told = False
        return self._queue, len(self._queue)

    def restart(self, keep: Callable[[Any], bool]) -> None:
        """A new Scheduler runs: have it drain what its predecessor left, of which only
        what ``keep`` says (the rest is dropped)."""
        with self._lock:
            queue = self._queue
            for _ in range(len(queue)):
                waiting = queue.popleft()
                if keep(waiting):
                    queue.append(waiting)
            self.told = True
            self._tell(DRAIN)

    def __len__(self) -> int:
        return len(self._queue)
