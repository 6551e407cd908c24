"""The console's connections: a thread each while one of the slots is free (when none
is, the connection that has waited longest for a request of which nothing has come is
closed to make room, and with none such the new one is answered 503 at once), and a
request that must arrive whole before its deadline."""

from __future__ import annotations

import contextlib
import fcntl
import http.server
import io
import select
import socket
import sys
import termios
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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._readers: dict[socket.socket, Deadline] = {}  # the connections served
        self._lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def reader(self, sock: socket.socket) -> Deadline:
        """The reads of a connection served (made as it was accepted, so that
        :meth:`_make_room` knows it from then on, before its thread runs)."""
        return self._readers[sock]

    def _make_room(self) -> bool:
        """Close the connection that has waited longest for a request of which no byte
        has come (a keep-alive one between requests, one never used): one client's idle
        connections held every slot, and everyone else, the operator too, got 503."""
        with self._lock:  # (under it: its thread cannot close the socket meanwhile)
            idle = [r for r in self._readers.values() if r.waiting and not r.pending()]
            if not idle:
                return False
            oldest = min(idle, key=lambda r: r.deadline)
            oldest.waiting = False
            with contextlib.suppress(OSError):  # its wait for a request ends, its thread
                oldest.sock.shutdown(socket.SHUT_RDWR)
        return True

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve the connection on a thread of its own, if one of the slots is free or
        one idle connection's can be had; else answer 503 at once, on the accepting
        thread, and close it."""
        free = self.slots.acquire(blocking=False)
        if not free and self._make_room():
            free = self.slots.acquire(timeout=1.0)  # (the closed one's thread gives it)
        if not free:
            try:
                request.settimeout(1.0)  # (a client that reads nothing cannot hold us)
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        with self._lock:
            self._readers[request] = Deadline(request, self.console.idle_timeout)
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: it gives its slot back itself
            with self._lock:
                self._readers.pop(request, None)
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
            with self._lock:
                self._readers.pop(request, None)
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
        self.sock, self._idle = sock, idle
        self.anew()

    def anew(self) -> None:
        """A request is awaited from now on: no byte of it has come yet."""
        self.deadline = time.monotonic() + self._idle
        self.waiting = True

    def pending(self) -> bool:
        """Whether bytes are there to be read (a client's close is none; a request sent
        before it is)."""
        try:
            unread = fcntl.ioctl(self.sock.fileno(), termios.FIONREAD, bytes(4))
        except OSError:
            return True  # (cannot tell: not taken for idle)
        return int.from_bytes(unread, sys.byteorder) > 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"the request did not arrive whole within {self._idle} s")
        if self.waiting:  # a request's first byte is awaited here, where it is not read:
            poller = select.poll()  # until it is, _make_room sees it pending
            poller.register(self.sock, select.POLLIN)
            if not poller.poll(min(left, self._idle) * 1000):
                raise TimeoutError("timed out")  # (as the socket's own timeout says it)
            self.waiting = False
        self.sock.settimeout(min(left, self._idle))
        try:
            return self.sock.recv_into(buffer)
        finally:
            self.sock.settimeout(self._idle)  # (the answer is written under the idle one)
