"""The camera process: open → demux → decode → shared-memory ring → descriptor, and,
on a second thread, that camera's work after detection (:mod:`streamd.analysis`).

One per stream, so a camera that hangs, crashes or spews garbage cannot stall
the others, and per-camera work runs on as many cores as there are cameras.
Every state change is sent to the supervisor as a :class:`StatusUpdate`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import time
from dataclasses import dataclass

import av

from streamd import metrics
from streamd.analysis import AnalysisSpec, StreamAnalysis
from streamd.clips import start_clips
from streamd.config import DropPolicy, ReconnectConfig, StreamConfig, source_kind
from streamd.frames.ring import FrameRing, ring_name, segment_prefix
from streamd.runtime.channel import Outbox
from streamd.runtime.exits import WorkerExit
from streamd.runtime.process import StopFlag, run_logged, setup_worker
from streamd.runtime.redact import redact_url, register_secrets
from streamd.runtime.watchdog import Watchdog
from streamd.sources.nvdec import DecoderChoice
from streamd.sources.reader import (
    DecodeCounters,
    DecodedFrame,
    MediaClock,
    OpenOptions,
    Pacer,
    SourceStalled,
    auto_decode_threads,
    decode_frames,
    frame_step,
    open_source,
)
from streamd.sources.remote import PacketLink, RemoteDecoder, RemotePicture, RemoteTally
from streamd.types import DecodeReport, FrameRef, SourceState, StatusUpdate

log = logging.getLogger(__name__)


WATCHDOG_GRACE_S = 5.0  # on top of ffmpeg's own timeouts
FINISH_TIMEOUT_S = 30.0  # the last frames' results, after the stream is over
CLIPS_FINISH_S = 10.0  # the last clips written, after the stream is over (before `ended`)
CLIPS_STOP_S = 1.0  # the same when told to stop: within the process's stop budget
_TERMINAL = (SourceState.ENDED, SourceState.FAILED)


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """Everything a source worker needs; picklable for the spawn start method."""

    stream: str
    index: int
    open: OpenOptions
    loop: bool
    realtime: bool
    drop_policy: DropPolicy
    buffer: int
    reconnect: ReconnectConfig
    run_id: str
    inbox: str  # the detector process's descriptor inbox
    analysis: AnalysisSpec
    log_level: str = "INFO"
    max_fps: float | None = None
    restarts: int = 0  # how many times the supervisor restarted this stream's worker
    resumed_from: SourceState | None = None  # the state published for the dead worker
    resumed_since: float = 0.0  # wall time that state began
    # decode_in: detector: the PULL socket of this stream's decode thread in the detector
    # process (None: NVDEC, if used, decodes here).
    packets: str | None = None

    @property
    def is_file(self) -> bool:
        return source_kind(self.open.url) == "file"

    def stream_config(self) -> StreamConfig:
        return next(s for s in self.analysis.pipeline.streams if s.id == self.stream)


def source_spec(
    stream: StreamConfig,
    index: int,
    run_id: str,
    inbox: str,
    analysis: AnalysisSpec,
    log_level: str,
    packets: str | None = None,
) -> SourceSpec:
    """What a stream's process is started with (the supervisor's)."""
    return SourceSpec(
        stream=stream.id,
        index=index,
        open=OpenOptions(
            url=stream.url,
            transport=stream.transport or "tcp",
            width=stream.width,
            height=stream.height,
            fps=stream.fps,
            open_timeout_s=stream.open_timeout_s,
            stall_timeout_s=stream.stall_timeout_s,
            on_corrupt=stream.on_corrupt,
            threads=stream.decode_threads or auto_decode_threads(_camera_decoded(analysis)),
        ),
        loop=stream.loop,
        realtime=stream.realtime,
        drop_policy=stream.effective_drop_policy,
        buffer=stream.buffer,
        reconnect=stream.reconnect,
        max_fps=stream.max_fps,
        run_id=run_id,
        inbox=inbox,
        analysis=analysis,
        log_level=log_level,
        packets=packets,
    )


def _camera_decoded(analysis: AnalysisSpec) -> int:
    """Streams decoded in their camera's process, whose CPU decoders share the cores
    (decode_in: detector ones decode in the detector process)."""
    return sum(s.decode_in == "camera" for s in analysis.pipeline.streams)


@dataclass(frozen=True, slots=True)
class _Outcome:
    """Why one open-and-read session ended."""

    reason: str
    detail: str = ""
    streamed: bool = False  # at least one frame came through


class Sampler:
    """Keeps at most ``max_fps`` frames per second of media time (``max_fps``).

    Frames are kept on a grid of 1/max_fps; a small tolerance keeps a 30 fps
    source at exactly 10 with max_fps 10 despite timestamp jitter, and a
    source that paused restarts the grid instead of bursting to catch up.
    """

    def __init__(self, max_fps: float) -> None:
        self.interval = 1.0 / max_fps
        self._next: float | None = None

    def keep(self, t: float) -> bool:
        if self._next is not None and t < self._next - 0.25 * self.interval:
            return False
        due = t if self._next is None else self._next
        base = due if due >= t - self.interval else t  # far behind (a pause): restart the grid
        self._next = base + self.interval
        return True


class Backoff:
    """Capped exponential backoff with jitter: attempt n waits up to min(max, initial * 2^(n-1)).

    The jitter (a random 50-100% of that) keeps many cameras behind one
    failed switch from reconnecting in lockstep.
    """

    def __init__(self, initial_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self._rng = rng or random.Random()

    def delay(self, failures: int) -> float:
        base = min(self.max_s, self.initial_s * 2.0 ** min(max(failures - 1, 0), 30))
        return base * self._rng.uniform(0.5, 1.0)


def source_main(spec: SourceSpec) -> None:
    """Process entry point."""
    log_format = spec.analysis.pipeline.log.format
    register_secrets(spec.open.url)  # before anything of this process can log it
    stop = setup_worker(f"source {spec.stream}", spec.log_level, log_format, spec.stream)

    def body() -> int:
        worker = SourceWorker(spec, stop)
        worker.run()
        # 0 only for a stream that is over (ended/failed); anything else is restarted.
        return WorkerExit.OK if worker.finished else WorkerExit.STOPPED

    run_logged(body)


class SourceWorker:
    """The per-source state machine; see docs/architecture.md for the diagram."""

    def __init__(self, spec: SourceSpec, stop: StopFlag) -> None:
        self.spec = spec
        self.stop = stop
        self.counters = DecodeCounters()
        self.outbox = Outbox(spec.inbox)
        self.control = Outbox(spec.analysis.control)
        self.ring: FrameRing | None = None
        self.watchdog = Watchdog(WorkerExit.HUNG)
        self.backoff = Backoff(spec.reconnect.initial_s, spec.reconnect.max_s)
        self._generation = 0
        self._state: SourceState | None = spec.resumed_from
        self._state_since = time.monotonic() - max(0.0, time.time() - spec.resumed_since)
        self._attempt = 1
        self._reconnects = 0
        self._frames = 0
        self._dropped: dict[str, int] = {}  # decoded here but never announced, by cause
        self._metered = DecodeCounters()  # what the metrics have been told so far
        self._decoded_meter = metrics.FRAMES_DECODED.labels(spec.stream)
        self._errors_meter = metrics.DECODE_ERRORS.labels(spec.stream)
        self._sampler = None if spec.max_fps is None else Sampler(spec.max_fps)
        self._pacer = Pacer()
        self._media = MediaClock()
        self._terminal: StatusUpdate | None = None  # said once the last frames are analysed
        self._ring_prefix = f"{segment_prefix(spec.run_id)}{spec.index}_{os.getpid()}_"
        stream = spec.stream_config()
        # NVDEC or the CPU, chosen per session; a device failing mid-stream is said at once.
        # decode_in: detector: NVDEC's sessions run in the detector process (sources/remote.py).
        self.link = PacketLink(spec.packets) if spec.packets is not None else None
        self.tally = RemoteTally()
        self._remote: RemoteDecoder | None = None  # this session's, when decoded remotely
        self._remote_sessions = 0
        self._skip_to_key = False  # a unit was dropped: the rest of its GOP cannot decode
        remote = self._remote_decoder if self.link is not None else None
        self.decoders = DecoderChoice(spec.stream, stream.decode, on_fallback=self._fell_back,
                                      remote=remote)  # fmt: skip
        self.clips = start_clips(stream, spec.analysis.pipeline.journal.path)
        self.analysis = StreamAnalysis(stream, spec.analysis, self, self.clips)

    # What the analysis thread reads of this side (analysis.loop.SourceSide).
    def owns(self, ring: str) -> bool:
        return ring.startswith(self._ring_prefix)

    def decode_counts(self) -> tuple[int, int]:
        return self.counters.decoded, self.counters.decode_errors

    def drops(self) -> dict[str, int]:
        out = dict(self._dropped)
        sampled = self.tally.sampled()  # decode_in: detector samples there
        if sampled:
            out["sampled"] = out.get("sampled", 0) + sampled
        return out

    def on_decode_report(self, report: DecodeReport) -> None:
        self.tally.update(report)

    @property
    def finished(self) -> bool:
        return self._state in (SourceState.ENDED, SourceState.FAILED)

    def run(self) -> None:
        self.analysis.start()
        try:
            self._run()
            self._drain_ring()
            # `ended`/`failed` only once the stream's last events are out (and not if
            # we were told to stop meanwhile: then the daemon is going down anyway).
            settled = not self.stop.is_set() and self.analysis.finish(FINISH_TIMEOUT_S)
            if self.clips is not None and settled:  # its last clips are on disk by `ended`
                self.clips.shutdown(CLIPS_FINISH_S)
            if self._terminal is not None and settled:
                self._say(self._final_counts(self._terminal))
        finally:
            self.analysis.stop()
            if self.clips is not None:  # after the analysis: no alert asks for a clip now
                self.clips.shutdown(CLIPS_STOP_S)
            if self.ring is not None:
                self.ring.close()
            if self.link is not None:
                self.link.close()
            self.outbox.close()
            self.control.close()

    def _drain_ring(self, timeout_s: float = 30.0) -> None:
        # block policy promises every frame is analysed: keep the segment until
        # the reader has copied the last one (or we are told to stop).
        if self.ring is None or self.spec.drop_policy != "block":
            return
        ring = self.ring
        if not ring.wait_free(ring.slots, self.stop.is_set, timeout_s) and not self.stop.is_set():
            log.warning("reader did not consume the last frames within %.0fs", timeout_s)

    def _run(self) -> None:
        self._transition(SourceState.CONNECTING, "restart" if self.spec.restarts else "start")
        failures = 0
        while not self.stop.is_set():
            outcome = self._session()
            if self.stop.is_set():
                return
            if self.spec.is_file:
                if outcome.reason != "end_of_stream":
                    # A file that cannot be opened or read does not heal by retrying.
                    self._transition(SourceState.FAILED, outcome.reason, outcome.detail)
                    return
                if not self.spec.loop:
                    self._transition(SourceState.ENDED, "end_of_stream")
                    return
                self._pacer.reset()
                continue
            failures = 1 if outcome.streamed else failures + 1
            if not self._retry(outcome, failures):
                return

    def _retry(self, outcome: _Outcome, failures: int) -> bool:
        """Back off before the next attempt; False if the stream gives up or must stop."""
        limit = self.spec.reconnect.max_attempts
        if 0 <= limit < failures:
            detail = f"{outcome.reason}: {outcome.detail}" if outcome.detail else outcome.reason
            self._transition(
                SourceState.FAILED, "max_attempts", f"{detail} (after {failures} attempt(s))"
            )
            return False
        delay = self.backoff.delay(failures)
        self._attempt = failures + 1
        self._reconnects += 1
        metrics.RECONNECTS.labels(self.spec.stream).inc()
        self._transition(SourceState.RECONNECTING, outcome.reason, outcome.detail, delay)
        if self.stop.wait(delay):
            return False
        self._transition(SourceState.CONNECTING, "retry")
        return True

    def _session(self) -> _Outcome:
        opts = self.spec.open
        try:
            # PyAV gives the open and the stream probe the open timeout each.
            with self.watchdog.armed(2 * opts.open_timeout_s + WATCHDOG_GRACE_S, "open"):
                container = open_source(opts)
        except (av.FFmpegError, OSError) as e:
            return _Outcome("open_failed", redact_url(str(e)))
        streamed = False
        clips = self.clips
        if clips is not None:
            clips.begin_session(container.streams.video[0])
        decoder = self.decoders.open(container.streams.video[0])
        self._remote = decoder if isinstance(decoder, RemoteDecoder) else None
        self._skip_to_key = False
        try:
            self._pacer.expect(frame_step(container))  # the first steps' yardstick
            on_packet = None if clips is None else clips.on_packet
            frames = decode_frames(
                container, self.counters, opts.stall_timeout_s, on_packet, decoder
            )
            while not self.stop.is_set():
                with self.watchdog.armed(opts.stall_timeout_s + WATCHDOG_GRACE_S, "read"):
                    decoded = next(frames, None)
                self._sync_counters()
                if decoded is None:
                    return _Outcome("end_of_stream", "", streamed)
                if self._state is not SourceState.STREAMING:
                    self._transition(SourceState.STREAMING, "first_frame", self.decoders.describe())
                streamed = True
                if self.spec.realtime and self.stop.wait(self._pacer.delay(decoded.pts_s)):
                    break
                if not self._publish(decoded):
                    break
            return _Outcome("stopped", "", streamed)
        except SourceStalled as e:
            self._transition(SourceState.STALLED, "no_frames", str(e))
            return _Outcome("stalled", str(e), streamed)
        except av.FFmpegError as e:
            return _Outcome("read_error", redact_url(str(e)), streamed)
        finally:
            if clips is not None:
                clips.end_session()  # a clip ends at the gap
            decoder.close()  # NVDEC: pictures held for reordering are dropped with the session
            if self._remote is not None:
                self._end_remote(self._remote)
            container.close()

    def _remote_decoder(self, stream: av.VideoStream) -> RemoteDecoder:
        """This session's NVDEC decoder in the detector process: a ring name of its own."""
        self._remote_sessions += 1
        ring = f"{self._ring_prefix}nv{self._remote_sessions}"
        return RemoteDecoder(stream, self.spec.stream, ring, self.tally,
                             self.spec.open.stall_timeout_s,
                             self.decoders.device_failed)  # fmt: skip

    def _end_remote(self, decoder: RemoteDecoder) -> None:
        """Tell the detector the session is over: its held pictures flushed out (end of
        file) or dropped (reconnect, stall, stop), and its decoder closed."""
        assert self.link is not None
        end = decoder.header(0, self._frames, time.time(), dict(self._dropped),
                             end="flush" if decoder.ended else "close")  # fmt: skip
        deadline = time.monotonic() + 5.0  # a detector gone (shutdown) takes nothing

        def wait() -> bool:
            return not self.stop.is_set() and time.monotonic() < deadline

        if not self.link.send(end, b"", wait):
            log.warning("the end of decode session %s did not reach the detector", decoder.ring)

    def _forward(self, decoder: RemoteDecoder, picture: RemotePicture) -> bool:
        """One access unit to the detector's decode thread; False if told to stop."""
        assert self.link is not None
        if not self.analysis.alive:
            raise RuntimeError("the analysis thread died; restarting this camera's process")
        index = self._frames
        self._frames += 1
        policy = self.spec.drop_policy
        if self._skip_to_key and not picture.key:
            self._drop("queue_full")  # its references were dropped: it cannot decode
            return True
        self._skip_to_key = False
        if not self._room(policy):
            self._skip_to_key = policy != "block"
            return not self.stop.is_set()
        seq = decoder.sent + 1
        unit = decoder.header(seq, index, time.time(), dict(self._dropped), picture.pts,
                              pixels=self.analysis.wants_pixels(), key=picture.key)  # fmt: skip
        self.analysis.inflight.add(decoder.ring, seq, None)  # no pixels here: in the detector
        wait = (lambda: not self.stop.is_set()) if policy == "block" else None
        if not self.link.send(unit, picture.data, wait):
            self.analysis.inflight.pop(decoder.ring, seq)
            if self.stop.is_set():
                return False
            self._drop("queue_full")
            self._skip_to_key = True
            return True
        decoder.sent_one()
        if self.clips is not None:  # within a frame or two of its picture (B-frame reorder)
            self.clips.on_frame(index, picture.pts_s)
        return True

    def _final_counts(self, update: StatusUpdate) -> StatusUpdate:
        """decode_in: detector: the last session's pictures were counted there after the
        state changed; the terminal status carries them (its frames are all analysed)."""
        if self._remote is None:
            return update
        self._remote.sync(self.counters)
        self._sync_counters()
        return dataclasses.replace(update, counters=self._counters())

    def _fell_back(self, detail: str) -> None:
        """NVDEC failed mid-stream: the stream goes on on the CPU; subscribers are told."""
        if self._state is SourceState.STREAMING:
            self._transition(SourceState.STREAMING, "decoder_fallback", detail)

    def _ring_for(self, decoded: DecodedFrame) -> FrameRing:
        h, w = decoded.height, decoded.width
        if self.ring is None or self.ring.shape[:2] != (h, w):
            if self.ring is not None:
                log.info("resolution changed to %dx%d; new frame ring", w, h)
                self._drain_ring()  # block: the frames of the old size are analysed first
                self.ring.close()
            self._generation += 1
            name = ring_name(self.spec.run_id, self.spec.index, self._generation)
            # A latest writer laps around a slot the detector reads in place; block and
            # oldest writers wait for released slots instead.
            self.ring = FrameRing(name, self.spec.buffer, h, w, self.spec.drop_policy == "latest")
        return self.ring

    def _publish(self, decoded: DecodedFrame) -> bool:
        """Put one decoded frame in the ring and announce it; False if told to stop."""
        if self._remote is not None and isinstance(decoded.picture, RemotePicture):
            return self._forward(self._remote, decoded.picture)
        index = self._frames
        self._frames += 1
        capture_ts = time.time() - decoded.decode_ms / 1000.0
        media_ts = self._media.stamp(decoded.pts_s, capture_ts)
        if not self.analysis.alive:
            raise RuntimeError("the analysis thread died; restarting this camera's process")
        if self._sampler is not None and not self._sampler.keep(media_ts):
            self._drop("sampled")
            return True
        policy = self.spec.drop_policy
        if not self._room(policy):
            return not self.stop.is_set()
        ring = self._ring_for(decoded)
        if policy == "block" and not ring.wait_free(1, self.stop.is_set):
            return False
        if policy == "oldest" and ring.free_slots() < 1:
            self._drop("queue_full")  # the queued frames are kept; this newer one goes
            return True
        image = decoded.image()  # BGR only for frames that sampling kept
        slot, seq = ring.write(image)
        ref = FrameRef(
            stream=self.spec.stream,
            ring=ring.name,
            slots=ring.slots,
            height=ring.shape[0],
            width=ring.shape[1],
            slot=slot,
            seq=seq,
            capture_ts=capture_ts,
            media_ts=media_ts,
            decode_ms=decoded.decode_ms,
            ready_ts=time.time(),
            frame=index,
            decoded=self.counters.decoded,
            decode_errors=self.counters.decode_errors,
            source_dropped=dict(self._dropped),
        )
        # Kept for the analysis thread (snapshots, live view) before the detector can answer.
        self.analysis.inflight.add(ring.name, seq, image)
        if self.clips is not None:  # where an alert on this frame places its clip
            self.clips.on_frame(index, decoded.pts_s)
        if not self.outbox.send(ref):
            log.warning("descriptor channel full; frame %d not announced", seq)
            self.analysis.inflight.pop(ring.name, seq)
            ring.unwrite()
            self._drop("queue_full")
        return True

    def _room(self, policy: DropPolicy) -> bool:
        """Whether this frame may go out: the analysis thread has to keep up too."""
        inflight = self.analysis.inflight
        if not inflight.full():
            return True
        if policy == "block":
            return inflight.wait_room(self.stop.is_set)
        self._drop("queue_full")  # the analysis is behind: this frame is not announced
        return False

    def _drop(self, cause: str) -> None:
        self._dropped[cause] = self._dropped.get(cause, 0) + 1
        metrics.FRAMES_DROPPED.labels(self.spec.stream, cause).inc()

    def _sync_counters(self) -> None:
        """Mirror the decoder's counters into the metrics (by difference; per frame, so cheap)."""
        c, seen = self.counters, self._metered
        if c.decoded > seen.decoded:
            self._decoded_meter.inc(c.decoded - seen.decoded)
            seen.decoded = c.decoded
        if c.decode_errors > seen.decode_errors:
            self._errors_meter.inc(c.decode_errors - seen.decode_errors)
            seen.decode_errors = c.decode_errors

    def _transition(
        self, state: SourceState, reason: str, detail: str = "", retry_in_s: float | None = None
    ) -> None:
        now = time.monotonic()
        update = StatusUpdate(
            stream=self.spec.stream,
            state=state,
            reason=reason,
            ts=time.time(),
            prev_state=self._state,
            in_prev_state_s=round(now - self._state_since, 3) if self._state else 0.0,
            attempt=self._attempt,
            detail=detail,
            retry_in_s=None if retry_in_s is None else round(retry_in_s, 3),
            counters=self._counters(),
            generation=self.spec.analysis.generation,
        )
        log_fn = log.warning if state in (SourceState.FAILED, SourceState.STALLED) else log.info
        log_fn("%s -> %s (%s) %s", self._state, state, reason, detail)
        self._state, self._state_since = state, now
        self.analysis.on_state(state)
        if state in _TERMINAL:
            # Said after the frames before it are analysed and published: a subscriber
            # that stops at `ended` has every det event of the stream.
            self._terminal = update
        else:
            self._say(update)

    def _say(self, update: StatusUpdate) -> None:
        if not self.control.send(update):
            log.error("internal channel full: status %s not delivered", update.state)

    def _counters(self) -> dict[str, int]:
        return {
            "decoded": self.counters.decoded,
            "decode_errors": self.counters.decode_errors,
            "reconnects": self._reconnects,
            "restarts": self.spec.restarts,
            "decode_fallbacks": self.decoders.fallbacks,
        }
