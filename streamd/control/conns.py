"""The HTTP server's connections: accepted on one thread, answered by a fixed pool.

A thread per connection made 3,000 idle sockets cost 3,000 threads. Here a
connection waits in a selector, costing one file descriptor, while its request
head (request line and headers) arrives, read by the selector thread; only
once it is whole does a worker take it, answer one request and close it (the
handler speaks HTTP/1.0: no keep-alive to park). A head not whole within the
idle timeout of the connection's accept is closed, so a client trickling a
byte every few seconds (slowloris) holds a descriptor, never a worker: before
the token is even read, 50 such clients took all 48 workers and /healthz went
unanswered. A head over ``MAX_HEAD_BYTES`` gets a canned 431; beyond
``max_connections`` a new connection gets a canned 503, both from the
selector thread, no worker involved. A client that connected and went away
is closed on the selector thread too, so thousands closing at once never
queue in front of a real request.
"""

from __future__ import annotations

import contextlib
import errno
import json
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

# Answers one request, then closes the socket; the bytes are what was read of it already.
Serve = Callable[[socket.socket, Any, bytes], None]

TICK_S = 0.25  # idle timeouts are checked this often
ACCEPT_PAUSE_S = 0.1  # out of file descriptors: stop accepting this long, then retry
_FD_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# A request line and headers larger than this are refused (431): every route's head is a
# few hundred bytes; 99 headers of 65 KB each held 6 MB a request, 0.8 GB on 48 workers.
MAX_HEAD_BYTES = 32 * 1024
_HEAD_ENDS = (b"\r\n\r\n", b"\n\n")
_LISTENER, _WAKE = object(), object()


@dataclass(slots=True)
class _Parked:
    """A connection waiting for its first bytes."""

    sock: socket.socket
    addr: Any
    since: float  # accepted at (monotonic)
    head: bytearray  # what arrived of the request so far


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
    return _canned(
        "503 Service Unavailable",
        f"too many open connections (http.max_connections={max_connections}); retry shortly",
        "Retry-After: 1\r\n",
    )


def _canned(status: str, error: str, extra: str = "") -> bytes:
    body = json.dumps({"error": error}).encode()
    head = (
        f"HTTP/1.0 {status}\r\nContent-Type: application/json\r\n{extra}"
        f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


_HEAD_TOO_LARGE = _canned(
    "431 Request Header Fields Too Large", f"request head over {MAX_HEAD_BYTES} bytes"
)


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
        self.heads_refused = 0  # heads too large (431)
        self._parked: OrderedDict[int, _Parked] = OrderedDict()  # oldest first
        self._busy = 0  # handed to the workers, not yet closed
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[tuple[socket.socket, Any, bytes] | None] = queue.SimpleQueue()
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
                self._refuse(sock, self._refusal)
                continue
            sock.setblocking(True)  # the worker sets its timeout; the selector reads DONTWAIT
            with self._lock:
                self._parked[sock.fileno()] = _Parked(sock, addr, time.monotonic(), bytearray())
            self._sel.register(sock, selectors.EVENT_READ, None)

    def _refuse(self, sock: socket.socket, answer: bytes) -> None:
        """A canned answer (503, 431) written without blocking, then closed."""
        with contextlib.suppress(OSError):
            sock.send(answer, socket.MSG_DONTWAIT)
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
        """Bytes (or the end) arrived on a waiting connection: a whole head goes to a
        worker, with the bytes read so far."""
        parked = self._parked[fd]
        try:
            got = parked.sock.recv(MAX_HEAD_BYTES + 1 - len(parked.head), socket.MSG_DONTWAIT)
        except BlockingIOError:
            return  # spurious wake-up: keep waiting
        except OSError:
            got = b""  # reset by the client
        start = max(0, len(parked.head) - 3)  # an end split across reads is found too
        parked.head += got
        # Only the new bytes are searched: a head trickled in 1,000 pieces must not cost
        # the connection thread 1,000 searches of 32 KiB.
        whole = any(parked.head.find(end, start) >= 0 for end in _HEAD_ENDS)
        too_large = not whole and len(parked.head) > MAX_HEAD_BYTES
        if got and not whole and not too_large:
            return  # more to come, within the idle timeout of its accept
        self._sel.unregister(parked.sock)
        with self._lock:
            del self._parked[fd]
            if whole:
                self._busy += 1
        if whole:
            self._jobs.put((parked.sock, parked.addr, bytes(parked.head)))
        elif too_large:
            self.heads_refused += 1
            self._refuse(parked.sock, _HEAD_TOO_LARGE)
        else:  # went away before its request was whole: nothing to answer
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
            sock, addr, head = job
            try:
                self._serve(sock, addr, head)
            finally:
                with self._lock:
                    self._busy -= 1
