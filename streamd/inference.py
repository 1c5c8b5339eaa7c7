"""The detector process: batch the announced frames, detect, send each camera its boxes.

One per GPU (or one on the CPU), and lean on purpose: everything that belongs
to one camera after detection (tracking, analytics, the journal, publishing)
runs in that camera's own process (:mod:`streamd.analysis`), so host work
scales with cores and the detector, not Python, sets the ceiling. What stays
here: the inbox of frame descriptors, the batcher, reading ring slots in place,
the detector, and scattering results (or drop notices) to the cameras.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Literal

import numpy as np
import supervision as sv
import zmq

from streamd import metrics
from streamd.batching import Batcher
from streamd.config import PipelineConfig
from streamd.detect import Detector, DetectorError, create_detector
from streamd.frames.ring import RingReaders
from streamd.runtime.channel import Inbox, Outbox, ResultRouter
from streamd.runtime.exits import WorkerExit
from streamd.runtime.process import StopFlag, run_logged, setup_worker
from streamd.sources.device_decode import DecodeLane, DeviceFrames
from streamd.types import (
    Boxes,
    DecodeReport,
    Detected,
    Dropped,
    FrameRef,
    InferenceBeat,
    Results,
    RouteAck,
    RouteUpdate,
    StageDrops,
)

if TYPE_CHECKING:  # torch is imported by the detector's backend, not by the supervisor
    from streamd.detect.nv12 import Frame

log = logging.getLogger(__name__)

UNROUTED_HOLD_S = 10.0  # past the supervisor's route resend (routes.RESEND_S)
# Batches the detector may raise on in a row before the process gives up: one bad batch
# (a numerical fault, an out-of-memory on a large batch) costs its frames, not every
# stream; a device that fails every batch (a lost CUDA context) ends the process.
MAX_FAILED_BATCHES = 5


@dataclass(frozen=True, slots=True)
class InferenceSpec:
    config: PipelineConfig
    inbox: str  # FrameRefs from the source workers (bound here)
    control: str  # the supervisor's inbox: heartbeats go there
    results: tuple[str, ...]  # per stream, in config order: its process's result endpoint
    log_level: str = "INFO"
    # decode_in: detector: (stream id, packet endpoint) of each stream decoded here.
    packets: tuple[tuple[str, str], ...] = ()


def inference_main(spec: InferenceSpec, ready: Connection) -> None:
    """Process entry point: bind the inbox, load the model, send its class names, loop."""
    stop = setup_worker("inference", spec.log_level, spec.config.log.format)
    run_logged(lambda: _serve(spec, ready, stop))


def _serve(spec: InferenceSpec, ready: Connection, stop: StopFlag) -> int:
    cfg = spec.config
    try:
        inbox = Inbox(spec.inbox)
        detector = create_detector(cfg.model, cfg.batching.max_batch)
    except (DetectorError, zmq.ZMQError) as e:
        log.error("inference setup failed: %s", e)
        return WorkerExit.SETUP_FAILED
    router = ResultRouter({s.id: ep for s, ep in zip(cfg.streams, spec.results, strict=True)})
    worker = InferenceWorker(cfg, detector, inbox, router, Outbox(spec.control))
    lanes = start_lanes(cfg, spec.packets, spec.inbox, worker.device)
    ready.send(dict(detector.names))  # ready: the cameras' processes need the class names
    ready.close()
    try:
        worker.run(stop)
    finally:
        for lane in lanes:
            lane.stop(wait=False)
        for lane in lanes:
            lane.stop()
        worker.close()
    return WorkerExit.OK


def start_lanes(cfg: PipelineConfig, packets: Sequence[tuple[str, str]], inbox: str,
                store: DeviceFrames) -> list[DecodeLane]:  # fmt: skip
    """A decode thread for each stream decoded in this process (decode_in: detector)."""
    by_id = {s.id: s for s in cfg.streams}
    lanes = [DecodeLane(by_id[sid], endpoint, inbox, store) for sid, endpoint in packets]
    for lane in lanes:
        lane.start()
    return lanes


def boxes_of(detections: sv.Detections) -> Boxes:
    n = len(detections)
    conf, cls = detections.confidence, detections.class_id
    return Boxes.pack(
        np.asarray(detections.xyxy).reshape(n, 4),
        np.ones(n, np.float32) if conf is None else conf,
        np.zeros(n, np.int64) if cls is None else cls,
    )


class InferenceWorker:
    def __init__(
        self,
        cfg: PipelineConfig,
        detector: Detector,
        inbox: Inbox,
        router: ResultRouter,
        control: Outbox,
    ) -> None:
        self.cfg = cfg
        self.detector = detector
        self.inbox = inbox
        self.router = router
        self.control = control
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
        self.readers = RingReaders()
        self.device = DeviceFrames()  # pictures decoded here (decode_in: detector), slot -1
        # Per stream, until flushed.
        self._outgoing: dict[str, list[Detected | Dropped | DecodeReport]] = {}
        # Frames of a stream whose route has not come yet (the route and the frames reach
        # the inbox from different senders, taken in turns): kept until it does, or
        # released unread after UNROUTED_HOLD_S (a ring slot a writer waits for).
        self._unrouted: dict[str, list[tuple[float, FrameRef]]] = {}
        self._failed: dict[str, int] = {}  # per stream: frames of batches that raised
        self._failed_in_a_row = 0

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
                self._flush()  # displaced frames are reported now, not after the next batch
            elif self._unrouted:
                self._expire_unrouted(time.monotonic())
            if self.batcher.wait_time(time.time()) == 0.0:
                batch = self.batcher.take(time.time())
                for ref in self.batcher.pop_discarded():
                    self._drop(ref, "stale")  # already counted by the batcher
                self.process(batch)
            self._flush()
            if time.time() >= next_beat:
                self.control.send(InferenceBeat(self.detector.backend, time.time()))
                # From now, not from the missed slot: a slow batch must not cause a burst.
                next_beat = time.time() + self.cfg.publish.heartbeat_s

    def _ingest(self, messages: Sequence[object]) -> None:
        for msg in messages:
            if isinstance(msg, RouteUpdate):
                self._route(msg)
                self.control.send(RouteAck(msg.seq))
                continue
            if isinstance(msg, DecodeReport | Dropped):  # from a decode thread: to its camera
                self._from_lane(msg)
                continue
            if isinstance(msg, FrameRef) and msg.stream not in self.policies:
                self._unrouted.setdefault(msg.stream, []).append((time.monotonic(), msg))
                continue
            if not isinstance(msg, FrameRef):
                log.warning("unexpected message %r ignored", type(msg).__name__)
                continue
            self._offer(msg)
        self._expire_unrouted(time.monotonic())

    def _from_lane(self, msg: DecodeReport | Dropped) -> None:
        if isinstance(msg, Dropped):  # sampled, or no room: with this process's drop totals
            msg = Dropped(msg.ref, msg.cause, self._drops(msg.ref.stream))
        stream = msg.ref.stream if isinstance(msg, Dropped) else msg.stream
        self._outgoing.setdefault(stream, []).append(msg)

    def _offer(self, ref: FrameRef) -> None:
        for displaced in self.batcher.offer(ref):
            self._drop(displaced, "queue_full")

    def _expire_unrouted(self, now: float) -> None:
        for stream, held in list(self._unrouted.items()):
            expired = [ref for t, ref in held if now - t > UNROUTED_HOLD_S]
            if not expired:
                continue
            log.warning("%d frame(s) of stream %s came without a route; released unread",
                        len(expired), stream)  # fmt: skip
            for ref in expired:
                self._free(ref)
            kept = [(t, ref) for t, ref in held if now - t <= UNROUTED_HOLD_S]
            if kept:
                self._unrouted[stream] = kept
            else:
                del self._unrouted[stream]

    def _route(self, msg: RouteUpdate) -> None:
        """A stream added, changed or removed at runtime (the supervisor sends this before
        it starts the stream's process, and after it stopped it)."""
        if msg.endpoint is None:
            for ref in self.batcher.remove(msg.stream):  # its process and rings are gone
                if ref.slot < 0:
                    self.device.release(ref)
            self.policies.pop(msg.stream, None)
            self._outgoing.pop(msg.stream, None)
            self._failed.pop(msg.stream, None)  # a stream added again counts from 0
            self.router.disconnect(msg.stream)
            log.info("stream %s removed from the detector's routes", msg.stream)
            return
        self.policies[msg.stream] = msg.policy
        self.batcher.set_lane(msg.stream, msg.policy, msg.max_latency_s)
        self.router.connect(msg.stream, msg.endpoint)
        log.info("stream %s routed to %s", msg.stream, msg.endpoint)
        for _, ref in self._unrouted.pop(msg.stream, []):  # came before their route
            self._offer(ref)

    def _drops(self, stream: str) -> StageDrops:
        d = self.batcher.drops(stream)
        return StageDrops(d.queue_full, d.stale, self._failed.get(stream, 0))

    def _drop(self, ref: FrameRef, cause: Literal["queue_full", "stale", "detector_error"]) -> None:
        self._release(ref)
        self._outgoing.setdefault(ref.stream, []).append(
            Dropped(ref, cause, self._drops(ref.stream))
        )

    def _flush(self) -> None:
        """Each stream's outcomes since the last flush, in one message (fewer wake-ups)."""
        for stream, items in self._outgoing.items():
            self.router.send(stream, Results(tuple(items)))
        self._outgoing.clear()

    def _release(self, ref: FrameRef) -> None:
        # oldest/block writers wait for (or drop on) a full ring: hand the slot back,
        # also for frames dropped unread, or the writer would wait on them forever.
        if ref.slot < 0 or self.policies[ref.stream] != "latest":
            self._free(ref)

    def _free(self, ref: FrameRef) -> None:
        if ref.slot < 0:
            self.device.release(ref)  # a picture decoded here: its device memory goes
        else:
            self.readers.release(ref)

    def process(self, refs: list[FrameRef]) -> None:
        """Detect one batch, reading the frames in place, and send every frame's outcome."""
        taken = time.time()
        views: list[Frame] = []
        kept: list[FrameRef] = []
        for ref in refs:
            view = self.device.claim(ref) if ref.slot < 0 else self.readers.claim(ref)
            if view is None:
                self._lost(ref)
            else:
                views.append(view)
                kept.append(ref)
        if not kept:
            self.readers.sweep()
            return
        t0 = time.perf_counter()
        try:
            results = self.detector.detect(views, kept)
        except Exception as e:
            log.error("detector failed on a batch of %d frame(s)", len(kept), exc_info=True)
            # Only its text is kept: the exception (its traceback, chained ones) holds the
            # detector's frames, and they the ring views, which must go before the sweep.
            error: str | None = f"{type(e).__name__}: {e}"
        else:
            error = None
        if error is not None:
            views.clear()  # the list the detector was given: no view outlives the batch
            self._batch_failed(kept, error)
            return
        self._failed_in_a_row = 0
        infer_ms = (time.perf_counter() - t0) * 1000.0
        metrics.BATCH_SIZE.observe(len(kept))
        for ref, detections in zip(kept, results, strict=True):
            # The detector read the slot in place: if the writer lapped it anyway, the
            # boxes may belong to a torn frame (seqlock check after the read).
            if ref.slot >= 0 and not self.readers.done(ref):
                self._lost(ref)
                continue
            image = self.device.host_copy(ref) if ref.slot < 0 else None
            self._release(ref)
            msg = Detected(ref, boxes_of(detections), infer_ms, taken, len(kept),
                           self._drops(ref.stream), image)  # fmt: skip
            self._outgoing.setdefault(ref.stream, []).append(msg)
        del views, results  # no view into a ring outlives the batch
        self.readers.sweep()

    def _batch_failed(self, refs: list[FrameRef], error: str) -> None:
        """The detector raised on a batch: its frames are dropped and counted, each camera
        told; the process goes on unless it has failed MAX_FAILED_BATCHES in a row."""
        self._failed_in_a_row += 1
        log.error("%d failed batch(es) in a row (the process ends at %d): %s",
                  self._failed_in_a_row, MAX_FAILED_BATCHES, error)  # fmt: skip
        if self._failed_in_a_row >= MAX_FAILED_BATCHES:
            raise DetectorError(f"{MAX_FAILED_BATCHES} batches in a row failed, the last "
                                f"with {error} (tracebacks in the log above)")  # fmt: skip
        for ref in refs:
            if ref.slot >= 0:
                self.readers.done(ref)  # unclaimed: the slot is the writer's again
            self._failed[ref.stream] = self._failed.get(ref.stream, 0) + 1
            metrics.FRAMES_DROPPED.labels(ref.stream, "detector_error").inc()
            self._drop(ref, "detector_error")
        self.readers.sweep()

    def _lost(self, ref: FrameRef) -> None:
        """A frame overwritten in its ring before (or while) it was read."""
        self.batcher.count_drop(ref.stream)
        self._drop(ref, "queue_full")

    def close(self) -> None:
        self.readers.close()
        self.inbox.close()
        self.router.close()
        self.control.close()
