"""The one interface every output implements, and the bookkeeping they share.

An output is handed two things by the runner (:mod:`streamd.outputs.runner`):

- **alerts** read from the journal, in publish order, at most ``max_inflight``
  unconfirmed at a time (:meth:`Output.offer_alert` says False when it has no
  room, and the alert simply stays in the journal). The output delivers them in
  that order, retrying as long as it takes, and calls :meth:`Output.confirmed`
  for each; the :class:`Ledger` moves the output's cursor over the confirmed
  prefix, and the runner persists it. So a broker that is away delays alerts and
  a restart re-sends the unconfirmed ones: at least once, in order.
- **live events** (``status``, ``track``, ``det``, ``heartbeat``) from the bus,
  which are not journaled: a bounded queue, and what does not fit is dropped
  and counted.

Nothing here blocks the runner: ``offer_*`` only queue, the output's own thread
(or its client library's) does the network.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from streamd import metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class JournaledAlert:
    """One alert row: ``id`` orders the journal over every stream."""

    id: int
    stream: str
    seq: int
    epoch: int
    ts: float
    payload: dict[str, Any]
    snapshot: bytes | None = field(default=None, repr=False)

    @property
    def msg_id(self) -> str:
        """Stable across re-sends and restarts: a broker de-duplicates on it."""
        return f"{self.stream}.{self.epoch}.{self.seq}"


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """An event off the bus: ``kind`` is the topic's first word."""

    kind: str
    stream: str | None
    payload: dict[str, Any]

    @property
    def msg_id(self) -> str:
        return f"{self.stream}.{self.payload['epoch']}.{self.payload['seq']}.{self.kind}"


@dataclass(frozen=True, slots=True)
class Cursor:
    """What an output has delivered: per stream the last alert seq, and the journal row id
    up to which everything is done (where reading resumes)."""

    after: dict[str, int]
    id: int


class Ledger:
    """An output's alerts in flight, in order, and its cursor over the confirmed prefix.

    ``confirm`` may come from any thread and in any order; the cursor only moves over
    alerts that are all confirmed, so a restart re-sends from the first unconfirmed one.
    """

    def __init__(self, cursor: Cursor, max_inflight: int) -> None:
        self._lock = threading.Lock()
        self._after = dict(cursor.after)
        self._id = cursor.id
        self._max = max_inflight
        self._inflight: collections.OrderedDict[int, tuple[JournaledAlert, bool]] = (
            collections.OrderedDict()
        )
        self._changed = False

    def room(self) -> int:
        with self._lock:
            return self._max - len(self._inflight)

    def take(self, alert: JournaledAlert) -> bool:
        with self._lock:
            if len(self._inflight) >= self._max:
                return False
            self._inflight[alert.id] = (alert, False)
            return True

    def confirm(self, alert: JournaledAlert) -> None:
        with self._lock:
            if alert.id not in self._inflight:
                return  # confirmed twice (a re-sent message acknowledged again)
            self._inflight[alert.id] = (alert, True)
            while self._inflight:
                first, (head, done) = next(iter(self._inflight.items()))
                if not done:
                    break
                del self._inflight[first]
                self._after[head.stream] = max(self._after.get(head.stream, -1), head.seq)
                self._id = max(self._id, head.id)
                self._changed = True

    def pending(self) -> int:
        with self._lock:
            return len(self._inflight)

    def lag_s(self, now: float) -> float:
        """Age of the oldest unconfirmed alert (0 when none)."""
        with self._lock:
            for alert, done in self._inflight.values():
                if not done:
                    return max(0.0, now - alert.ts)
            return 0.0

    def cursor(self) -> tuple[Cursor, bool]:
        """The cursor now, and whether it moved since the last call."""
        with self._lock:
            changed, self._changed = self._changed, False
            return Cursor(dict(self._after), self._id), changed


