"""The analysis thread of a camera's process: boxes in, tracked, analysed, published.

The decoding thread announces each frame to the detector process and keeps
its pixels here (:class:`InFlight`) until the detector says what became of
it: boxes (:class:`~streamd.types.Detected`) or a drop notice. A state change
of the source (stalled, ended...) is applied to the analytics only once every
frame announced before it has come back, so tracks end after the last frame.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
import supervision as sv

from streamd import metrics
from streamd.analysis.inflight import InFlight
from streamd.analysis.sinks import AnalysedFrame, DetSink, FrameSink, MeterSink, Sinks, ViewSink
from streamd.analytics.service import AnalyticsSink
from streamd.batching import DropCounters
from streamd.clips import ClipRecorder
from streamd.config import PipelineConfig, StreamConfig
from streamd.publish import Publisher
from streamd.publish.events import (
    Latency,
    as_published_boxes,
    as_published_conf,
    as_published_ts,
    objects,
)
from streamd.publish.journal import AlertJournal
from streamd.runtime.channel import Inbox, Outbox
from streamd.runtime.process import StopFlag
from streamd.track import StreamTracker
from streamd.types import (
    ActiveTrack,
    DecodeReport,
    Detected,
    Dropped,
    RegionsUpdate,
    Results,
    SourceState,
    StageDrops,
    StreamRow,
    WatchUpdate,
)
from streamd.view.feed import ViewFeed

log = logging.getLogger(__name__)

BUS_HWM = 10_000
STATE_GRACE_S = 5.0  # apply a state change after this long even if frames never came back
# At stop, how long queued alerts may wait for the journal: within the stop budget
# (the process's 2 s join, the supervisor's grace before SIGKILL).
JOURNAL_CLOSE_S = 1.0
# Another writer holding the journal (retention, a backup): the journal thread waits
# rather than publish unjournaled; off the analysis thread that costs no frames.
JOURNAL_BUSY_S = 60.0


@dataclass(frozen=True, slots=True)
class AnalysisSpec:
    """What a camera's process needs beyond decoding; picklable for the spawn start method."""

    pipeline: PipelineConfig
    # Bound here: Detected/Dropped from the detector, WatchUpdate and RegionsUpdate from
    # the supervisor.
    results: str
    bus: str  # the supervisor's event bus (PUSH)
    control: str  # the supervisor's inbox: this stream's heartbeat rows
    view: str | None  # the live view's frame endpoint (None: no HTTP, no view)
    names: dict[int, str]  # the detector's class names
    epoch: int  # this process's publisher epoch (a restarted process gets a new one)
    # Alerts of this stream published so far (from the supervisor): a restarted process
    # numbers on from here even where the journal missed one (disk full).
    alert_seq_from: int = 0
    generation: int = 0  # this stream's processes before this one (its rows carry it)
    # The active tracks the dead process before this one last reported: ended here.
    predecessor_tracks: tuple[ActiveTrack, ...] = ()


class SourceSide(Protocol):
    """What the analysis reads from its camera's decoding side."""

    stop: StopFlag

    def owns(self, ring: str) -> bool:
        """The segment is one of this process's rings (not a predecessor's)."""
        ...

    def decode_counts(self) -> tuple[int, int]: ...

    def drops(self) -> dict[str, int]: ...

    def on_decode_report(self, report: DecodeReport) -> None:
        """How its decode session in the detector process goes (decode_in: detector)."""
        ...


def _analytics(
    stream: StreamConfig, spec: AnalysisSpec, publisher: Publisher, clips: ClipRecorder | None
) -> AnalyticsSink:
    j = spec.pipeline.journal

    def open_journal() -> AlertJournal:  # on the journal thread: it may wait on the disk
        return AlertJournal(Path(str(j.path)), j.synchronous, j.max_age_days, j.max_mb,
                            prune=False, busy_timeout_s=JOURNAL_BUSY_S)  # fmt: skip

    def open_bus() -> Publisher:  # the journal thread's own socket to the bus
        return Publisher(spec.bus, BUS_HWM, epoch=spec.epoch, bus=True)

    return AnalyticsSink(stream, spec.pipeline, publisher, open_journal, open_bus,
                         spec.alert_seq_from, clips)  # fmt: skip


class _Counters:
    """This stream's figures between heartbeats."""

    def __init__(self) -> None:
        self.analysed = 0
        self.at_last_beat = 0
        self.fps = 0.0
        self.latency_sum_ms = 0.0
        self.latency_n = 0
        self.stage = StageDrops()
        self.source: dict[str, int] = {}

    def dropped(self, source: dict[str, int] | None = None) -> dict[str, int]:
        """The detector's drops plus the source's, as in the det event (docs/events.md)."""
        src = self.source if source is None else source
        st = self.stage
        return DropCounters(st.queue_full, st.stale, src, st.detector_error).as_dict()


