"""The source worker process: open → demux → decode → shared-memory ring → descriptor.

One per stream, so a camera that hangs, crashes or spews garbage cannot stall
the others. Every state change is sent as a :class:`StatusUpdate`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import av

from streamd.config import DropPolicy
from streamd.frames.ring import Frame, FrameRing, ring_name
from streamd.runtime.channel import Outbox
from streamd.runtime.process import StopFlag, setup_worker
from streamd.runtime.redact import redact_url
from streamd.sources.reader import (
    DecodeCounters,
    DecodedFrame,
    MediaClock,
    Pacer,
    decode_frames,
    open_source,
)
from streamd.types import FrameRef, SourceState, StatusUpdate

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """Everything a source worker needs; picklable for the spawn start method."""

    stream: str
    index: int
    url: str
    loop: bool
    realtime: bool
    drop_policy: DropPolicy
    buffer: int
    run_id: str
    inbox: str
    log_level: str = "INFO"


def source_main(spec: SourceSpec) -> None:
    """Process entry point."""
    stop = setup_worker(f"source {spec.stream}", spec.log_level)
    SourceWorker(spec, stop).run()


class SourceWorker:
    def __init__(self, spec: SourceSpec, stop: StopFlag) -> None:
        self.spec = spec
        self.stop = stop
        self.counters = DecodeCounters()
        self.outbox = Outbox(spec.inbox)
        self.ring: FrameRing | None = None
        self._generation = 0
        self._state: SourceState | None = None
        self._state_since = time.monotonic()
        self._pacer = Pacer()
        self._media = MediaClock()

    def run(self) -> None:
        try:
            self._run()
            self._drain_ring()
        finally:
            if self.ring is not None:
                self.ring.close()
            self.outbox.close()

    def _drain_ring(self, timeout_s: float = 30.0) -> None:
        # block policy promises every frame is analysed: keep the segment until
        # the reader has copied the last one (or we are told to stop).
        if self.ring is None or self.spec.drop_policy != "block":
            return
        ring = self.ring
        if not ring.wait_free(ring.slots, self.stop.is_set, timeout_s) and not self.stop.is_set():
            log.warning("reader did not consume the last frames within %.0fs", timeout_s)

    def _run(self) -> None:
        self._transition(SourceState.CONNECTING, "start")
        while not self.stop.is_set():
            try:
                container = open_source(self.spec.url)
            except (av.FFmpegError, OSError) as e:
                self._transition(SourceState.FAILED, "open_failed", redact_url(str(e)))
                return
            try:
                self._pump(container)
            except av.FFmpegError as e:
                self._transition(SourceState.FAILED, "read_error", redact_url(str(e)))
                return
            finally:
                container.close()
            if self.stop.is_set():
                return
            if not self.spec.loop:
                self._transition(SourceState.ENDED, "end_of_stream")
                return
            self._pacer.reset()

    def _pump(self, container: av.container.InputContainer) -> None:
        for decoded in decode_frames(container, self.counters):
            if self.stop.is_set():
                return
            if self._state is not SourceState.STREAMING:
                self._transition(SourceState.STREAMING, "first_frame")
            if self.spec.realtime and self.stop.wait(self._pacer.delay(decoded.pts_s)):
                return
            if not self._publish(decoded):
                return

    def _ring_for(self, frame: Frame) -> FrameRing:
        h, w = frame.shape[:2]
        if self.ring is None or self.ring.shape[:2] != (h, w):
            if self.ring is not None:
                log.info("resolution changed to %dx%d; new frame ring", w, h)
                self.ring.close()
            self._generation += 1
            name = ring_name(self.spec.run_id, self.spec.index, self._generation)
            self.ring = FrameRing(name, self.spec.buffer, h, w)
        return self.ring

    def _publish(self, decoded: DecodedFrame) -> bool:
        ring = self._ring_for(decoded.image)
        if self.spec.drop_policy == "block" and not ring.wait_free(1, self.stop.is_set):
            return False
        capture_ts = time.time()
        slot, seq = ring.write(decoded.image)
        ref = FrameRef(
            stream=self.spec.stream,
            ring=ring.name,
            slots=ring.slots,
            height=ring.shape[0],
            width=ring.shape[1],
            slot=slot,
            seq=seq,
            capture_ts=capture_ts - decoded.decode_ms / 1000.0,
            media_ts=self._media.stamp(decoded.pts_s, capture_ts),
            decode_ms=decoded.decode_ms,
            ready_ts=time.time(),
        )
        if not self.outbox.send(ref):
            log.warning("descriptor channel full; frame %d not announced", seq)
        return True

    def _transition(self, state: SourceState, reason: str, detail: str = "") -> None:
        now = time.monotonic()
        update = StatusUpdate(
            stream=self.spec.stream,
            state=state,
            reason=reason,
            ts=time.time(),
            prev_state=self._state,
            in_prev_state_s=round(now - self._state_since, 3) if self._state else 0.0,
            attempt=1,
            detail=detail,
            counters={
                "decoded": self.counters.decoded,
                "decode_errors": self.counters.decode_errors,
            },
        )
        log_fn = log.warning if state is SourceState.FAILED else log.info
        log_fn("%s -> %s (%s) %s", self._state, state, reason, detail)
        self._state, self._state_since = state, now
        self.outbox.send(update)
