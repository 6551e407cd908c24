"""``herder run`` (a daemon from a user's app factory) and ``herder handoff``.

An app is ``module:factory``: the runtime calls ``factory(rt)`` as its ``setup``, before
recovery, to register agents, workflows and schedules (work it starts must wait in a
thread for ``rt.wait_active()``).
Exit codes: 0 after a clean stop or handoff, 1 when the runtime failed or lost its lease.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pathlib
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, TextIO

from herder.runtime._retention import DEFAULT_RETENTION
from herder.runtime._runtime import Runtime
from herder.runtime._systemd import Watchdog, notify
from herder.store import (
    DEFAULT_LEASE,
    HerderError,
    InvalidInput,
    Lease,
    Store,
    StoreError,
    get_logger,
    has_store,
    holder_gone,
    holder_stopped,
    is_held,
    standby_waiting,
)

_log = get_logger("herder.daemon")

_STOPPING = (signal.SIGTERM, signal.SIGINT)


def load_app(spec: str) -> Callable[[Runtime], Any]:
    """Import ``module:factory`` (the current directory is importable, as for ``python -m``)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise InvalidInput(f"--app must look like module:factory, got {spec!r}")
    try:
        here: str | None = os.getcwd()
    except OSError:  # (deleted under it, as a deploy does a release's: PYTHONPATH may do)
        here = None
    if here is not None and here not in sys.path:
        sys.path.insert(0, here)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        gone = "" if here else " (the working directory no longer exists: cd into the new one)"
        raise InvalidInput(f"cannot import app module {module_name!r}: {exc}{gone}") from exc
    except Exception as exc:  # (the module's own code failed: a SyntaxError, a bug)
        raise InvalidInput(
            f"app module {module_name!r} failed on import: {_failure(exc)}; fix it and run again"
        ) from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise InvalidInput(f"app module {module_name!r} has no callable {attr!r}")

    def setup(rt: Runtime) -> object:
        try:
            return factory(rt)  # (what it returns is Runtime's to judge: a coroutine?)
        except HerderError:
            raise  # (says what to do itself)
        except Exception as exc:
            raise InvalidInput(
                f"the app factory {spec!r} failed: {_failure(exc)}; it is called with the "
                "Runtime and registers agents, workflows and schedules"
            ) from exc

    return setup


def _failure(exc: BaseException) -> str:
    """``Type: message (file:line)``: an app's error and where it was raised, outside
    this module (nowhere, if Python raised it in the call itself), on one line."""
    ours = os.path.dirname(os.path.abspath(__file__))
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(ours)]
    place = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{place}"


def run_app(
    store: str,
    app: str,
    *,
    standby: bool,
    lease: float,
    drain_timeout: float,
    retention: float | None = DEFAULT_RETENTION,
    out: TextIO | None,
) -> int:
    """Open the runtime, let the app register, notify systemd, serve until stopped (``out``:
    None when started with stdout closed)."""
    factory = load_app(app)  # (first: logging the app's module set up on import is kept)
    if not logging.getLogger().handlers:  # under systemd, stderr goes to the journal
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # (the app's factory registers: before recovery)
    rt = Runtime(store, standby=standby, lease=lease, retention=retention, setup=factory)
    watchdog = Watchdog()
    rt._health_listeners.append(watchdog.ping)

    def announce_active() -> None:
        if rt.wait_active() and rt.is_active:
            notify(f"READY=1\nSTATUS=active on {store}\nMAINPID={os.getpid()}")
            _say(out, f"active {time.time():.3f} incarnation {rt._store.incarnation}\n")

    def announce_stopping() -> None:
        rt._wake.wait()
        notify("STOPPING=1")

    # From READY=1 on, a SIGTERM must drain: until run_forever has its own handlers, one
    # that comes is noted for it (it then stops at once, draining), as it would have been
    # (noted only: a handler takes no lock, see NotifyingEvent.signals).
    early = {sig: signal.signal(sig, lambda n, _: rt._wake.signals.append(n)) for sig in _STOPPING}
    if standby and not rt.is_active:
        notify(f"READY=1\nSTATUS=standby on {store}: waiting for the lease")
        _say(out, f"standby on {store}\n")
        threading.Thread(target=announce_active, name="herder-ready", daemon=True).start()
    else:
        announce_active()
    threading.Thread(target=announce_stopping, name="herder-stopping", daemon=True).start()
    try:
        rt.run_forever(drain_timeout=drain_timeout)
    finally:
        for sig, handler in early.items():
            signal.signal(sig, handler)
    notify("STOPPING=1")
    if rt._fatal is not None:
        _say(sys.stderr, f"herder run: stopped: {rt._fatal}\n")
        return 1
    _say(out, "stopped\n")
    return 0


