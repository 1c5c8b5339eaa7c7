"""Subscriber library: iterate decoded streamd events and see every gap.

    from streamd.client import Subscriber
    with Subscriber("tcp://127.0.0.1:5556", topics=["det."]) as sub:
        for event in sub:
            print(event.stream, event.payload["objects"])
        print(sub.gaps)

``seq`` is consecutive per (stream, topic kind) within an ``epoch``; a jump is
recorded as a :class:`Gap`; a new epoch is a publisher restart, recorded in
``restarts`` and not counted as a gap.

A daemon with ``security.curve`` talks only to clients holding an authorized key:

    keys = ClientKeys.load("keys/alice.key_secret", "keys/server.key")
    with Subscriber("tcp://cams.example:5556", curve=keys) as sub: ...

With a key it does not know (or none) the handshake fails and nothing arrives.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import zmq

from streamd.publish.curve import ClientKeys, connect_with
from streamd.publish.wire import Event, decode

__all__ = [
    "AlertClient",
    "AlertSubscriber",
    "ClientKeys",
    "Event",
    "Gap",
    "GapTracker",
    "ReplayError",
    "Subscriber",
]


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


class _Closing:
    """``with`` support for anything with ``close()``."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Subscriber(_Closing):
    """A SUB socket that yields :class:`Event` objects and tracks gaps.

    ``curve``: this client's keys and the daemon's public key, for a daemon with
    ``security.curve``.
    """

    def __init__(
        self,
        endpoint: str,
        topics: Iterable[str] = ("",),
        rcvhwm: int = 10_000,
        on_gap: Callable[[Gap], None] | None = None,
        curve: ClientKeys | None = None,
    ) -> None:
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVHWM, rcvhwm)
        connect_with(self._sock, curve)
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


RETRY_S = 1.0  # between replay attempts while the daemon does not answer


class ReplayError(Exception):
    """The daemon's request socket did not answer (or answered with an error)."""


class AlertClient(_Closing):
    """Requests to the daemon's ``journal.endpoint``: replay and state.

    A daemon that refuses ``curve`` (wrong or missing key) never answers:
    :class:`ReplayError` after ``timeout_s``.
    """

    def __init__(
        self, endpoint: str, timeout_s: float = 5.0, curve: ClientKeys | None = None
    ) -> None:
        self._endpoint = endpoint
        self._timeout_ms = int(timeout_s * 1000)
        self._curve = curve
        self._ctx = zmq.Context()
        self._sock: zmq.Socket[bytes] | None = None

    def _request(self, req: dict[str, Any]) -> list[bytes]:
        if self._sock is None:
            self._sock = self._ctx.socket(zmq.REQ)
            self._sock.setsockopt(zmq.LINGER, 0)
            connect_with(self._sock, self._curve)
            self._sock.connect(self._endpoint)
        self._sock.send(json.dumps(req).encode())
        if not self._sock.poll(self._timeout_ms):
            # A REQ socket that lost its reply is stuck: start a new one next time.
            self._sock.close()
            self._sock = None
            raise ReplayError(f"no reply from {self._endpoint} within {self._timeout_ms} ms")
        parts = self._sock.recv_multipart()
        header = json.loads(parts[0])
        if "error" in header:
            raise ReplayError(str(header["error"]))
        return parts

    def state(self) -> dict[str, Any]:
        """Active tracks, zone occupancy, line counts, last alert seq per stream, epoch."""
        state: dict[str, Any] = json.loads(self._request({"op": "state"})[0])
        return state

    def replay(
        self, after: dict[str, int], stream: str | None = None, limit: int = 500
    ) -> tuple[list[Event], bool]:
        """Journaled alerts after ``after[stream]`` (all of a stream not named), in
        publish order, with their snapshots; (events, more)."""
        req = {"op": "replay", "after": after, "stream": stream, "limit": limit}
        parts = self._request(req)
        header = json.loads(parts[0])
        events = []
        for payload, snap in zip(header["alerts"], header["snapshots"], strict=True):
            topic = f"alert.{payload['stream']}"
            events.append(Event(topic, payload, None if snap is None else parts[1 + snap]))
        return events, bool(header["more"])

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._ctx.term()


