"""A camera's alerts: journaled on a thread of their own, then published.

The journal's commit is an fsync: milliseconds on a healthy disk, seconds on a
slow one, forever on a hung one. It runs here, so the camera's analysis
(tracking, det events, heartbeats) never waits for it; alerts still reach the
journal before the bus, because this thread publishes a batch only after
committing it (publishing of alerts waits, detection does not).

The queue is bounded (:data:`QUEUE_BATCHES` frames' worth of alerts). A batch
that does not fit, because the disk has been stuck that long, is published
live at once without a journal entry; so is a batch whose commit failed (disk
full). Both are counted (``streamd_alerts_unjournaled_total`` by cause) and
reported in the stream's heartbeat row, and a write stuck for longer than
:data:`STALL_S` makes ``/healthz`` fail. Their seqs come from the block the
journal reserved ahead (:data:`~streamd.publish.journal.SEQ_RESERVE`), so a
later process never hands the same seq out again.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable

from streamd import metrics
from streamd.publish.journal import SEQ_RESERVE, AlertJournal, Entry
from streamd.publish.publisher import Publisher
from streamd.types import JournalHealth

log = logging.getLogger(__name__)

QUEUE_BATCHES = 256  # frames with alerts waiting for the journal
STALL_S = 10.0  # a commit running this long: the journal is stuck (health fails)
# Another writer holding the journal (retention's delete, a backup): wait for it rather
# than publish unjournaled; off the analysis thread, waiting costs no frames.
BUSY_TIMEOUT_MS = 60_000


class AlertWriter:
    """``submit(entries)`` from the analysis thread; commit then publish on this one."""

    def __init__(
        self, journal: AlertJournal, stream: str, first_seq: int, bus: Callable[[], Publisher]
    ) -> None:
        self._journal = journal
        journal.db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        self._stream = stream
        self._bus = bus  # made in the writer's thread: ZeroMQ sockets are not thread-safe
        self._queue: queue.Queue[list[Entry] | None] = queue.Queue(maxsize=QUEUE_BATCHES)
        self._lock = threading.Lock()
        self._published = first_seq - 1
        self._unjournaled = 0
        self._busy_since: float | None = None
        self._reserved = self._reserve(first_seq - 1 + SEQ_RESERVE)
        self._lost = {
            cause: metrics.ALERTS_UNJOURNALED.labels(stream, cause)
            for cause in ("journal_error", "queue_full", "journal_stuck")
        }
        self._thread = threading.Thread(target=self._run, name="journal", daemon=True)
        self._thread.start()

    def _reserve(self, upto: int) -> int:
        try:
            self._journal.reserve(self._stream, upto)
        except sqlite3.Error as e:
            metrics.JOURNAL_ERRORS.inc()
            log.error("journal: cannot reserve alert seqs of %s: %s", self._stream, e)
            return -1
        return upto

    def submit(self, entries: list[Entry]) -> bool:
        """Queue a frame's alerts; False if the queue is full (the caller publishes them
        live, unjournaled, and calls :meth:`unjournaled`)."""
        try:
            self._queue.put_nowait(entries)
        except queue.Full:
            return False
        return True

    def unjournaled(self, entries: list[Entry], cause: str) -> None:
        """Count alerts that went out without a journal entry."""
        with self._lock:
            self._unjournaled += len(entries)
            self._published = max(self._published, *(int(e.payload["seq"]) for e in entries))
        self._lost[cause].inc(len(entries))

    @property
    def published(self) -> int:
        """The seq of the last alert that went out (-1: none)."""
        with self._lock:
            return self._published

    def health(self) -> JournalHealth:
        with self._lock:
            since, lost = self._busy_since, self._unjournaled
        stalled = 0.0 if since is None else time.monotonic() - since
        return JournalHealth(self._queue.qsize(), round(stalled, 3), lost)

    def _run(self) -> None:
        bus = self._bus()
        try:
            while (entries := self._queue.get()) is not None:
                self._commit(entries)
                for e in entries:
                    bus.send(e.payload, e.snapshot)
                    metrics.ALERTS.labels(self._stream, e.payload["rule"]).inc()
                with self._lock:
                    self._published = max(self._published, int(entries[-1].payload["seq"]))
        finally:
            bus.close()

    def _commit(self, entries: list[Entry]) -> None:
        last = max(int(e.payload["seq"]) for e in entries)
        # Keep at least half a block reserved ahead of what goes out.
        extend = last + SEQ_RESERVE // 2 > self._reserved
        upto = last + SEQ_RESERVE if extend else self._reserved
        with self._lock:
            self._busy_since = time.monotonic()
        try:
            self._journal.append(entries, {self._stream: upto} if extend else None)
        except sqlite3.Error as e:
            # Disk full, file removed...: they still go out live (losing them would be
            # worse) but cannot be replayed.
            metrics.JOURNAL_ERRORS.inc()
            log.error("journal: %d alert(s) of %s not journaled: %s", len(entries),
                      self._stream, e)  # fmt: skip
            self.unjournaled(entries, "journal_error")
        else:
            self._reserved = upto
        finally:
            with self._lock:
                self._busy_since = None

    def close(self, timeout_s: float, last_handed_out: int, fallback: Publisher) -> bool:
        """Journal and publish what is queued (up to ``timeout_s``), then release the
        reserved block so the next process numbers on right after ``last_handed_out``.
        A stuck journal: what is still queued goes out live through ``fallback``; False."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._queue.put(None, timeout=max(0.01, deadline - time.monotonic()))
                break
            except queue.Full:
                if time.monotonic() >= deadline:
                    break
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            self._spill(fallback)
            log.error("journal of %s stuck at stop: its reserved seqs stay reserved",
                      self._stream)  # fmt: skip
            return False
        try:
            self._journal.release(self._stream, last_handed_out)
        except sqlite3.Error as e:
            log.error("journal: cannot release alert seqs of %s: %s", self._stream, e)
        return True

    def _spill(self, fallback: Publisher) -> None:
        while True:
            try:
                entries = self._queue.get_nowait()
            except queue.Empty:
                return
            if entries is None:
                continue
            for e in entries:
                fallback.send(e.payload, e.snapshot)
            self.unjournaled(entries, "journal_stuck")