APP_THREADS_GRACE = 1.0
"""Seconds ``herder run``'s process may take to exit once the runtime stopped."""


def leave(code: int) -> None:
    """Let the process exit with ``code`` (run_app's; for what it raised 1, or 130 for Ctrl-C)
    as usual, or, if it has not ended :data:`APP_THREADS_GRACE` seconds later, then, naming the
    threads it waited for. Python waits at exit for every thread not made a daemon
    thread: one the app started that never ends kept a daemon that said it stopped (or
    failed to start) from exiting, until systemd's ``TimeoutStopSec`` killed it, and one
    that lost its lease never exited to come back as a standby. (atexit handlers do not
    run when it is cut short; a caller that goes on instead of exiting is left alone:
    its main thread is still alive.)"""

    def cut_short() -> None:
        threading.Event().wait(APP_THREADS_GRACE)  # (a daemon thread: gone at the exit)
        main = threading.main_thread()
        # (not exiting: a caller in-process carried on; exiting, the main thread still
        # counts as alive while it joins an executor's workers, at the exit's start)
        if main.is_alive() and not getattr(threading, "_SHUTTING_DOWN", False):
            return
        left = sorted(t.name for t in threading.enumerate() if not t.daemon and t is not main)
        if not left:  # (past their wait: atexit handlers, a tracer's flush, may take long)
            return
        _log.warning(
            "exiting without waiting for threads the app started, which still run: %s; "
            "start them with daemon=True, or end them when the runtime stops",
            ", ".join(left),
        )
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # (closed, gone: nothing to flush)
                stream.flush()
        os._exit(code)

    threading.Thread(target=cut_short, name="herder-exit", daemon=True).start()


def _say(stream: TextIO | None, text: str) -> None:
    """Write a status line of ``herder run``. A reader that left (``herder run ... |
    true``: a broken pipe) or a terminal that went is no reason to skip the orderly stop
    (the drain, the lease's release) or the exit code: it raised out of run_app, which
    exited 0 at once, the lease held. Later lines there go to /dev/null. None: started
    with it closed (``>&-``), Python has no such stream: nothing is said."""
    if stream is None:
        return
    try:
        stream.write(text)
        stream.flush()
    except OSError:
        with contextlib.suppress(OSError, ValueError):  # (no file behind it: nothing to do)
            fd = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(fd, stream.fileno())
            finally:
                os.close(fd)