class StreamAnalysis:
    """Runs on its own thread in the camera's process until :meth:`finish` or :meth:`stop`."""

    def __init__(
        self,
        stream: StreamConfig,
        spec: AnalysisSpec,
        source: SourceSide,
        clips: ClipRecorder | None = None,
    ) -> None:
        """``clips``: the camera's event clips (None: off); an alert of a track asks it
        for the track's clip."""
        cfg = spec.pipeline
        self.stream = stream.id
        self.spec = spec
        self._source = source
        # Room for a ring's worth being detected plus a batch's worth of announcements
        # (displaced frames are only reported between batches), twice over.
        room = 2 * (stream.buffer + cfg.batching.max_batch)
        self.inflight = InFlight(room)
        self._states: queue.SimpleQueue[tuple[SourceState, int]] = queue.SimpleQueue()
        self._pending_state: tuple[SourceState, int, float] | None = None
        self._finish = threading.Event()
        self._halt = threading.Event()
        self.settled = False  # every announced frame came back and was published
        self._mailbox = Inbox(spec.results, hwm=10_000)
        self._control = Outbox(spec.control)
        self.publisher = Publisher(spec.bus, BUS_HWM, epoch=spec.epoch, bus=True)
        self.analytics = _analytics(stream, spec, self.publisher, clips)
        self.tracker = StreamTracker(cfg.tracker, pixels=stream.decode_in != "detector",
                                     classes_apart=not cfg.model.agnostic_nms)  # fmt: skip
        self.feed = ViewFeed(spec.view, stream.id) if spec.view is not None else None
        sinks: list[FrameSink] = [DetSink(self.publisher), self.analytics, MeterSink(stream.id)]
        if self.feed is not None:
            sinks.append(ViewSink(self.feed, self.analytics.counts))
        self.sinks = Sinks(stream.id, sinks)
        self.counters = _Counters()
        self._foreign = metrics.RESULTS_DROPPED.labels(stream.id)
        self._no_pixels = metrics.INFLIGHT_EVICTED.labels(stream.id)
        self._heartbeat_s = cfg.publish.heartbeat_s
        self._last_beat = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="analysis", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        """False once the thread died of something other than being told to stop."""
        told = self._finish.is_set() or self._halt.is_set() or self._source.stop.is_set()
        return self._thread.is_alive() or told

    def on_state(self, state: SourceState) -> None:
        """Called by the decoding thread on every transition: applied once the frames
        announced before it came back."""
        self._states.put((state, self.inflight.mark()))

    def finish(self, timeout_s: float) -> bool:
        """The source is done: analyse what is still out (up to ``timeout_s``, or until the
        process is told to stop), then stop; True if everything was published."""
        self._finish.set()
        self._thread.join(timeout_s)
        self.stop()
        return self.settled

    def stop(self) -> None:
        self._halt.set()
        if self._thread.is_alive():
            self._thread.join(2.0)

    def _run(self) -> None:
        try:
            self.analytics.end_predecessor(self.spec.predecessor_tracks, time.time())
            while not (self._halt.is_set() or self._source.stop.is_set()):
                wait = max(0.0, self._last_beat + self._heartbeat_s - time.monotonic())
                if self._mailbox.poll(min(0.05 if self._finish.is_set() else 0.2, wait)):
                    for msg in self._mailbox.drain(1000):
                        self._handle(msg)
                self._apply_states()
                if time.monotonic() >= self._last_beat + self._heartbeat_s:
                    self._beat()
                if self._finish.is_set() and self._settled():
                    self.settled = True
                    break
            self.analytics.close(JOURNAL_CLOSE_S)  # queued alerts journaled and out
            self._beat()  # the final figures
        finally:
            self._close()

    def wants_pixels(self) -> bool:
        """decode_in: detector: whether the next picture's pixels should come back from the
        detector process: the live view is due a frame, or a zone or line attaches
        snapshots to its alerts (then every picture comes back)."""
        engine = self.analytics.engine
        if any(z.cfg.snapshot for z in engine.zones) or any(x.cfg.snapshot for x in engine.lines):
            return True
        return self.feed is not None and self.feed.wants()

    def _settled(self) -> bool:
        return self.inflight.pending() == 0 and self._pending_state is None and self._states.empty()

    def _handle(self, msg: object) -> None:
        if isinstance(msg, Results):
            for item in msg.items:
                self._handle(item)
        elif isinstance(msg, Detected | Dropped) and not self._source.owns(msg.ref.ring):
            # Queued for this stream while its previous process died: not this tracker's
            # clock or frames.
            self._foreign.inc()
        elif isinstance(msg, Detected):
            image = self.inflight.pop(msg.ref.ring, msg.ref.seq)
            if image is None and msg.ref.slot >= 0:  # slot -1: decoded in the detector
                self._no_pixels.inc()
            image = msg.image if image is None else image  # copied back where asked for
            self.counters.stage = msg.drops
            self._analyse(msg, image)
        elif isinstance(msg, Dropped):
            self.inflight.pop(msg.ref.ring, msg.ref.seq)
            self.counters.stage = msg.drops
        elif isinstance(msg, DecodeReport) and self._source.owns(msg.ring):
            self._source.on_decode_report(msg)
            if msg.final or msg.failed:
                self.inflight.forget(msg.ring, msg.decoded)
        elif isinstance(msg, WatchUpdate) and self.feed is not None:
            self.feed.watch(msg)
        elif isinstance(msg, RegionsUpdate):
            # Between two frames, on this thread: the tracker and its tracks go on.
            self.analytics.reconfigure(msg.zones, msg.lines)

    def _analyse(self, msg: Detected, image: npt.NDArray[np.uint8] | None) -> None:
        ref, rows = msg.ref, msg.boxes.rows()
        t0 = time.perf_counter()
        # The tracker is given the boxes and the time as the det event publishes them
        # (0.1 px, 4 decimals of confidence, a microsecond): a confidence of 0.49996 must
        # not start a track here that its published 0.5 would not start in a replay, nor
        # a look fall due at 2.6 - 2.4 < 0.2 s here and at 2.6 - 2.4 = 0.2 s there
        # (eval-tracking checks that a replay gives the same ids).
        detections = sv.Detections(
            xyxy=as_published_boxes(rows[:, :4]), confidence=as_published_conf(rows[:, 4]),
            class_id=rows[:, 5].astype(np.int64),
        )  # fmt: skip
        tracked = self.tracker.update(detections, as_published_ts(ref.media_ts), image)
        track_ms = (time.perf_counter() - t0) * 1000.0
        c = self.counters
        c.analysed += 1
        c.source = ref.source_dropped
        latency = Latency(decode=ref.decode_ms, queue=(msg.taken_ts - ref.ready_ts) * 1000.0,
                          infer=msg.infer_ms, track=track_ms,
                          total=(time.time() - ref.capture_ts) * 1000.0)  # fmt: skip
        c.latency_sum_ms += latency.total
        c.latency_n += 1
        frame = AnalysedFrame(ref, tracked, objects(tracked, self.spec.names), image, latency,
                              c.dropped(), c.analysed, msg.batch, c.fps)  # fmt: skip
        self.sinks.on_frame(frame)

    def _apply_states(self) -> None:
        while True:
            if self._pending_state is None:
                if self._states.empty():
                    return
                state, mark = self._states.get()
                self._pending_state = (state, mark, time.monotonic())
            state, mark, since = self._pending_state
            # Frames announced before the change may still come back: tracks end after them.
            overdue = time.monotonic() - since > STATE_GRACE_S
            if self.inflight.pending(upto=mark) and not overdue:
                return
            self._pending_state = None
            self.analytics.on_state(state)

    def row(self) -> StreamRow:
        c = self.counters
        counts = self.analytics.counts()
        decoded, errors = self._source.decode_counts()
        return StreamRow(
            stream=self.stream, analysed=c.analysed, fps=c.fps,
            dropped=c.dropped(self._source.drops()),
            decoded=decoded, decode_errors=errors,
            latency_ms=c.latency_sum_ms / c.latency_n if c.latency_n else None,
            zones=counts.zones, lines=counts.lines, alert_seq=counts.alert_seq,
            tracks=self.analytics.state(), active=self.analytics.active_tracks(),
            journal=counts.journal,
            generation=self.spec.generation, reported=True,
        )  # fmt: skip

    def _beat(self) -> None:
        now = time.monotonic()
        c = self.counters
        c.fps = (c.analysed - c.at_last_beat) / max(1e-6, now - self._last_beat)
        c.at_last_beat = c.analysed
        self._last_beat = now
        self._control.send(self.row())
        c.latency_sum_ms, c.latency_n = 0.0, 0

    def _close(self) -> None:
        self._mailbox.close()
        self._control.close()
        self.analytics.close(JOURNAL_CLOSE_S)  # no-op if done already
        self.publisher.close()  # waits (linger) until its last events are on the bus
        if self.feed is not None:
            self.feed.close()