class AlertSubscriber(_Closing):
    """Every alert once, in order per stream: across gaps, reconnects, daemon restarts
    and this subscriber's own restarts.

        with AlertSubscriber("tcp://127.0.0.1:5556", "tcp://127.0.0.1:5557",
                             state_file="alerts.pos") as alerts:
            for alert in alerts:
                handle(alert)

    Live alerts are delivered as they come; whenever ``seq`` jumps, the epoch
    changes, or a heartbeat shows alerts this subscriber has not seen (the tail
    of a burst lost at the high-water mark), the missing ones are fetched from
    the daemon's journal first. Where to start: ``position`` (last seq handled
    per stream, e.g. stored with your own results: exactly once), else
    ``state_file`` (saved after each alert is handled, i.e. when the next one is
    asked for: at least once if this process dies mid-alert), else ``start``:
    ``"journal"`` (everything journaled) or ``"now"``. ``curve``: the keys for a
    daemon with ``security.curve`` (both endpoints use them).
    """

    def __init__(
        self,
        endpoint: str,
        request_endpoint: str,
        streams: Iterable[str] | None = None,
        position: dict[str, int] | None = None,
        state_file: str | None = None,
        start: str = "journal",
        timeout_s: float = 5.0,
        curve: ClientKeys | None = None,
    ) -> None:
        self.streams = None if streams is None else set(streams)
        topics = ["heartbeat"] + (
            ["alert."] if self.streams is None else [f"alert.{s}" for s in self.streams]
        )
        self._sub = Subscriber(endpoint, topics=topics, curve=curve)
        self._client = AlertClient(request_endpoint, timeout_s, curve)
        self._state_file = state_file
        self._pending: deque[Event] = deque()
        self._handed: Event | None = None
        self.replayed = 0  # alerts that came from the journal rather than live
        self.behind = True  # until the journal confirmed we have everything up to now
        self._next_try = 0.0
        self.position = self._initial(position, start)
        self._try_catch_up()

    def _initial(self, position: dict[str, int] | None, start: str) -> dict[str, int]:
        if position is not None:
            return dict(position)
        if self._state_file and os.path.exists(self._state_file):
            with open(self._state_file) as f:
                return {str(k): int(v) for k, v in json.load(f).items()}
        if start == "now":
            return dict(self._client.state()["alert_seq"])
        return {}

    def _wanted(self, stream: str | None) -> bool:
        return stream is not None and (self.streams is None or stream in self.streams)

    def _try_catch_up(self) -> None:
        """Catch up now if we can; if the daemon does not answer (starting, restarting),
        stay behind: live alerts are ignored (the journal has them) and we retry."""
        self._next_try = time.monotonic() + RETRY_S
        try:
            self._catch_up()
        except ReplayError:
            self.behind = True
        else:
            self.behind = False

    def _catch_up(self) -> None:
        """Queue every journaled alert after our position (and after what is queued)."""
        after = dict(self.position)
        for e in self._pending:
            after[str(e.stream)] = e.seq
        while True:
            events, more = self._client.replay(after)
            for e in events:
                after[str(e.stream)] = e.seq  # also past streams we skip, or we would loop
                if self._wanted(e.stream):
                    self._pending.append(e)
                    self.replayed += 1
            if not more or not events:
                return

    def _last(self, stream: str) -> int:
        queued = [e.seq for e in self._pending if e.stream == stream]
        return max(queued) if queued else self.position.get(stream, -1)

    def _observe(self, event: Event) -> None:
        if event.kind == "heartbeat":
            streams = event.payload.get("streams", {})
            behind = any(
                self._wanted(sid) and row.get("alert_seq", -1) > self._last(sid)
                for sid, row in streams.items()
            )
            if behind or self.behind:
                self._try_catch_up()
            return
        if self.behind:
            if time.monotonic() >= self._next_try:
                self._try_catch_up()
            return
        stream = str(event.stream)
        last = self._last(stream)
        if event.seq <= last:
            return  # already delivered or queued (e.g. it came through the journal)
        if event.seq == last + 1:
            self._pending.append(event)
        else:  # a gap, or a restart that published while we were away
            self._try_catch_up()

    def recv(self, timeout_s: float | None = None) -> Event | None:
        """The next alert, or None if none within ``timeout_s``."""
        self._done()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self._pending:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            event = self._sub.recv(left)
            if event is None:
                return None
            self._observe(event)
        self._handed = self._pending.popleft()
        return self._handed

    def _done(self) -> None:
        """The alert handed out last was handled: advance (and save) the position."""
        if self._handed is None:
            return
        self.position[str(self._handed.stream)] = self._handed.seq
        self._handed = None
        if self._state_file:
            tmp = f"{self._state_file}.tmp"
            with open(tmp, "w") as f:
                json.dump(self.position, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._state_file)

    def __iter__(self) -> Iterator[Event]:
        while True:
            event = self.recv(None)
            if event is not None:
                yield event

    def close(self) -> None:
        self._done()
        self._sub.close()
        self._client.close()
