"""A camera's alerts: numbered, journaled and published on a thread of their own.

The journal's commit is an fsync: milliseconds on a healthy disk, seconds on a
slow one, forever on a hung one. Everything that touches the journal runs
here (opening it, reading the stream's last seq, committing), so the camera's
analysis (tracking, det events, heartbeats) never waits for the disk. Alerts
still reach the journal before the bus: this thread gives each alert its seq,
commits the batch, then publishes it — one ordered path, so subscribers see
alert seqs in order.

Seqs a stream may hand out are reserved in the journal :data:`SEQ_RESERVE`
ahead, in the alerts' own transaction, and released at a clean stop; a
process that starts after an unclean end numbers on above the reserved block.
So when a commit fails (disk full) the batch still goes out live, unjournaled
and counted, as long as its seqs are inside the persisted reservation — and
no seq that went out is ever handed out again. A batch past the reservation
is held and retried instead (its seqs cannot be proven unique yet).

The queue is bounded (:data:`QUEUE_BATCHES` frames' worth of alerts). While
the disk is stuck (or full past the reservation) it fills; a batch that does
not fit is dropped and counted (``streamd_alerts_unjournaled_total`` with
cause ``queue_full``), and a batch waiting longer than :data:`STALL_S` makes
``/healthz`` fail. At stop, what is still queued after :data:`CLOSE_S` is
counted as ``journal_stuck``.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from streamd import metrics
from streamd.publish.journal import SEQ_RESERVE, AlertJournal, Entry
from streamd.publish.publisher import Publisher
from streamd.types import JournalHealth

log = logging.getLogger(__name__)

QUEUE_BATCHES = 256  # frames with alerts waiting for the journal
STALL_S = 10.0  # a batch waiting this long: the journal is stuck (health fails)
RETRY_S = 1.0  # a batch past the reservation is retried this often
CAUSES = ("journal_error", "queue_full", "journal_stuck", "error")


@dataclass(frozen=True, slots=True)
class NewAlert:
    """An alert as the analysis raised it: no seq yet (this thread numbers it)."""

    ts: float  # capture time of its frame
    fields: dict[str, Any]
    snapshot: bytes | None


class _Shared:
    """What the analysis thread and the journal thread both see (under ``lock``)."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.queue: queue.Queue[list[NewAlert] | None] = queue.Queue(maxsize=QUEUE_BATCHES)
        self.lock = threading.Lock()
        self.stop = threading.Event()  # closing: a held batch stops retrying
        self.published = -1  # the seq of the last alert that went out
        self.unjournaled = 0  # alerts that went out live without a journal entry, or not at all
        self.waiting_since: float | None = None  # the batch in hand, since when
        self._lost = {c: metrics.ALERTS_UNJOURNALED.labels(stream, c) for c in CAUSES}

    def count(self, cause: str, n: int) -> None:
        with self.lock:
            self.unjournaled += n
        self._lost[cause].inc(n)


class AlertWriter:
    """``submit(alerts)`` from the analysis thread; number, commit, publish on its own."""

    def __init__(
        self,
        stream: str,
        open_journal: Callable[[], AlertJournal],
        open_bus: Callable[[], Publisher],
        seq_floor: int = 0,
    ) -> None:
        """``seq_floor``: alerts of this stream already published (from the supervisor);
        the journal and the socket are opened on the journal thread."""
        self._s = _Shared(stream)
        loop = _JournalLoop(self._s, open_journal, open_bus, seq_floor)
        self._thread = threading.Thread(target=loop.run, name="journal", daemon=True)
        self._thread.start()

    def submit(self, alerts: list[NewAlert]) -> None:
        """Queue a frame's alerts; if the queue is full they are dropped and counted."""
        if not self._thread.is_alive():
            raise RuntimeError("the journal thread died")  # the camera's process restarts
        try:
            self._s.queue.put_nowait(alerts)
        except queue.Full:
            log.error("journal queue of %s full: %d alert(s) dropped", self._s.stream,
                      len(alerts))  # fmt: skip
            self._s.count("queue_full", len(alerts))

    @property
    def published(self) -> int:
        """The seq of the last alert that went out (-1: none yet)."""
        with self._s.lock:
            return self._s.published

    def health(self) -> JournalHealth:
        s = self._s
        with s.lock:
            since, lost = s.waiting_since, s.unjournaled
        waiting = 0.0 if since is None else time.monotonic() - since
        return JournalHealth(s.queue.qsize(), round(waiting, 3), lost)

    def close(self, timeout_s: float) -> bool:
        """Number, journal and publish what is queued (up to ``timeout_s``), then release
        the reserved seqs; False, with what is left counted, if the journal is stuck."""
        deadline = time.monotonic() + timeout_s
        with contextlib.suppress(queue.Full):
            self._s.queue.put(None, timeout=max(0.01, timeout_s))
        self._thread.join(max(0.0, deadline - time.monotonic()))
        self._s.stop.set()
        if not self._thread.is_alive():
            return True
        left = 0
        with contextlib.suppress(queue.Empty):
            while True:
                left += len(self._s.queue.get_nowait() or [])
        self._s.count("journal_stuck", left)
        log.error("journal of %s stuck at stop: %d queued alert(s) not published",
                  self._s.stream, left)  # fmt: skip
        return False


