"""The inference worker process: batcher → detector → per-stream tracker → publisher.

One per GPU (or one on the CPU). It is also the single publisher, so every
``seq`` is assigned in one place.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from dataclasses import dataclass
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import supervision as sv
import zmq

from streamd import metrics
from streamd.analytics.service import Analytics
from streamd.batching import Batcher
from streamd.config import PipelineConfig
from streamd.detect import Detector, DetectorError, create_detector
from streamd.frames.ring import RingReader
from streamd.publish import Publisher
from streamd.publish.events import Latency, det_fields, objects, status_fields
from streamd.publish.journal import AlertJournal
from streamd.publish.replay import ReplayServer
from streamd.runtime.channel import Inbox, Message
from streamd.runtime.process import StopFlag, run_logged, setup_worker
from streamd.track import StreamTracker
from streamd.types import FrameRef, SourceState, StatusUpdate, WatchUpdate
from streamd.view.feed import ViewFeed

log = logging.getLogger(__name__)

EXIT_SETUP_FAILED = 3
PRUNE_EVERY_S = 600.0  # journal retention check


@dataclass(frozen=True, slots=True)
class InferenceSpec:
    config: PipelineConfig
    inbox: str
    log_level: str = "INFO"
    view: str | None = None  # the live view's frame endpoint (None: no HTTP, no view)


@dataclass(slots=True)
class _StreamStats:
    state: SourceState | None = None
    analysed: int = 0
    analysed_at_last_beat: int = 0
    fps: float = 0.0
    decoded: int = 0  # the source's totals, from its latest frame or status update
    decode_errors: int = 0
    latency_sum_ms: float = 0.0  # capture → publish, since the last heartbeat
    latency_n: int = 0


@dataclass(frozen=True, slots=True)
class _Meters:
    """One stream's metric children, looked up once (not per frame)."""

    analysed: Any
    latency: dict[str, Any]
    depth: Any

    @classmethod
    def for_stream(cls, stream: str) -> _Meters:
        return cls(
            metrics.FRAMES_ANALYSED.labels(stream),
            {st: metrics.LATENCY.labels(stream, st) for st in metrics.STAGES},
            metrics.QUEUE_DEPTH.labels(stream),
        )


def inference_main(spec: InferenceSpec, ready: MpEvent) -> None:
    """Process entry point: bind sockets, load the model, signal ready, loop."""
    stop = setup_worker("inference", spec.log_level)
    run_logged(lambda: _serve(spec, ready, stop))


def _serve(spec: InferenceSpec, ready: MpEvent, stop: StopFlag) -> int:
    cfg = spec.config
    try:
        publisher = Publisher(
            cfg.publish.endpoint, cfg.publish.hwm, sndbuf_kib=cfg.publish.sndbuf_kib
        )
        journal = _open_journal(cfg)
        inbox = Inbox(spec.inbox)
        detector = create_detector(cfg.model, cfg.batching.max_batch)
        worker = InferenceWorker(cfg, detector, inbox, publisher, journal)
        if spec.view is not None:
            worker.view = ViewFeed(spec.view)
        replay = _replay_server(cfg, journal, publisher.epoch, worker)
    except (DetectorError, zmq.ZMQError, JournalError) as e:
        log.error("inference setup failed: %s", e)
        return EXIT_SETUP_FAILED
    replay.start()
    ready.set()
    try:
        worker.run(stop)
    finally:
        replay.close()
        worker.close()
    return 0


class JournalError(Exception):
    pass


def _open_journal(cfg: PipelineConfig) -> AlertJournal:
    j = cfg.journal
    path = Path(str(j.path))
    try:
        return AlertJournal(path, j.synchronous, j.max_age_days, j.max_mb)
    except (OSError, sqlite3.Error) as e:
        raise JournalError(f"journal.path {path}: {e}") from e


def _replay_server(
    cfg: PipelineConfig, journal: AlertJournal, epoch: int, worker: InferenceWorker
) -> ReplayServer:
    try:
        return ReplayServer(cfg.journal.endpoint, journal.path, epoch, worker.analytics.state)
    except zmq.ZMQError as e:
        raise JournalError(f"journal.endpoint {cfg.journal.endpoint}: {e}") from e


