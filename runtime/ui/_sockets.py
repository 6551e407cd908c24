"""The console's connections: a thread each while one of the slots is free (503 at
once when none is), and a request that must arrive whole before its deadline."""

from __future__ import annotations

import http.server
import io
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from herder.runtime.ui._server import Console

_BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Retry-After: 1\r\nConnection: close\r\n\r\n"
    b"The console serves as many connections as it may at once; try again shortly.\n"
)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = socket.SOMAXCONN
    """Connections the kernel holds until they are accepted (socketserver's default is 5):
    a burst of more (browser tabs reloading, a few dashboards) had the kernel drop their
    SYNs, and their clients waited in SYN retries, 1, 3, 7, 15, 31 s, half of 300 longer
    than 30 s, before being served or told 503."""
    console: Console
    slots: threading.BoundedSemaphore  # one per connection served (_server.MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection on a thread of its own, if one of the slots is free;
        else answer 503 at once, on the accepting thread, and close it."""
        if not self.slots.acquire(blocking=False):
            try:
                request.settimeout(1.0)  # (a client that reads nothing cannot hold us)
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: it gives its slot back itself
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """socketserver's, with the slot given back before the connection is closed: a
        client that sees its connection close may come again at once and find room."""
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.slots.release()
            self.shutdown_request(request)


class Server6(Server):
    address_family = socket.AF_INET6  # (--host ::1 or :: was bound as IPv4 and failed)


class Deadline(io.RawIOBase):
    """The connection's reads, each bounded by what is left of the request's
    ``deadline`` (monotonic): a client trickling a byte now and then (slowloris) is
    dropped like a silent one, instead of holding its thread for as long as it likes."""

    def __init__(self, sock: socket.socket, idle: float) -> None:
        super().__init__()
        self._sock, self._idle = sock, idle
        self.deadline = time.monotonic() + idle

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"the request did not arrive whole within {self._idle} s")
        self._sock.settimeout(min(left, self._idle))
        try:
            return self._sock.recv_into(buffer)
        finally:
            self._sock.settimeout(self._idle)  # (the answer is written under the idle one)
