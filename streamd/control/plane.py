"""The supervisor's inbox: what the workers report, turned into ``status`` and ``heartbeat``.

Every stream's process sends its state transitions and, every heartbeat, its
figures (:class:`~streamd.types.StreamRow`); the detector process sends an
:class:`~streamd.types.InferenceBeat`. This thread publishes the transitions
as ``status.<id>`` (one seq per stream across restarts of its process) and a
``heartbeat`` every ``publish.heartbeat_s`` — only while the detector's beats
keep coming, so a hung detector shows as a missing heartbeat (``/healthz``).
A stream's ``ended``/``failed`` is held back for a moment: the camera sends it
only after its last events were handed to the bus, but the bus takes turns
between its senders, so they may still be queued behind it.

The inbox interleaves the messages of every process, so a dead camera
process's last words can arrive after the supervisor said what became of it
(``reconnecting``, or ``failed``/``restart_limit``). Every update and row
carries the generation of the process it is about; one from a superseded
generation is dropped.

The journal's retention runs on a thread of its own, so a long delete delays
neither heartbeats nor any frame.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import replace
from typing import Any

from streamd import metrics
from streamd.config import PipelineConfig
from streamd.publish import Publisher
from streamd.publish.events import status_fields
from streamd.publish.journal import AlertJournal
from streamd.runtime.channel import Inbox
from streamd.types import (
    ActiveTrack,
    InferenceBeat,
    JournalHealth,
    RouteAck,
    SourceState,
    StatusUpdate,
    StreamRow,
)

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 600.0  # journal retention check
BEAT_STALE_INTERVALS = 3  # detector beats missed before heartbeats stop
ROW_STALE_INTERVALS = 2  # a camera row this old reports no fps and no latency
TERMINAL_HOLD_S = 0.2  # ended/failed wait this long behind the stream's last events
_TERMINAL = (SourceState.ENDED, SourceState.FAILED)


class ControlPlane:
    def __init__(
        self,
        cfg: PipelineConfig,
        inbox: str,
        bus: str,
        epoch: int,
        journal: AlertJournal,
    ) -> None:
        self._cfg = cfg
        self._heartbeat_s = cfg.publish.heartbeat_s
        self._inbox = Inbox(inbox)
        self._bus = bus
        self._epoch = epoch
        self._journal = journal
        self._lock = threading.Lock()
        self._rows = {s.id: StreamRow(stream=s.id) for s in cfg.streams}
        self._row_at = {s.id: 0.0 for s in cfg.streams}  # when each row arrived
        self._held: list[tuple[float, StatusUpdate]] = []  # terminal states, due time
        self._states: dict[str, SourceState | None] = {s.id: None for s in cfg.streams}
        self._generation = {s.id: 0 for s in cfg.streams}  # newest process of each stream
        self._inference: InferenceBeat | None = None
        self._route_acks: set[int] = set()  # RouteUpdate seqs the detector applied
        self._started = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="control", daemon=True)
        self._retention = threading.Thread(target=self._retain, name="retention", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._retention.start()

    def _retain(self) -> None:
        while not self._stop.wait(PRUNE_EVERY_S):
            try:
                deleted = self._journal.prune()
            except sqlite3.Error as e:  # busy past the timeout, disk trouble: next time
                metrics.JOURNAL_ERRORS.inc()
                log.error("journal retention failed: %s", e)
            else:
                if deleted:
                    log.info("journal retention: %d alert(s) deleted", deleted)

    def _run(self) -> None:
        # The publisher lives and dies in this thread (ZeroMQ sockets are not thread-safe).
        publisher = Publisher(self._bus, 10_000, epoch=self._epoch, bus=True)
        next_beat = time.time()
        try:
            while not self._stop.is_set():
                wait = min(0.05 if self._held else 0.2, next_beat - time.time())
                if self._inbox.poll(max(0.0, wait)):
                    for msg in self._inbox.drain():
                        self._handle(msg, publisher)
                self._release_held(publisher, time.monotonic())
                if time.time() >= next_beat:
                    self._heartbeat(publisher)
                    next_beat = time.time() + self._heartbeat_s
            self._release_held(publisher, float("inf"))
        finally:
            publisher.close()
            self._inbox.close()

    def _current(self, msg: StatusUpdate | StreamRow) -> bool:
        """False for a message of a superseded process of its stream."""
        with self._lock:  # add_stream (supervisor thread) sets a re-added stream's generation
            newest = self._generation.get(msg.stream)
            if newest is None:
                return True  # not a stream of ours: ignored below
            if msg.generation < newest:
                metrics.STALE_UPDATES.labels(msg.stream).inc()
                return False
            self._generation[msg.stream] = msg.generation
            return True

    def _handle(self, msg: object, publisher: Publisher) -> None:
        if isinstance(msg, StatusUpdate | StreamRow) and not self._current(msg):
            log.info("%s of a superseded process of %s dropped", type(msg).__name__, msg.stream)
            return
        if isinstance(msg, StatusUpdate) and msg.stream in self._states:
            if msg.state in _TERMINAL and msg.reason != "restart_limit":
                self._held.append((time.monotonic() + TERMINAL_HOLD_S, msg))
            else:
                self._status(msg, publisher)
        elif isinstance(msg, StreamRow) and msg.stream in self._rows:
            with self._lock:
                self._rows[msg.stream] = msg
                self._row_at[msg.stream] = time.monotonic()
        elif isinstance(msg, InferenceBeat):
            self._inference = msg
        elif isinstance(msg, RouteAck):
            with self._lock:
                self._route_acks.add(msg.seq)
        else:
            log.warning("unexpected control message %r ignored", type(msg).__name__)

    def _status(self, update: StatusUpdate, publisher: Publisher) -> None:
        self._states[update.stream] = update.state
        publisher.publish("status", update.stream, update.ts, status_fields(update))
        if update.final:
            self._forget(update.stream, update.generation)

    def add_stream(self, stream: str, generation: int = 0) -> None:
        """A stream added at runtime (supervisor thread): its row, state and generation
        (above every process the id had before, if it was removed and added again)."""
        with self._lock:
            self._rows[stream] = StreamRow(stream=stream, generation=generation)
            self._row_at[stream] = 0.0
            self._states[stream] = None
            self._generation[stream] = generation

    def take_route_acks(self) -> set[int]:
        """The RouteUpdate seqs the detector applied since the last call."""
        with self._lock:
            acks, self._route_acks = self._route_acks, set()
            return acks

    def drop_stream(self, stream: str) -> None:
        """A stream whose adding failed part way: gone as if never added."""
        with self._lock:
            generation = self._generation.get(stream)
        if generation is not None:
            self._forget(stream, generation)

    def _forget(self, stream: str, generation: int) -> None:
        """A removed stream's last update is out: its row goes (unless it was added again)."""
        with self._lock:
            if self._generation.get(stream) != generation:
                return
            self._rows.pop(stream, None)
            self._row_at.pop(stream, None)
            self._states.pop(stream, None)
            self._generation.pop(stream, None)

    def _release_held(self, publisher: Publisher, now: float) -> None:
        due = [u for t, u in self._held if t <= now]
        self._held = [(t, u) for t, u in self._held if t > now]
        for update in due:
            with self._lock:
                newest = self._generation.get(update.stream)
            if newest is not None and update.generation >= newest:  # not superseded meanwhile
                self._status(update, publisher)

    def _rows_now(self) -> dict[str, StreamRow]:
        """The rows, with no rate, no latency and no journal wait for a camera that
        stopped reporting (ended, failed, dead: a frozen wait would fail health for good)."""
        stale = time.monotonic() - ROW_STALE_INTERVALS * self._heartbeat_s
        with self._lock:
            return {
                sid: row if self._row_at[sid] >= stale else _quiet(row)
                for sid, row in self._rows.items()
            }

    def rows(self) -> dict[str, tuple[SourceState | None, StreamRow]]:
        """Each stream's published state and latest row (for the summary lines)."""
        return {sid: (self._states.get(sid), row) for sid, row in self._rows_now().items()}

    def take_active_tracks(self, stream: str) -> list[ActiveTrack]:
        """The stream's active tracks as of its (dead) process's last row, forgotten here
        so that they are ended once, by the one process that replaces it."""
        with self._lock:
            row = self._rows[stream]
            self._rows[stream] = replace(row, active=(), tracks={**row.tracks, "tracks": []})
            return list(row.active)

    def put_back_tracks(self, stream: str, tracks: list[ActiveTrack]) -> None:
        """The process meant to end them could not be started: the next one will."""
        with self._lock:
            row = self._rows.get(stream)
            if row is not None and not row.active:
                self._rows[stream] = replace(row, active=tuple(tracks))

    def alert_seq(self, stream: str) -> int:
        """The seq of the stream's last alert its process reported (-1: none)."""
        with self._lock:
            return self._rows[stream].alert_seq

    def _heartbeat(self, publisher: Publisher) -> None:
        beat = self._inference
        now = time.time()
        if beat is None or now - beat.ts > BEAT_STALE_INTERVALS * self._heartbeat_s:
            return  # the detector is not (yet, or any more) alive: no heartbeat
        rows = self._rows_now()
        fields = {
            "uptime_s": round(now - self._started, 3),
            "backend": beat.backend,
            "streams": {sid: row.beat_fields(self._states.get(sid)) for sid, row in rows.items()},
        }
        publisher.publish("heartbeat", None, now, fields)

    def state(self) -> dict[str, Any]:
        """Per stream, its analytics state as of its last row (the ``state`` request)."""
        with self._lock:
            return {sid: row.tracks for sid, row in self._rows.items()}

    def close(self) -> None:
        self._stop.set()
        if self._retention.ident is not None:  # started (start-up may fail before)
            self._retention.join(2.0)
        if self._thread.is_alive():
            self._thread.join(2.0)
        else:
            self._inbox.close()


def _quiet(row: StreamRow) -> StreamRow:
    """A row whose camera stopped reporting: its counts stay, nothing is in progress."""
    journal = JournalHealth(unjournaled=row.journal.unjournaled)
    return replace(row, fps=0.0, latency_ms=None, journal=journal)