class _JournalLoop:
    """The journal thread: the next seq, the persisted reservation, commit then publish."""

    def __init__(
        self,
        shared: _Shared,
        open_journal: Callable[[], AlertJournal],
        open_bus: Callable[[], Publisher],
        seq_floor: int,
    ) -> None:
        self.s = shared
        self._open = open_journal, open_bus
        self._floor = seq_floor
        self.reserved = -1  # nothing past this seq may go out unjournaled

    def run(self) -> None:
        bus = self._open[1]()
        try:
            opened = self._open_journal()
            if opened is None:
                return  # stopped before the journal could be opened
            journal, first = opened
            try:
                bus.continue_from("alert", self.s.stream, first)
                self.reserved = first - 1
                self._reserve(journal, first - 1 + SEQ_RESERVE)
                self._serve(journal, bus)
            finally:
                journal.close()
        except Exception:
            log.exception("journal thread of %s died", self.s.stream)
            raise
        finally:
            bus.close()

    def _open_journal(self) -> tuple[AlertJournal, int] | None:
        """The journal and the stream's next seq; retried while the disk refuses (alerts
        queue meanwhile, and health shows the wait)."""
        with self.s.lock:
            self.s.waiting_since = time.monotonic()
        while True:
            try:
                journal = self._open[0]()
                try:
                    first = max(journal.next_seq(self.s.stream), self._floor)
                except BaseException:
                    journal.close()
                    raise
            except (sqlite3.Error, OSError) as e:
                log.error("journal of %s cannot be opened (retrying): %s", self.s.stream, e)
                if self.s.stop.wait(RETRY_S):
                    return None
                continue
            with self.s.lock:
                self.s.waiting_since = None
            return journal, first

    def _reserve(self, journal: AlertJournal, upto: int) -> None:
        try:
            journal.reserve(self.s.stream, upto)
        except sqlite3.Error as e:
            metrics.JOURNAL_ERRORS.inc()
            log.error("journal: cannot reserve alert seqs of %s: %s", self.s.stream, e)
        else:
            self.reserved = upto

    def _serve(self, journal: AlertJournal, bus: Publisher) -> None:
        s = self.s
        while (batch := s.queue.get()) is not None:
            with s.lock:
                s.waiting_since = time.monotonic()
            try:
                self._handle(journal, bus, batch)
            except Exception:  # one bad batch (unencodable...) is counted, not fatal
                log.exception("journal: %d alert(s) of %s lost", len(batch), s.stream)
                s.count("error", len(batch))
            finally:
                with s.lock:
                    s.waiting_since = None
        try:  # a clean end: the next process numbers on right after the last seq out
            journal.release(s.stream, self.s.published, self.reserved)
        except sqlite3.Error as e:
            log.error("journal: cannot release alert seqs of %s: %s", s.stream, e)

    def _handle(self, journal: AlertJournal, bus: Publisher, batch: list[NewAlert]) -> None:
        s = self.s
        entries = [Entry(bus.envelope("alert", s.stream, a.ts, a.fields), a.snapshot)
                   for a in batch]  # fmt: skip
        last = int(entries[-1].payload["seq"])
        while not self._commit(journal, entries, last):
            if last <= self.reserved:  # inside the block: out live, unjournaled, never reused
                s.count("journal_error", len(entries))
                break
            if s.stop.wait(RETRY_S):  # past it: held until the disk takes it
                s.count("journal_stuck", len(entries))
                return
        for e in entries:
            bus.send(e.payload, e.snapshot)
            metrics.ALERTS.labels(s.stream, e.payload["rule"]).inc()
        with s.lock:
            s.published = last

    def _commit(self, journal: AlertJournal, entries: list[Entry], last: int) -> bool:
        # Keep at least half a block reserved ahead of what goes out.
        extend = last + SEQ_RESERVE // 2 > self.reserved
        upto = last + SEQ_RESERVE if extend else self.reserved
        try:
            journal.append(entries, {self.s.stream: upto} if extend else None)
        except sqlite3.Error as e:
            metrics.JOURNAL_ERRORS.inc()
            log.error("journal: %d alert(s) of %s not journaled: %s", len(entries),
                      self.s.stream, e)  # fmt: skip
            return False
        self.reserved = upto
        return True
