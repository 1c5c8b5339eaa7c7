"""The HTTP server's connections: accepted on one thread, answered by a fixed pool.

A thread per connection made 3,000 idle sockets cost 3,000 threads. Here a
connection waits in a selector, costing one file descriptor, until its first
bytes arrive; only then does a worker take it, answer one request and close
it (the handler speaks HTTP/1.0: no keep-alive to park). A connection that
sends nothing within the idle timeout is closed; beyond ``max_connections`` a
new one gets a canned 503 from the selector thread, no worker involved. A
client that connected and went away is closed on the selector thread too, so
thousands closing at once never queue in front of a real request.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import queue
import resource
import selectors
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

Serve = Callable[[socket.socket, Any], None]  # answers one request, then closes the socket

TICK_S = 0.25  # idle timeouts are checked this often
ACCEPT_PAUSE_S = 0.1  # out of file descriptors: stop accepting this long, then retry
_FD_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
_LISTENER, _WAKE = object(), object()


@dataclass(slots=True)
class _Parked:
    """A connection waiting for its first bytes."""

    sock: socket.socket
    addr: Any
    since: float  # accepted at (monotonic)


def allow_descriptors(wanted: int) -> None:
    """Raise the soft open-files limit towards ``wanted`` (at most the hard limit): the
    common soft default of 1,024 would stop accepting long before ``http.max_connections``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if hard != resource.RLIM_INFINITY and hard < wanted:
        log.warning(
            "http: the open-files limit is %d, fewer than the %d that http.max_connections "
            "needs; connections beyond it wait",
            hard,
            wanted,
        )


def busy_answer(max_connections: int) -> bytes:
    """The 503 sent beyond the connection cap, built once."""
    body = (
        f'{{"error": "too many open connections (http.max_connections={max_connections}); '
        'retry shortly"}'
    ).encode()
    head = (
        "HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Retry-After: 1\r\nConnection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class ConnectionPool:
    """Accepts on ``listener`` and hands each connection with a request to ``serve``."""

    def __init__(
        self,
        listener: socket.socket,
        serve: Serve,
        *,
        workers: int,
        max_connections: int,
        idle_timeout_s: float,
    ) -> None:
        self._listener = listener
        self._serve = serve
        self._max = max_connections
        self._idle_s = idle_timeout_s
        self._refusal = busy_answer(max_connections)
        self._parked: OrderedDict[int, _Parked] = OrderedDict()  # oldest first
        self._busy = 0  # handed to the workers, not yet closed
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[tuple[socket.socket, Any] | None] = queue.SimpleQueue()
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._closing = threading.Event()
        self._paused_until = 0.0  # accepting paused (out of descriptors) until then
        self._last_fd_warning = 0.0
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)
        self._workers = [
            threading.Thread(target=self._work, name=f"http-{i}", daemon=True)
            for i in range(workers)
        ]

    def start(self) -> None:
        self._listener.setblocking(False)
        self._sel.register(self._listener, selectors.EVENT_READ, _LISTENER)
        self._sel.register(self._wake_r, selectors.EVENT_READ, _WAKE)
        for w in self._workers:
            w.start()
        self._thread.start()

    def open_connections(self) -> int:
        with self._lock:
            return len(self._parked) + self._busy

    def close(self) -> None:
        """Stop accepting, close the waiting connections; workers end after their request."""
        self._closing.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread.is_alive():
            self._thread.join(2.0)
        for _ in self._workers:
            self._jobs.put(None)
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def _run(self) -> None:
        try:
            while not self._closing.is_set():
                events = self._sel.select(TICK_S)
                # A fresh connection first: it must not wait behind thousands of closes.
                events.sort(key=lambda e: e[0].data is not _LISTENER)
                for key, _ in events:
                    if key.data is _LISTENER:
                        self._accept()
                    elif key.data is not _WAKE:
                        self._ready(key.fd)
                self._expire(time.monotonic())
        except Exception:  # logged, not a raw thread traceback on stderr
            log.exception("http: the connection thread failed; the endpoint is down")
        finally:
            for parked in self._parked.values():
                parked.sock.close()
            self._parked.clear()

    def _accept(self) -> None:
        while True:
            try:
                sock, addr = self._listener.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue  # the client gave up while queued
            except OSError as e:
                if e.errno not in _FD_ERRNOS:
                    raise
                self._pause_accepting(e)
                return
            if self.open_connections() >= self._max:
                self._refuse(sock)
                continue
            sock.setblocking(True)  # the worker sets its timeout; the selector only peeks
            with self._lock:
                self._parked[sock.fileno()] = _Parked(sock, addr, time.monotonic())
            self._sel.register(sock, selectors.EVENT_READ, None)

    def _refuse(self, sock: socket.socket) -> None:
        """Beyond the cap: a 503 written without blocking, then closed."""
        with contextlib.suppress(OSError):
            sock.send(self._refusal, socket.MSG_DONTWAIT)
            sock.shutdown(socket.SHUT_WR)
            # Unread request bytes would make close() a reset that loses the 503.
            sock.recv(65536, socket.MSG_DONTWAIT)
        sock.close()

    def _pause_accepting(self, err: OSError) -> None:
        # The listener stays readable while no descriptor is free: without a pause the
        # selector would spin on it.
        now = time.monotonic()
        if now - self._last_fd_warning > 10.0:
            self._last_fd_warning = now
            log.warning("http: cannot accept a connection (%s); raise the open-files limit "
                        "or lower http.max_connections", err.strerror or err)  # fmt: skip
        self._sel.unregister(self._listener)
        self._paused_until = now + ACCEPT_PAUSE_S

    def _ready(self, fd: int) -> None:
        """Bytes (or the end) arrived on a waiting connection."""
        parked = self._parked[fd]
        try:
            first = parked.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return  # spurious wake-up: keep waiting
        except OSError:
            first = b""  # reset by the client
        self._sel.unregister(parked.sock)
        with self._lock:
            del self._parked[fd]
            if first:
                self._busy += 1
        if first:
            self._jobs.put((parked.sock, parked.addr))
        else:  # connected and went away without a request: nothing to answer
            parked.sock.close()

    def _expire(self, now: float) -> None:
        if self._paused_until and now >= self._paused_until:
            self._paused_until = 0.0
            self._sel.register(self._listener, selectors.EVENT_READ, _LISTENER)
        while self._parked:
            fd, parked = next(iter(self._parked.items()))
            if now - parked.since < self._idle_s:
                return
            self._sel.unregister(parked.sock)
            with self._lock:
                del self._parked[fd]
            parked.sock.close()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            sock, addr = job
            try:
                self._serve(sock, addr)
            finally:
                with self._lock:
                    self._busy -= 1