def request_handoff(
    store: str, deadline: float, wait: float | None, out: TextIO, *, force: bool = False
) -> int:
    """Ask the runtime holding ``store`` to hand over; wait (up to ``wait`` seconds, 0:
    not at all; None: ``deadline`` plus two of the holder's leases, as ``rt.handoff()``
    on a standby waits) until the lease moved.

    Refused (exit 1) when no standby waits to take over, unless ``force``: the runtime
    would stop cleanly (exit 0), which systemd's ``Restart=on-failure`` does not restart.
    """
    path = pathlib.Path(store)
    if not has_store(path):
        raise StoreError(
            f"no store at {path}: check --store; handoff asks the runtime running that store "
            "(`herder run --store PATH`) to hand over"
        )
    # As a client: a standby's open took the flock a dead holder left, and kept it while
    # it waited, so the runtime restarted meanwhile was refused (StoreLocked).
    with Store(path, mode="client") as st:
        held = st.read_lease()
        if held is None or held.released or held.expires <= time.time():
            state = "no runtime ever held it" if held is None else held.describe()
            sys.stderr.write(f"herder handoff: no runtime holds the lease of {path} ({state})\n")
            return 1
        if holder_gone(held, have_flock=not is_held(path)):
            sys.stderr.write(
                f"herder handoff: the runtime holding the lease of {path} (pid {held.pid}) is "
                "gone: it ended without releasing the lease, so nothing can hand over. A waiting "
                "standby takes over by itself; else start the runtime again (it opens at once)\n"
            )
            return 1
        if not force and not standby_waiting(path):
            sys.stderr.write(
                f"herder handoff: no standby waits on {path}, so handing over would stop the "
                f"only runtime (pid {held.pid}) and leave the service down. Start one first "
                "(`herder run --standby ...` or Runtime(path, standby=True)), or pass --force "
                "to stop it anyway\n"
            )
            return 1
        if wait is None:  # (a fixed minute gave up on a drain asked to last longer)
            wait = deadline + 2 * (held.duration or DEFAULT_LEASE)
        asked = time.monotonic()
        # To the holder looked at: one that took the lease since (its holder killed
        # meanwhile) ignores it, where it handed over to nobody and left the service down.
        st.request_handoff(deadline, by=f"herder handoff (pid {os.getpid()})", to=held.incarnation)
        out.write(f"asked pid {held.pid} to hand over (deadline {deadline} s)\n")
        if wait == 0:  # (asked: it is written, and acted on without us)
            out.write("not waiting for the lease to move (--wait 0)\n")
            return 0
        out.flush()
        give_up = asked + wait
        pause = threading.Event()  # never set: the pause between polls
        while time.monotonic() < give_up:
            now = st.read_lease()
            if now is not None and now.owner != held.owner:
                return _moved(held, now, asked, out)
            if now is not None and now.released and not standby_waiting(path):
                break  # nobody is there to take it (forced, or the standby went meanwhile)
            if holder_stopped(held) and not standby_waiting(path):
                sys.stderr.write(
                    f"herder handoff: the runtime holding the lease of {path} (pid {held.pid}) "
                    "is stopped (SIGSTOP, a debugger, a paused VM or container), so it hands "
                    "nothing over, and no standby waits to take over. The request is written: "
                    f"it hands over once resumed (`kill -CONT {held.pid}`)\n"
                )
                return 1
            pause.wait(0.02)
        now = st.read_lease()
        if now is not None and now.owner != held.owner:  # (taken right after the last look)
            return _moved(held, now, asked, out)
        if now is not None and now.released and (force or standby_waiting(path)):
            out.write("the lease was released; no standby has taken it yet\n")
            return 0
        if now is not None and now.released:
            sys.stderr.write(
                f"herder handoff: pid {held.pid} handed over and stopped, but no standby waits "
                f"on {path} any more (it stopped or died meanwhile): no runtime serves the "
                f"store now. Start one (`herder run --store {path} ...`, or its service)\n"
            )
            return 1
        sys.stderr.write(
            f"herder handoff: the lease did not move within {wait:g} s (the request stays "
            "written: the runtime may still hand over; pass --wait S to wait longer)\n"
        )
        return 1


def _moved(held: Lease, now: Lease, asked: float, out: TextIO) -> int:
    """Say who holds the lease now, and whether the holder asked handed it over (exit 0
    either way: the store is served)."""
    took = time.monotonic() - asked
    if now.after in (None, "released"):  # (None: taken by a herder that did not say)
        out.write(f"handed over in {took:.2f} s: pid {now.pid} holds the lease now\n")
    else:  # it died, or stopped renewing, before it heard the request
        why = _GONE.get(now.after, now.after)
        out.write(
            f"pid {held.pid} went away without handing over ({why}); a standby took over: "
            f"pid {now.pid} holds the lease now\n"
        )
    return 0


_GONE = {"holder gone": "it died", "expired": "its lease expired unrenewed"}