class InferenceWorker:
    def __init__(
        self,
        cfg: PipelineConfig,
        detector: Detector,
        inbox: Inbox,
        publisher: Publisher,
        journal: AlertJournal,
    ) -> None:
        self.cfg = cfg
        self.journal = journal
        self.analytics = Analytics(cfg, publisher, journal)
        self._next_prune = time.time() + PRUNE_EVERY_S
        self._state_changes: dict[str, SourceState] = {}
        self.view: ViewFeed | None = None
        self.detector = detector
        self.inbox = inbox
        self.publisher = publisher
        self.policies = {s.id: s.effective_drop_policy for s in cfg.streams}
        self.batcher = Batcher(
            cfg.batching.max_batch,
            cfg.batching.max_wait_ms / 1000.0,
            self.policies,
            {
                s.id: None if s.max_latency_ms is None else s.max_latency_ms / 1000.0
                for s in cfg.streams
            },
        )
        self.trackers = {s.id: StreamTracker(cfg.tracker) for s in cfg.streams}
        self.stats = {s.id: _StreamStats() for s in cfg.streams}
        self._meters = {s.id: _Meters.for_stream(s.id) for s in cfg.streams}
        self.readers: dict[str, RingReader] = {}
        self.started = time.time()
        self._last_beat = self.started

    def run(self, stop: StopFlag) -> None:
        next_beat = time.time()
        while not stop.is_set():
            now = time.time()
            timeouts = [0.1, max(0.0, next_beat - now)]
            due = self.batcher.wait_time(now)
            if due is not None:
                timeouts.append(due)
            if self.inbox.poll(min(timeouts)):
                self._ingest(self.inbox.drain())
            if self.batcher.wait_time(time.time()) == 0.0:
                batch = self.batcher.take(time.time())
                self._discard(self.batcher.pop_discarded())
                self.process(batch)
            if time.time() >= next_beat:
                self._heartbeat()
                # From now, not from the missed slot: a slow batch must not cause a burst.
                next_beat = time.time() + self.cfg.publish.heartbeat_s
            if time.time() >= self._next_prune:
                self.journal.prune()
                self._next_prune = time.time() + PRUNE_EVERY_S

    def _ingest(self, messages: list[Message]) -> None:
        for msg in messages:
            if msg.stream not in self.stats:
                log.warning("message for unknown stream %r ignored", msg.stream)
            elif isinstance(msg, FrameRef):
                stats = self.stats[msg.stream]
                stats.decoded, stats.decode_errors = msg.decoded, msg.decode_errors
                self.batcher.offer(msg)
            elif isinstance(msg, WatchUpdate):
                if self.view is not None:
                    self.view.watch(msg)
            else:
                self._publish_status(msg)

    def _publish_status(self, update: StatusUpdate) -> None:
        stats = self.stats[update.stream]
        stats.state = update.state
        if "decoded" in update.counters:  # the supervisor's updates carry none
            stats.decoded = update.counters["decoded"]
            stats.decode_errors = update.counters.get("decode_errors", 0)
        self.publisher.publish("status", update.stream, update.ts, status_fields(update))
        # Frames sent before this update may still wait for a batch: tracks end after them.
        self._state_changes[update.stream] = update.state
        self._apply_state_changes()

    def _apply_state_changes(self) -> None:
        for stream, state in list(self._state_changes.items()):
            if self.batcher.depth(stream) == 0:
                del self._state_changes[stream]
                self.analytics.on_state(stream, state)

    def _reader_for(self, ref: FrameRef) -> RingReader | None:
        reader = self.readers.get(ref.stream)
        if reader is None or reader.name != ref.ring:
            if reader is not None:
                reader.close()
                del self.readers[ref.stream]
            try:
                reader = RingReader(ref.ring, ref.slots, ref.height, ref.width)
            except FileNotFoundError:
                return None  # the writer restarted or resized since
            self.readers[ref.stream] = reader
        return reader

    def _read(self, ref: FrameRef) -> npt.NDArray[np.uint8] | None:
        reader = self._reader_for(ref)
        if reader is None:
            return None
        frame = reader.read(ref.slot, ref.seq)
        self._release(ref)
        return frame

    def _release(self, ref: FrameRef) -> None:
        # oldest/block writers wait for (or drop on) a full ring: hand the slot back,
        # also for frames dropped unread (stale), or the writer would wait on them forever.
        if self.policies[ref.stream] == "latest":
            return
        reader = self._reader_for(ref)
        if reader is not None:
            reader.release(ref.seq)

    def _discard(self, stale: list[FrameRef]) -> None:
        for ref in stale:  # already counted by the batcher
            self._release(ref)

    def process(self, refs: list[FrameRef]) -> None:
        """Analyse one batch and publish a ``det`` event per frame."""
        taken = time.time()
        frames, kept = [], []
        for ref in refs:
            frame = self._read(ref)
            if frame is None:
                self.batcher.count_drop(ref.stream)
            else:
                frames.append(frame)
                kept.append(ref)
        if not frames:
            return
        t0 = time.perf_counter()
        results = self.detector.detect(frames, kept)
        infer_ms = (time.perf_counter() - t0) * 1000.0
        metrics.BATCH_SIZE.observe(len(kept))
        for ref, detections, frame in zip(kept, results, frames, strict=True):
            self._publish_det(ref, detections, frame, taken, infer_ms, len(kept))
        if self._state_changes:
            self._apply_state_changes()

    def _publish_det(
        self,
        ref: FrameRef,
        detections: sv.Detections,
        frame: npt.NDArray[np.uint8],
        taken: float,
        infer_ms: float,
        batch: int,
    ) -> None:
        t0 = time.perf_counter()
        tracked = self.trackers[ref.stream].update(detections, ref.media_ts)
        track_ms = (time.perf_counter() - t0) * 1000.0
        stats = self.stats[ref.stream]
        stats.analysed += 1
        objs = objects(tracked, self.detector.names)
        latency = Latency(
            decode=ref.decode_ms,
            queue=(taken - ref.ready_ts) * 1000.0,
            infer=infer_ms,
            track=track_ms,
            total=(time.time() - ref.capture_ts) * 1000.0,
        )
        fields = det_fields(
            ref, objs, latency, self.batcher.drops(ref.stream).as_dict(), stats.analysed, batch
        )
        self.publisher.publish("det", ref.stream, ref.capture_ts, fields)
        self.analytics.on_frame(ref, objs, frame)
        stats.latency_sum_ms += latency.total
        stats.latency_n += 1
        if self.view is not None and self.view.wants(ref.stream):
            self.view.offer(ref.stream, frame, {
                "frame": ref.frame, "ts": ref.capture_ts, "objects": objs,
                "latency_ms": fields["latency_ms"]["total"], "fps": round(stats.fps, 2),
                "counts": self.analytics.counts(ref.stream),
            })  # fmt: skip
        meters = self._meters[ref.stream]
        meters.analysed.inc()
        for stage, ms in fields["latency_ms"].items():
            meters.latency[stage].observe(ms / 1000.0)
        meters.depth.set(self.batcher.depth(ref.stream))

    def _heartbeat(self) -> None:
        now = time.time()
        elapsed = max(1e-6, now - self._last_beat)
        self._last_beat = now
        streams = {}
        for sid, st in self.stats.items():
            st.fps = (st.analysed - st.analysed_at_last_beat) / elapsed
            st.analysed_at_last_beat = st.analysed
            mean_latency = st.latency_sum_ms / st.latency_n if st.latency_n else None
            st.latency_sum_ms, st.latency_n = 0.0, 0
            streams[sid] = {
                "state": st.state.value if st.state else None,
                "analysed": st.analysed,
                "dropped": self.batcher.drops(sid).as_dict(),
                "fps": round(st.fps, 2),
                "decoded": st.decoded,
                "decode_errors": st.decode_errors,
                "latency_ms": None if mean_latency is None else round(mean_latency, 1),
                **self.analytics.counts(sid),
            }
        fields = {
            "uptime_s": round(now - self.started, 3),
            "backend": self.detector.backend,
            "streams": streams,
        }
        self.publisher.publish("heartbeat", None, now, fields)

    def close(self) -> None:
        for reader in self.readers.values():
            with contextlib.suppress(Exception):
                reader.close()
        self.readers.clear()
        self.inbox.close()
        self.publisher.close()
        self.journal.close()
        if self.view is not None:
            self.view.close()
