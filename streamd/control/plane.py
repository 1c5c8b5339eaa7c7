"""The supervisor's inbox: what the workers report, turned into ``status`` and ``heartbeat``.

Every stream's process sends its state transitions and, every heartbeat, its
figures (:class:`~streamd.types.StreamRow`); the detector process sends an
:class:`~streamd.types.InferenceBeat`. This thread publishes the transitions
as ``status.<id>`` (one seq per stream across restarts of its process) and a
``heartbeat`` every ``publish.heartbeat_s`` — only while the detector's beats
keep coming, so a hung detector shows as a missing heartbeat (``/healthz``).
It also keeps the journal's retention, off every frame path.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from streamd.config import PipelineConfig
from streamd.publish import Publisher
from streamd.publish.events import status_fields
from streamd.publish.journal import AlertJournal
from streamd.runtime.channel import Inbox
from streamd.types import InferenceBeat, SourceState, StatusUpdate, StreamRow

log = logging.getLogger(__name__)

PRUNE_EVERY_S = 600.0  # journal retention check
BEAT_STALE_INTERVALS = 3  # detector beats missed before heartbeats stop


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
        self._states: dict[str, SourceState | None] = {s.id: None for s in cfg.streams}
        self._inference: InferenceBeat | None = None
        self._started = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        # The publisher lives and dies in this thread (ZeroMQ sockets are not thread-safe).
        publisher = Publisher(self._bus, 10_000, epoch=self._epoch, bus=True)
        next_beat = time.time()
        next_prune = time.time() + PRUNE_EVERY_S
        try:
            while not self._stop.is_set():
                if self._inbox.poll(max(0.0, min(0.2, next_beat - time.time()))):
                    for msg in self._inbox.drain():
                        self._handle(msg, publisher)
                if time.time() >= next_beat:
                    self._heartbeat(publisher)
                    next_beat = time.time() + self._heartbeat_s
                if time.time() >= next_prune:
                    self._journal.prune()
                    next_prune = time.time() + PRUNE_EVERY_S
        finally:
            publisher.close()
            self._inbox.close()

    def _handle(self, msg: object, publisher: Publisher) -> None:
        if isinstance(msg, StatusUpdate) and msg.stream in self._states:
            self._states[msg.stream] = msg.state
            publisher.publish("status", msg.stream, msg.ts, status_fields(msg))
        elif isinstance(msg, StreamRow) and msg.stream in self._rows:
            with self._lock:
                self._rows[msg.stream] = msg
        elif isinstance(msg, InferenceBeat):
            self._inference = msg
        else:
            log.warning("unexpected control message %r ignored", type(msg).__name__)

    def _heartbeat(self, publisher: Publisher) -> None:
        beat = self._inference
        now = time.time()
        if beat is None or now - beat.ts > BEAT_STALE_INTERVALS * self._heartbeat_s:
            return  # the detector is not (yet, or any more) alive: no heartbeat
        with self._lock:
            rows = dict(self._rows)
        fields = {
            "uptime_s": round(now - self._started, 3),
            "backend": beat.backend,
            "streams": {sid: row.beat_fields(self._states[sid]) for sid, row in rows.items()},
        }
        publisher.publish("heartbeat", None, now, fields)

    def state(self) -> dict[str, Any]:
        """Per stream, its analytics state as of its last row (the ``state`` request)."""
        with self._lock:
            return {sid: row.tracks for sid, row in self._rows.items()}

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
        else:
            self._inbox.close()
