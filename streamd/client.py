"""Subscriber library: iterate decoded streamd events and see every gap.

    from streamd.client import Subscriber
    with Subscriber("tcp://127.0.0.1:5556", topics=["det."]) as sub:
        for event in sub:
            print(event.stream, event.payload["objects"])
        print(sub.gaps)

``seq`` is consecutive per (stream, topic kind) within an ``epoch``; a jump is
recorded as a :class:`Gap`; a new epoch is a publisher restart, recorded in
``restarts`` and not counted as a gap.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType

import zmq

from streamd.publish.wire import Event, decode

__all__ = ["Event", "Gap", "GapTracker", "Subscriber"]


@dataclass(frozen=True, slots=True)
class Gap:
    """Messages ``expected`` .. ``received - 1`` of (stream, kind) never arrived."""

    stream: str | None
    kind: str
    epoch: int
    expected: int
    received: int

    @property
    def missing(self) -> int:
        return self.received - self.expected


class GapTracker:
    """Follows seq/epoch per (stream, kind)."""

    def __init__(self) -> None:
        self._next: dict[tuple[str | None, str], tuple[int, int]] = {}
        self.gaps: list[Gap] = []
        self.restarts: list[tuple[int, int]] = []  # (old epoch, new epoch)

    def observe(self, event: Event) -> Gap | None:
        key = (event.stream, event.kind)
        epoch, seq = event.epoch, event.seq
        prev = self._next.get(key)
        self._next[key] = (epoch, seq + 1)
        if prev is None:
            return None
        prev_epoch, expected = prev
        if epoch != prev_epoch:
            if (prev_epoch, epoch) not in self.restarts:
                self.restarts.append((prev_epoch, epoch))
            return None
        if seq > expected:
            gap = Gap(event.stream, event.kind, epoch, expected, seq)
            self.gaps.append(gap)
            return gap
        return None


class Subscriber:
    """A SUB socket that yields :class:`Event` objects and tracks gaps."""

    def __init__(
        self,
        endpoint: str,
        topics: Iterable[str] = ("",),
        rcvhwm: int = 10_000,
        on_gap: Callable[[Gap], None] | None = None,
    ) -> None:
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVHWM, rcvhwm)
        for topic in topics:
            self._sock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self._sock.connect(endpoint)
        self.tracker = GapTracker()
        self._on_gap = on_gap

    @property
    def gaps(self) -> list[Gap]:
        return self.tracker.gaps

    def recv(self, timeout_s: float | None = None) -> Event | None:
        """The next event, or None if none arrived within ``timeout_s``."""
        timeout_ms = None if timeout_s is None else max(0, int(timeout_s * 1000))
        if not self._sock.poll(timeout_ms):
            return None
        event = decode(self._sock.recv_multipart())
        gap = self.tracker.observe(event)
        if gap is not None and self._on_gap is not None:
            self._on_gap(gap)
        return event

    def events(
        self, timeout_s: float | None = None, idle_s: float | None = None
    ) -> Iterator[Event]:
        """Yield events until ``timeout_s`` total or ``idle_s`` without a message."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            wait = idle_s
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                wait = left if wait is None else min(wait, left)
            event = self.recv(wait)
            if event is not None:
                yield event
            elif idle_s is not None:  # idle, or the deadline cut the wait short: done either way
                return

    def __iter__(self) -> Iterator[Event]:
        return self.events()

    def close(self) -> None:
        self._sock.close()
        self._ctx.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
