"""One camera's analytics, in that camera's own process: tracked objects in,
``track.<id>`` and ``alert.<id>`` out.

Alerts are numbered, committed to the journal and only then published (one
transaction per frame that raised any) on a thread of their own
(:class:`~streamd.publish.alert_writer.AlertWriter`), so a slow or hung
journal disk delays alerts, never this camera's frames. Their ``seq``
continues from the journal's last one for this stream, across restarts of
this process and of the daemon (above the reserved block after an unclean end).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import numpy.typing as npt

from streamd import metrics
from streamd.analytics.engine import Alert, Observation, StreamAnalytics, TrackEvent
from streamd.clips import ClipRecorder, ClipRef
from streamd.config import LineConfig, PipelineConfig, StreamConfig, ZoneConfig
from streamd.publish.alert_writer import AlertWriter, NewAlert
from streamd.publish.events import as_published_ts
from streamd.publish.journal import AlertJournal
from streamd.publish.publisher import Publisher
from streamd.types import ActiveTrack, FrameRef, JournalHealth, SourceState

if TYPE_CHECKING:
    from streamd.analysis.sinks import AnalysedFrame

log = logging.getLogger(__name__)

# States in which a stream delivers no frames: its tracks end now, not never.
_ENDS_TRACKS = {
    SourceState.STALLED,
    SourceState.RECONNECTING,
    SourceState.ENDED,
    SourceState.FAILED,
}
SNAPSHOT_QUALITY = 85
SNAPSHOT_MARGIN = 0.1  # of the box size, on every side


def observations(objs: list[dict[str, Any]]) -> list[Observation]:
    """The confirmed tracks of a ``det`` event's objects."""
    return [
        Observation(o["track_id"], o["class_id"], o["class"], o["conf"], tuple(o["bbox"]))
        for o in objs
        if o["track_id"] is not None
    ]


def snapshot(frame: npt.NDArray[np.uint8], bbox: tuple[float, float, float, float]) -> bytes:
    """A JPEG of the object's box with a margin, clipped to the frame."""
    x1, y1, x2, y2 = bbox
    mx, my = (x2 - x1) * SNAPSHOT_MARGIN, (y2 - y1) * SNAPSHOT_MARGIN
    h, w = frame.shape[:2]
    left, top = max(0, int(x1 - mx)), max(0, int(y1 - my))
    right, bottom = min(w, int(np.ceil(x2 + mx))), min(h, int(np.ceil(y2 + my)))
    crop = frame[top:bottom, left:right] if right > left and bottom > top else frame
    ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, SNAPSHOT_QUALITY])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return bytes(buf)


def _object(obs: Observation) -> dict[str, Any]:
    return {
        "track_id": obs.track_id,
        "class_id": obs.class_id,
        "class": obs.cls,
        "conf": obs.conf,
        "bbox": list(obs.bbox),
    }


def alert_fields(
    alert: Alert, ref: FrameRef, attached: bool, clip: ClipRef | None = None
) -> dict[str, Any]:
    obj = _object(alert.obj) if alert.obj is not None else {
        "track_id": None, "class_id": None, "class": None, "conf": None, "bbox": None
    }  # fmt: skip
    return {
        "rule": alert.rule,
        "zone": alert.zone,
        "line": alert.line,
        **obj,
        "frame": alert.frame,
        "media_ts": as_published_ts(ref.media_ts),
        "width": ref.width,
        "height": ref.height,
        "snapshot": attached,
        "clip_id": None if clip is None else clip.id,
        "clip_path": None if clip is None else str(clip.path),
        **alert.extra,
    }


def track_fields(event: TrackEvent) -> dict[str, Any]:
    return {"event": event.event, **_object(event.obj), "frame": event.frame, **event.extra}


