"""A Runtime's life (a base class of :class:`Runtime`): becoming active (the tree,
recovery), standby promotion, handoff, the drain, stop and ``run_forever``.

The drain waits on the Scheduler's commit listener: every outcome that leaves an agent
is a commit, so it asks how many attempts still run only after a commit (or, as a
backstop for an attempt that ends without one, once a second), never in a poll loop.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import TYPE_CHECKING, cast

import pykka

from herder.actors import (
    NotActive,
    RuntimeClosed,
    SteadyClock,
    SystemClock,
    WrongThread,
    call,
    start_tree,
)
from herder.actors.ray import detach
from herder.runtime._async import serving_ended
from herder.runtime._config import at_least
from herder.runtime._firing import Firer
from herder.runtime._ha import ask_handoff, clock_floor
from herder.runtime._keeper import LeaseKeeper
from herder.runtime._part import whole as _runtime
from herder.runtime._waits import not_in_setup, off_loop, off_writer, seconds, wait_limit
from herder.store import LeaseLost, TimedOut, get_logger, real_number

if TYPE_CHECKING:
    from herder.runtime._runtime import Runtime

_log = get_logger("herder.runtime")

SIGNAL_POLL = 0.05
"""Seconds run_forever waits between two looks for a signal (its handler only notes it)."""
_BACKSTOP = 1.0
"""Seconds the drain waits for a commit before it asks the Scheduler again anyway."""


class Lifecycle:
    """Start, hand over and stop a :class:`Runtime`."""

    def __enter__(self) -> Runtime:
        return _runtime(self)

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self, timeout: float = 10.0, *, drain: bool = False) -> None:
        """Stop the actors and close the store. Unfinished work resumes at the next open.

        From the moment it is called, :meth:`start` raises :class:`RuntimeClosed`. With
        ``drain=True`` nothing new is dispatched and attempts already running on agents
        may finish (their outcome recorded) for up to ``timeout`` seconds first; whatever
        still runs then is run again, with the same idempotency key, at the next open.
        ``timeout`` also bounds how long the actors may take to stop, and the store to
        close. Idempotent: a call while another thread stops the runtime waits (up to
        ``timeout``) for that stop to end. If the store's writer cannot finish within it
        (a stalled disk), the runtime is stopped all the same (every waiter hears
        :class:`RuntimeClosed`) and :class:`TimedOut` says the store is still open:
        call again to retry. A ``timeout`` that is not a number of seconds >= 0 raises
        :class:`InvalidInput` (None: no limit); ``drain=True`` on the loop of the ``async
        def`` actions raises :class:`WrongThread` (await :meth:`stop_async` there).
        """
        timeout = wait_limit(timeout)  # (a negative one stopped nothing, and blamed the disk)
        rt = _runtime(self)
        if drain and not rt._closed:  # (the drain would wait for attempts on this loop)
            off_loop(rt._ctx.event_loop, "stop(drain=True)", "rt.stop_async(drain=True)")
        self._stop(timeout, timeout if drain else None)

    def _stop(self, timeout: float, drain: float | None) -> None:
        """:meth:`stop`, draining for ``drain`` seconds first (None: no drain)."""
        rt = _runtime(self)
        closed = rt._stop_starting()
        if closed:
            if self._await_stop(timeout):
                rt._store.close(timeout)  # (again, if it timed out the first time)
            return
        if rt._firer is not None:
            rt._firer.stop()
        if drain is not None:
            try:
                self._drain(drain)
            except Exception:
                # A drain that cannot finish must not leave the runtime half-stopped.
                _log.exception("draining failed; stopping without it")
        with rt._lock:
            closed, rt._closed = rt._closed, True
            if not closed:
                rt._stopper = threading.get_ident()
        if closed:
            self._await_stop(timeout)
            return
        try:
            self._close(timeout)
        finally:
            rt._stopped.set()

    def _await_stop(self, timeout: float) -> bool:
        """Wait for the stop() that closed the runtime to end (a second stop() returned
        at once and closed the store under the actors the first one was still stopping);
        False when called inside it (a signal handler): it goes on once we return."""
        rt = _runtime(self)
        if rt._stopper == threading.get_ident() and not rt._stopped.is_set():
            return False
        if not rt._stopped.wait(timeout):
            raise TimedOut(
                f"another thread's stop() of the runtime on {rt.path} did not end within "
                f"{timeout}s; call stop() again to wait for it"
            )
        return True

    def _close(self, timeout: float) -> None:
        """Stop the actors, close the store, answer the waiters (once: the closing stop)."""
        rt = _runtime(self)
        if rt._watcher is not None:
            rt._watcher.stop()
        with rt._promotion:
            root = rt._root
        try:
            if root is not None and root.is_alive():
                root.stop(timeout=timeout)
        except pykka.ActorDeadError:
            pass
        except pykka.Timeout:
            _log.warning("supervision tree did not stop within %ss", timeout)
        finally:
            if rt._keeper is not None:
                rt._keeper.stop()  # (the actors are stopped: the runtime's health is gone)
            if root is not None:
                if rt._ctx.lost is None and not rt._store.releasing:  # (else: another's)
                    rt._retention.on_stop(timeout)
                rt._store.note_clock(rt._ctx.clock.time())  # for the next holder
            try:
                rt._store.close(timeout)
            except TimeoutError as exc:  # a stalled disk: the waiters hear of the stop first
                stuck: TimeoutError | None = exc
            else:
                stuck = None
            rt._ctx.event_loop.close(timeout)
            if rt._ctx.placements:
                detach(rt._ctx)  # kills its Ray workers; Ray stops with its last user
        lost = rt._ctx.lost
        where = "the runtime that holds the store now" if lost else "the next runtime on the store"
        rt._fail_waiters(
            RuntimeClosed(
                ("this runtime lost the store's lease" if lost else "the runtime was stopped")
                + f" before the workflow ended; it is durable and goes on under {where}: "
                "wait for it there, or read its status from the store"
            )
        )
        rt._wake.set()
        rt._is_active.set()  # wakes wait_active(): a standby stopped first never will be
        if stuck is not None:
            raise TimedOut(
                f"the runtime stopped, but its store is still open: {stuck} (a stalled "
                "disk?); call stop() again to retry closing it"
            ) from stuck

    def run_forever(self, *, drain_timeout: float = 30.0) -> None:
        """Serve until SIGTERM or SIGINT, then drain and stop (see :meth:`stop`).

        Must be called from the main thread, which is where Python runs signal handlers:
        the handlers only note the signal (no lock), and this thread performs the shutdown.
        Returns early if the runtime is stopped from elsewhere or fails for good.
        """
        rt = _runtime(self)
        drain_timeout = wait_limit(drain_timeout, "drain_timeout")
        if threading.current_thread() is not threading.main_thread():
            raise WrongThread(
                "run_forever() must run in the main thread (Python delivers signals only "
                "there); from another thread, wait on your own event and call stop(drain=True)"
            )
        off_loop(rt._ctx.event_loop, "run_forever()", "rt.run_forever_async()")
        wake = rt._wake
        received = wake.signals  # (a handler takes no lock: see NotifyingEvent.signals)
        note = lambda signum, _: received.append(signum)  # noqa: E731 (no lock: no set())
        previous = {sig: signal.signal(sig, note) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            _log.info("runtime on %s serving until SIGTERM or SIGINT", rt.path)
            while not wake.wait(SIGNAL_POLL):  # polls for a signal, a stop() or a failure
                if received or rt._closed or rt._fatal is not None:
                    break
            if received:
                wake.set()  # (here, not in the handler: `herder run` says STOPPING=1)
                name = signal.Signals(received[0]).name
                _log.info("%s received: draining for up to %ss", name, drain_timeout)
            self._stop(*serving_ended(rt, drain_timeout))
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        _log.info("runtime on %s stopped", rt.path)

    # -- high availability -------------------------------------------------------------

    @property
    def is_active(self) -> bool:
        """True while this runtime holds the lease and runs its actors (not a standby)."""
        rt = _runtime(self)
        active = rt._is_active.is_set() and rt._ctx.lost is None
        return active and not rt._closed and rt._fatal is None

    def wait_active(self, timeout: float | None = None) -> bool:
        """Block until this (standby) runtime took the lease and recovered: True. False
        on timeout, or once it stopped or failed instead (it never becomes active then)."""
        rt = _runtime(self)
        not_in_setup(rt._in_setup, "wait_active()")  # (it would wait for itself)
        rt._is_active.wait(seconds(timeout))  # (set by a stop or a failure too)
        return rt.is_active

    def handoff(self, deadline: float = 30.0, *, timeout: float | None = None) -> bool:
        """Hand the store over without downtime.

        On the active runtime: dispatch nothing new, let running attempts finish for up
        to ``deadline`` seconds (their outcomes are recorded), release the lease so a
        standby takes over at once, and stop. Workflows started meanwhile wait in the
        store for the new leader. Returns True.

        On a standby: ask the active runtime (another process) to do the above, then wait
        up to ``timeout`` seconds (default: ``deadline`` plus two leases) until this
        runtime took the lease; returns whether it did (False once another has it).
        """
        rt = _runtime(self)
        timeout = seconds(timeout)
        number = real_number(deadline)  # any number (a Decimal, numpy), as the waits take
        given = deadline if number is None else number
        at_least("deadline", given, 0, "a finite number of seconds >= 0")
        deadline = cast("float", number)
        rt._check_open()  # (a stopped runtime has its root still: it hands nothing over)
        if rt._root is not None:
            off_loop(rt._ctx.event_loop, "handoff()", "rt.handoff_async()")  # (its drain)
            self._hand_over(deadline)
            return True
        if timeout is None:
            timeout = deadline + 2 * rt._store.lease_duration
        ask_handoff(rt._store, rt._watcher, deadline, timeout, rt._is_active)
        return rt.is_active

    def _hand_over(self, deadline: float) -> None:
        rt = _runtime(self)
        _log.warning("handing over %s: draining for up to %ss", rt.path, deadline)
        started = time.monotonic()
        self._drain(deadline)
        with rt._lock:
            rt._draining = True  # start() refuses from here: the lease is going
        released = rt._store.release_lease(timeout=rt._ask_timeout)
        _log.warning(
            "lease of %s %s after %.2fs of handoff; stopping",
            rt.path,
            "released" if released else "was already lost",
            time.monotonic() - started,
        )
        self.stop()

    def _become_active(self) -> None:
        """Start the actors and recover, once the store's lease is ours."""
        rt = _runtime(self)
        with rt._promotion:
            if rt._closed:
                return
            rt._ctx.reset_tokens()
            rt._ctx.clock = SteadyClock(rt._clock, floor=clock_floor(rt._store))
            rt._store_definitions()  # registered meanwhile (setup, a standby)
            # The Scheduler's first recovery counts the unfinished workflows (one scan).
            with rt._lock:
                rt._active = 0
            rt._listener.count_next_recovery()
            real = type(rt._clock) is SystemClock  # (see LeaseKeeper's gate)
            rt._keeper = LeaseKeeper(rt._store, rt._ctx, self._hand_over, gate=real)
            rt._listener.sweepers[:] = [
                rt._keeper.on_sweep,
                self._healthy,
                rt._retention.on_sweep,
                rt._ctx.health.on_sweep,  # agents' health checks (actors/_health.py)
            ]
            root = start_tree(
                rt._ctx,
                rt._clock,
                rt._config.sweep_interval,
                local_commands={"purge": rt._retention.on_command},
                on_fatal=self._on_fatal,
            )
            try:  # recovery has run: it counted the stored unfinished workflows. Till
                rt._recovered(root)  # then start() is NotActive: one it stored first was
            finally:  # counted twice, a slot lost for good
                rt._root = root  # (set all the same: a failure stops the tree through it)
            rt._resolve_ended()  # (waiters on a standby: what the last holder ended)
            rt._firer = Firer(rt, rt._ask_timeout)
            for declared in rt._declared.values():  # rt.schedule() in setup, on the standby
                rt._firer.define(declared)
            rt._declared.clear()
            if rt._fatal is not None:  # failed meanwhile (_failed saw no firer to halt)
                rt._firer.halt()
            rt._firer.start()
            rt._is_active.set()

    def _promote(self, reason: str) -> None:
        """The standby watcher took the lease: become the active runtime, or fail and stop
        the actors started (their sweeps would renew the lease for ever: none took over)."""
        try:
            self._become_active()
        except BaseException as exc:
            _log.critical("standby took the lease but could not start: %s", exc)
            self._failed(exc)
            if (root := _runtime(self)._root) is not None:
                root.stop(block=False)

    def _healthy(self) -> None:
        for listener in list(_runtime(self)._health_listeners):
            listener()

    def _failed(self, exc: BaseException) -> None:
        rt = _runtime(self)
        rt._fatal = exc  # (first: a waiter that comes later is refused, see Waiting._watch)
        if rt._keeper is not None:  # the lease lapses: a standby takes over
            rt._keeper.stop()
        if rt._firer is not None:  # its firings would be refused, retried for ever
            rt._firer.halt()
        rt._fail_waiters(
            RuntimeClosed(
                f"the runtime failed before the workflow ended ({exc}); the workflow is "
                "durable: wait for it under the runtime that holds the store next"
            )
        )
        rt._wake.set()
        rt._is_active.set()  # wakes wait_active() (it answers False now)

    def _on_fatal(self, exc: BaseException) -> None:
        _log.critical("herder runtime's supervision tree stopped for good: %s", exc)
        self._failed(exc)

    def _on_lease_lost(self, exc: LeaseLost) -> None:
        if not _runtime(self)._store.releasing:  # (else: our own release, a handoff)
            self._failed(exc)

    def _drain(self, timeout: float) -> None:
        """Dispatch nothing new and wait (up to ``timeout`` s) until no attempt runs."""
        rt = _runtime(self)
        rt._ctx.paused = True
        _log.info(
            "draining: dispatching nothing new, waiting up to %ss for running attempts", timeout
        )
        deadline = time.monotonic() + timeout
        committed = threading.Event()
        rt._listener.commit_waiters.append(committed.set)
        running = 0
        try:
            while (left := deadline - time.monotonic()) > 0:
                committed.clear()  # before asking: a commit after the answer wakes us
                try:
                    running = call(rt._scheduler, "in_flight", timeout=min(left, rt._ask_timeout))
                except (RuntimeClosed, pykka.ActorDeadError):
                    return
                if running == 0:
                    rt._settle(rounds=1)  # the last outcomes' commits
                    return
                committed.wait(min(_BACKSTOP, max(0.0, deadline - time.monotonic())))
        finally:
            rt._listener.commit_waiters.remove(committed.set)
        if running:  # (a drain of 0 s asked nothing)
            _log.warning(
                "%d attempts still running after draining %ss; they run again at the next open",
                running,
                timeout,
            )

    def _check_open(self) -> None:
        rt = _runtime(self)
        if rt._closed or rt._draining:  # (draining: a stop() or handoff is under way)
            now = "stopped;" if rt._closed else "stopping (stop() was called); once it has,"
            raise RuntimeClosed(f"the runtime is {now} open a new Runtime to continue")
        if rt._fatal is not None:
            raise RuntimeClosed(f"the runtime failed and stopped its actors: {rt._fatal}")

    def _check_active(self) -> None:
        self._check_open()
        off_writer("this call")  # (each caller waits for the Scheduler, or a commit)
        rt = _runtime(self)
        if rt._in_setup is not None:
            raise NotActive(
                "setup registers agents and workflows before recovery begins; start, "
                "cancel or retry workflows once Runtime() has returned (or from a thread "
                "that calls rt.wait_active() first)"
            )
        if rt._root is None:
            raise NotActive(
                f"this runtime is a standby on {rt.path}: it serves status() and list() "
                "until it takes the lease; call start/cancel/retry on the active runtime, "
                "or wait_active() first"
            )