class Mailbox:
    """What an output's thread works through: alerts first (bounded by the ledger), then
    live events (bounded here; beyond ``limit`` dropped and counted)."""

    def __init__(self, name: str, limit: int) -> None:
        self._cond = threading.Condition()
        self._alerts: collections.deque[JournaledAlert] = collections.deque()
        self._events: collections.deque[LiveEvent] = collections.deque()
        self._limit = limit
        self._closed = False
        self._dropped = metrics.OUTPUT_DROPPED.labels(name, "queue_full")

    def put_alert(self, alert: JournaledAlert) -> None:
        with self._cond:
            self._alerts.append(alert)
            self._cond.notify()

    def put_event(self, event: LiveEvent) -> bool:
        with self._cond:
            if len(self._events) >= self._limit:
                self._dropped.inc()
                return False
            self._events.append(event)
            self._cond.notify()
            return True

    def get(self, timeout_s: float) -> JournaledAlert | LiveEvent | None:
        """The next alert, else the next event; None after ``timeout_s`` or once closed."""
        with self._cond:
            if not self._alerts and not self._events and not self._closed:
                self._cond.wait(timeout_s)
            if self._alerts:
                return self._alerts.popleft()
            if self._events:
                return self._events.popleft()
            return None

    def wake(self) -> None:
        """Make a waiting :meth:`get` return now (something else needs the thread)."""
        with self._cond:
            self._cond.notify_all()

    def waiting(self) -> int:
        with self._cond:
            return len(self._events)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed


class Output(ABC):
    """One destination for alerts (from the journal) and live events (from the bus).

    Subclasses say which live ``kinds`` they want, start their own thread or client
    in :meth:`start`, deliver what :meth:`offer_alert`/:meth:`offer_event` queued,
    call :meth:`confirmed` once an alert is delivered (or given up), and stop in
    :meth:`close` within the time given.
    """

    def __init__(
        self,
        name: str,
        cursor: Cursor,
        max_inflight: int,
        queue: int,
        kinds: Iterable[str],
        alerts: bool = True,
    ) -> None:
        """``kinds``: the live events it wants; ``alerts``: whether it delivers alerts (if
        not, its cursor just follows the journal)."""
        self.name = name
        self.kinds = frozenset(kinds)
        self.alerts = alerts
        self.ledger = Ledger(cursor, max_inflight)
        self.mailbox = Mailbox(name, queue)
        self.connected = False
        self._sent: dict[str, Any] = {}
        self._failed = metrics.OUTPUT_FAILED.labels(name)
        self._queued = metrics.OUTPUT_QUEUED.labels(name)
        self._lag = metrics.OUTPUT_LAG.labels(name)
        self._up = metrics.OUTPUT_CONNECTED.labels(name)

    # -- called by the runner ------------------------------------------------------------

    def offer_alert(self, alert: JournaledAlert) -> bool:
        """Queue ``alert`` for delivery; False (nothing queued) when the output has
        ``max_inflight`` alerts unconfirmed already."""
        if not self.ledger.take(alert):
            return False
        if self.alerts:
            self.mailbox.put_alert(alert)
        else:
            self.ledger.confirm(alert)
        return True

    def wants(self, kind: str, stream: str | None) -> bool:
        """Whether it takes a live event of ``kind`` (the topic's first word) now."""
        return kind in self.kinds

    def offer_event(self, event: LiveEvent) -> None:
        """Queue a live event it said it wants; dropped and counted when the queue is full."""
        self.mailbox.put_event(event)

    def update_gauges(self, now: float) -> None:
        self._queued.set(self.ledger.pending() + self.mailbox.waiting())
        self._lag.set(round(self.ledger.lag_s(now), 3))
        self._up.set(1.0 if self.connected else 0.0)

    @abstractmethod
    def start(self) -> None:
        """Connect and begin delivering (in the background: never blocks)."""

    @abstractmethod
    def close(self, timeout_s: float) -> None:
        """Stop within ``timeout_s``; what is unconfirmed is re-sent at the next start."""

    # -- called by the output itself ------------------------------------------------------

    def confirmed(self, alert: JournaledAlert, delivered: bool = True) -> None:
        """``alert`` was delivered (or given up, ``delivered`` False, counted by the caller):
        the cursor may move past it."""
        self.ledger.confirm(alert)
        if delivered:
            self.sent("alert")

    def sent(self, kind: str, n: int = 1) -> None:
        counter = self._sent.get(kind)
        if counter is None:
            counter = self._sent[kind] = metrics.OUTPUT_SENT.labels(self.name, kind)
        counter.inc(n)

    def failed(self) -> None:
        self._failed.inc()

    def dropped(self, cause: str, n: int = 1) -> None:
        metrics.OUTPUT_DROPPED.labels(self.name, cause).inc(n)


class Backoff:
    """Capped exponential delays with jitter: 50-100% of min(ceiling, first * 2^n)."""

    def __init__(self, first_s: float, ceiling_s: float) -> None:
        self._first = first_s
        self._ceiling = ceiling_s
        self._n = 0

    def next(self) -> float:
        delay = min(self._ceiling, self._first * (2.0**self._n))
        self._n = min(self._n + 1, 30)
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self._n = 0
