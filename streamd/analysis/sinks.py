"""Per-frame consumers behind one small interface: ``on_frame(AnalysedFrame)``.

A frame's det event, its analytics, the live view and the meters are separate
consumers; one that raises is logged and counted, and the others still run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import supervision as sv

from streamd import metrics
from streamd.analytics.service import Counts
from streamd.publish import Publisher
from streamd.publish.events import Latency, det_fields
from streamd.types import FrameRef
from streamd.view.feed import ViewFeed, ViewMeta

log = logging.getLogger(__name__)

ERROR_LOG_EVERY_S = 10.0  # a consumer failing every frame logs once in this long


@dataclass(frozen=True, slots=True)
class AnalysedFrame:
    """One frame after detection and tracking: what every consumer gets."""

    ref: FrameRef
    detections: sv.Detections  # with tracker_id (-1: not yet confirmed)
    objects: list[dict[str, Any]]  # the det event's objects, built once
    image: npt.NDArray[np.uint8] | None  # the pixels, while this process still holds them
    latency: Latency
    dropped: dict[str, int]
    analysed: int  # frames of this stream analysed so far, this one included
    batch: int
    fps: float  # analysed frames/s of this stream, as of the last heartbeat


class FrameSink(Protocol):
    name: str

    def on_frame(self, frame: AnalysedFrame) -> None: ...


class Sinks:
    """Runs every consumer on every frame; a failing one does not stop the others."""

    def __init__(self, stream: str, sinks: Sequence[FrameSink]) -> None:
        self.sinks = list(sinks)
        self._errors = {s.name: metrics.SINK_ERRORS.labels(stream, s.name) for s in sinks}
        self._logged: dict[str, float] = {}

    def on_frame(self, frame: AnalysedFrame) -> None:
        for sink in self.sinks:
            try:
                sink.on_frame(frame)
            except Exception:
                self._errors[sink.name].inc()
                now = time.monotonic()
                if now - self._logged.get(sink.name, -ERROR_LOG_EVERY_S) >= ERROR_LOG_EVERY_S:
                    self._logged[sink.name] = now
                    log.exception("%s failed on frame %d; the others went on", sink.name,
                                  frame.ref.frame)  # fmt: skip


class DetSink:
    """Publishes the ``det.<stream>`` event."""

    name = "det"

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher

    def on_frame(self, frame: AnalysedFrame) -> None:
        ref = frame.ref
        fields = det_fields(ref, frame.objects, frame.latency, frame.dropped, frame.analysed,
                            frame.batch)  # fmt: skip
        self.publisher.publish("det", ref.stream, ref.capture_ts, fields)


class MeterSink:
    """This stream's Prometheus metrics; children looked up once, not per frame."""

    name = "meters"

    def __init__(self, stream: str) -> None:
        self.analysed = metrics.FRAMES_ANALYSED.labels(stream)
        self.latency = {st: metrics.LATENCY.labels(stream, st) for st in metrics.STAGES}

    def on_frame(self, frame: AnalysedFrame) -> None:
        self.analysed.inc()
        for stage, ms in frame.latency.as_dict().items():
            self.latency[stage].observe(ms / 1000.0)


class ViewSink:
    """Frames of this stream for the live view, only while someone watches."""

    name = "view"

    def __init__(self, feed: ViewFeed, counts: Callable[[], Counts]) -> None:
        self.feed = feed
        self._counts = counts  # this stream's zone and line counts, now

    def on_frame(self, frame: AnalysedFrame) -> None:
        ref = frame.ref
        if frame.image is None or not self.feed.wants():
            return
        c = self._counts()
        meta = ViewMeta(stream=ref.stream, frame=ref.frame, ts=ref.capture_ts,
                        objects=frame.objects, latency_ms=frame.latency.as_dict()["total"],
                        fps=round(frame.fps, 2), zones=c.zones, lines=c.lines)  # fmt: skip
        self.feed.offer(frame.image, meta)
