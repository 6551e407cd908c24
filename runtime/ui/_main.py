"""``herder ui``: start the console, print its URL, serve until Ctrl-C or SIGTERM."""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterable
from typing import Any, TextIO

from herder.runtime.ui._server import Console


def run_console(
    store: str,
    host: str,
    port: int,
    token: str | None,
    out: TextIO,
    *,
    allow_hosts: Iterable[str] = (),
) -> int:
    """Serve the console of ``store``; returns the exit code once stopped."""
    token = token or os.environ.get("HERDER_UI_TOKEN") or None
    try:
        console = Console(store, host=host, port=port, token=token, allow_hosts=allow_hosts)
    except OSError as exc:
        sys.stderr.write(
            f"herder ui: cannot listen on {host}:{port}: {exc}; {_bind_hint(exc, port)}\n"
        )
        return 1
    if console.exposed:
        sys.stderr.write(
            f"herder ui: listening on {host}, reachable from other machines; only the token "
            "protects actions and anyone who can reach it can read the store\n"
        )
    out.write(f"herder ui: serving store {store}\n  open {console.url}\n")
    out.flush()
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_signal)
    thread = console.start()
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        console.shutdown()
        thread.join(timeout=5)
    return 0


def _bind_hint(exc: OSError, port: int) -> str:
    """What to change when the console cannot listen: the host or the port."""
    if isinstance(exc, socket.gaierror):
        return "--host is not a name this machine can resolve: give an address of it"
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            "--host is not an address of this machine: give one of its own (127.0.0.1, "
            "or 0.0.0.0 for all of them)"
        )
    if exc.errno == errno.EADDRINUSE:
        return "the port is taken by another program: try another --port (0: any free one)"
    if exc.errno == errno.EACCES and 0 < port < 1024:
        return "ports below 1024 need privileges: try a --port of 1024 or more (0: any free one)"
    return "check --host and --port"