class AnalyticsSink:
    """The per-frame consumer that turns a stream's tracks into track and alert events."""

    name = "analytics"

    def __init__(
        self,
        stream: StreamConfig,
        cfg: PipelineConfig,
        publisher: Publisher,
        open_journal: Callable[[], AlertJournal],
        open_bus: Callable[[], Publisher],
        alert_seq_from: int = 0,
        clips: ClipRecorder | None = None,
    ) -> None:
        """``open_journal``/``open_bus``: the journal and the socket alerts go out on,
        opened on the journal thread; ``alert_seq_from``: the seq floor (supervisor);
        ``clips``: the camera's event clips (None: off)."""
        self.stream = stream.id
        self.publisher = publisher
        self.engine = StreamAnalytics(stream.zones, stream.lines, cfg.tracks,
                                      cfg.tracker.memory_s)  # fmt: skip
        self.last_ref: FrameRef | None = None
        self._occupancy = {z.name: metrics.ZONE_OCCUPANCY.labels(stream.id, z.name)
                           for z in stream.zones}  # fmt: skip
        self.writer = AlertWriter(stream.id, open_journal, open_bus, alert_seq_from)
        self.clips = clips
        self._closed = False

    def on_frame(self, frame: AnalysedFrame) -> None:
        ref = frame.ref
        events, alerts = self.engine.update(
            observations(frame.objects), ref.frame, ref.media_ts, ref.width, ref.height
        )
        self.last_ref = ref
        self._meter()
        self._emit(ref, events, alerts, frame.image)
        if self.clips is not None:  # a clip that ends before this frame can close
            self.clips.analysed(ref.frame)

    def _meter(self) -> None:
        for zone in self.engine.zones:
            self._occupancy[zone.name].set(zone.occupancy)
        for line in self.engine.lines:
            for direction in line.crossed:
                metrics.LINE_CROSSINGS.labels(self.stream, line.name, direction).inc()
            line.crossed.clear()

    def reconfigure(self, zones: Sequence[ZoneConfig], lines: Sequence[LineConfig]) -> None:
        """Zones and lines changed at runtime: the engine keeps its tracks."""
        self.engine.set_regions(zones, lines)
        names = {z.name for z in zones}
        for name in set(self._occupancy) - names:  # removed: nobody counted inside any more
            self._occupancy[name].set(0)
        self._occupancy = {z.name: metrics.ZONE_OCCUPANCY.labels(self.stream, z.name)
                           for z in zones}  # fmt: skip
        log.info("%s: %d zone(s), %d line(s) now", self.stream, len(zones), len(lines))

    def end_predecessor(self, tracks: Sequence[ActiveTrack], ts: float) -> None:
        """End the tracks the process this one replaces (it died) had as of its last
        heartbeat, with reason ``restart``: this process's tracker starts afresh, and
        these ends go out before any track of its own."""
        for t in tracks:
            fields = {"event": "end", **t.object_fields(), "frame": t.frame,
                      **t.end_fields("restart")}  # fmt: skip
            self.publisher.publish("track", self.stream, ts, fields)

    def active_tracks(self) -> tuple[ActiveTrack, ...]:
        return tuple(self.engine.active())

    def on_state(self, state: SourceState) -> None:
        """The stream stopped delivering frames: its tracks end now, not never."""
        ref = self.last_ref
        if state in _ENDS_TRACKS and ref is not None:
            events, alerts = self.engine.end_all(ref.frame, ref.media_ts, state.value)
            self._meter()
            self._emit(ref, events, alerts, None)
        if self.clips is not None:  # every frame before the change is analysed
            self.clips.drain()

    def _emit(self, ref: FrameRef, events: list[TrackEvent], alerts: list[Alert],
              frame: npt.NDArray[np.uint8] | None) -> None:  # fmt: skip
        for e in events:
            self.publisher.publish("track", ref.stream, ref.capture_ts, track_fields(e))
        if not alerts:
            return
        batch = []
        for a in alerts:
            jpeg = None
            if a.snapshot and a.obj is not None and frame is not None:
                jpeg = snapshot(frame, a.obj.bbox)
            clip = None
            if self.clips is not None and a.obj is not None:  # a track's alert: its clip
                clip = self.clips.request(a.obj.track_id, ref.frame, ref.capture_ts)
            fields = alert_fields(a, ref, jpeg is not None, clip)
            batch.append(NewAlert(ref.capture_ts, fields, jpeg))
        self.writer.submit(batch)  # numbered, journaled, then published by the writer

    def state(self) -> dict[str, Any]:
        """Active tracks, occupancy and counts (what a ``state`` request answers)."""
        return self.engine.state()

    def counts(self) -> Counts:
        """Zone occupancy, line counts and the last alert seq (heartbeats, live view)."""
        return Counts(
            zones={z.name: z.occupancy for z in self.engine.zones},
            lines={ln.name: dict(ln.counts) for ln in self.engine.lines},
            # Lets a subscriber see alerts it missed at the end of a burst.
            alert_seq=self.writer.published,
            journal=self.writer.health(),
        )

    def close(self, timeout_s: float) -> None:
        """Journal and publish the alerts still queued (once)."""
        if not self._closed:
            self._closed = True
            self.writer.close(timeout_s)


@dataclass(frozen=True, slots=True)
class Counts:
    zones: dict[str, int]
    lines: dict[str, dict[str, int]]
    alert_seq: int
    journal: JournalHealth
