"""The whole fleet's events from NATS JetStream, as one subscriber sees them.

Every instance publishes its cameras' alerts (and track / sampled det events) to
one JetStream stream with the message id ``<camera>.<epoch>.<seq>`` (``.track``,
``.det`` after it for live events). :class:`FleetReader` reads that stream back:

- each message id once (JetStream drops a re-send inside its duplicate window; a
  re-send after it, or a consumer redelivery, is dropped here);
- per camera and kind, in (epoch, seq) order: what is stored when the reader
  starts is sorted before it is given out; what arrives later and is older than
  what was given out for its camera is dropped and counted (``late``) rather than
  given out of order. Epochs are per instance run and increase with its start time,
  so a restarted instance's new events follow its old ones.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.js.api import DeliverPolicy

KINDS = ("alert", "track", "det")
SEEN_IDS = 200_000  # message ids remembered for de-duplication (the newest)
BACKLOG_WAIT_S = 5.0  # for the next stored message while reading the backlog


@dataclass(frozen=True, slots=True)
class FleetEvent:
    msg_id: str
    subject: str
    stored_seq: int  # the JetStream stream's sequence
    payload: dict[str, Any]

    @property
    def kind(self) -> str:
        tail = self.msg_id.rsplit(".", 1)[-1]
        return tail if tail in ("track", "det") else "alert"

    @property
    def camera(self) -> str:
        return str(self.payload.get("stream", ""))

    @property
    def order(self) -> tuple[int, int]:
        return int(self.payload.get("epoch", 0)), int(self.payload.get("seq", 0))


@dataclass(slots=True)
class FleetOrder:
    """De-duplication by message id and per-(camera, kind) order, with counts."""

    seen: OrderedDict[str, None] = field(default_factory=OrderedDict)
    last: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    duplicates: int = 0
    late: int = 0

    def admit(self, ev: FleetEvent) -> bool:
        if ev.msg_id in self.seen:
            self.duplicates += 1
            return False
        self.seen[ev.msg_id] = None
        if len(self.seen) > SEEN_IDS:
            self.seen.popitem(last=False)
        key = (ev.camera, ev.kind)
        if key in self.last and ev.order <= self.last[key]:
            self.late += 1
            return False
        self.last[key] = ev.order
        return True

    def admit_sorted(self, events: list[FleetEvent]) -> list[FleetEvent]:
        """``events`` (a backlog) de-duplicated, each camera's in (epoch, seq) order."""
        unique = {ev.msg_id: ev for ev in reversed(events)}  # the first stored wins
        self.duplicates += len(events) - len(unique)
        ordered = sorted(unique.values(), key=lambda e: (e.camera, e.kind, e.order))
        return [ev for ev in ordered if self.admit(ev)]


class FleetReader:
    """Reads the JetStream stream ``stream`` on ``servers`` (kinds: alert, track, det)."""

    def __init__(
        self,
        servers: list[str],
        stream: str = "STREAMD",
        kinds: tuple[str, ...] = ("alert", "track"),
        connect: dict[str, Any] | None = None,
    ) -> None:
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
        self.servers = servers
        self.stream = stream
        self.kinds = kinds
        self.order = FleetOrder()
        self._connect = connect or {}

    async def events(self, idle_s: float | None = None) -> AsyncIterator[FleetEvent]:
        """The backlog (sorted per camera), then new events as they are stored; ends once
        nothing new came for ``idle_s`` after the backlog (None: never)."""
        # Bounded: an unreachable server is an error in seconds, not minutes of retries
        # (nats-py's defaults), and its errors are raised, not printed as tracebacks.
        options: dict[str, Any] = {"connect_timeout": 5, "max_reconnect_attempts": 3,
                                   "error_cb": _quiet, **self._connect}  # fmt: skip
        nc = await nats.connect(servers=self.servers, **options)
        try:
            js = nc.jetstream()
            info = await js.stream_info(self.stream)
            backlog_end = info.state.last_seq
            sub = await js.subscribe(
                ">", stream=self.stream, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
            )
            backlog: list[FleetEvent] = []
            stored = 0
            while stored < backlog_end:
                try:
                    msg = await sub.next_msg(timeout=BACKLOG_WAIT_S)
                except (TimeoutError, nats.errors.TimeoutError):
                    break  # the last ones were deleted meanwhile (limits): what came is it
                stored = msg.metadata.sequence.stream
                ev = _event(msg)
                if ev is not None:
                    backlog.append(ev)
            for ev in self.order.admit_sorted([e for e in backlog if e.kind in self.kinds]):
                yield ev
            while True:
                try:
                    msg = await sub.next_msg(timeout=idle_s if idle_s is not None else 3600.0)
                except (TimeoutError, nats.errors.TimeoutError):
                    if idle_s is not None:
                        return
                    continue
                ev = _event(msg)
                if ev is not None and ev.kind in self.kinds and self.order.admit(ev):
                    yield ev
        finally:
            await nc.close()

    async def read(self, idle_s: float = 1.0) -> list[FleetEvent]:
        """Everything stored now (and whatever comes within ``idle_s`` of it)."""
        return [ev async for ev in self.events(idle_s)]

    def read_now(self, idle_s: float = 1.0) -> list[FleetEvent]:
        """:meth:`read`, for code without an event loop."""
        return asyncio.run(self.read(idle_s))


async def _quiet(_error: Exception) -> None:
    """nats-py reports connection errors here besides raising them: said once, by the
    caller."""


def _event(msg: Any) -> FleetEvent | None:
    """A stored message as an event; None for one that is not streamd's (no message id,
    or not JSON)."""
    msg_id = (msg.headers or {}).get("Nats-Msg-Id")
    if not msg_id:
        return None
    try:
        payload = json.loads(msg.data or b"{}")
    except ValueError:
        return None
    if not isinstance(payload, dict) or not _well_formed(payload):
        return None  # anyone who may publish to the stream could store it: skipped
    return FleetEvent(msg_id, msg.subject, msg.metadata.sequence.stream, payload)


def _well_formed(payload: dict[str, Any]) -> bool:
    """A camera id and an int64 epoch and seq, as streamd writes them (order needs them)."""
    ints = [payload.get("epoch", 0), payload.get("seq", 0)]
    return isinstance(payload.get("stream", ""), str) and all(
        type(v) is int and -(2**63) <= v < 2**63 for v in ints
    )
