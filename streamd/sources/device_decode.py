"""Decode threads of the detector process (``decode_in: detector``): NVDEC pictures that
stay in device memory until the detector letterboxes them (``detect/nv12.py``).

One :class:`DecodeLane` per such stream binds that stream's packet socket
(``ipc://<run dir>/packets-<index>``), takes the camera's access units
(:class:`~streamd.types.EncodedUnit`) and decodes them with NVDEC into device
memory. Pictures come out in display order; each is stamped as the CPU path
stamps its frames (the capture time of the packet whose decoding gave it out, the
next frame index, its own pts on the stream's media clock), sampled by
``max_fps``, and announced on the detector's own inbox as a
:class:`~streamd.types.FrameRef` with ``slot`` -1, so the batcher, the detector
and the scatter treat it as they treat a ring frame; the picture itself waits
in :class:`DeviceFrames` until its batch is done. A new session (``ring``)
closes the last one's decoder, pictures it held included. A decoder that fails
is closed and the camera told (:class:`~streamd.types.DecodeReport`); the thread
catches everything, so one stream's failure stays that stream's.
"""

from __future__ import annotations

import heapq
import logging
import pickle
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import zmq

from streamd import metrics
from streamd.config import StreamConfig
from streamd.runtime.channel import Outbox
from streamd.sources.nvdec import (
    NO_PTS,
    NvBackend,
    NvdecBitstreamError,
    NvDeviceFrame,
    NvDeviceSession,
    load_backend,
    nv_codec,
)
from streamd.sources.reader import MediaClock
from streamd.sources.remote import PACKET_HWM
from streamd.sources.worker import Sampler
from streamd.types import DecodeReport, Dropped, EncodedUnit, FrameRef, StageDrops

if TYPE_CHECKING:  # torch: in the detector process only (the supervisor imports this module)
    from streamd.detect.nv12 import DeviceFrame

log = logging.getLogger(__name__)

REPORT_EVERY_S = 0.5  # the camera's counters and stall check follow at this pace
_HELD = 64  # units whose picture has not come out yet (NVDEC holds at most a few)


class DeviceFrames:
    """Pictures decoded in this process, held until the detector is done with them
    (what a ring slot is for a camera's frame); bounded per stream by its ``buffer``."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frames: dict[tuple[str, int], tuple[str, DeviceFrame]] = {}
        self._held: dict[str, int] = {}
        self._pixels: set[tuple[str, int]] = set()  # their camera wants the pixels back

    def put(self, ref: FrameRef, frame: DeviceFrame, pixels: bool = False) -> None:
        with self._cond:
            self._frames[(ref.ring, ref.seq)] = (ref.stream, frame)
            self._held[ref.stream] = self._held.get(ref.stream, 0) + 1
            if pixels:
                self._pixels.add((ref.ring, ref.seq))

    def host_copy(self, ref: FrameRef) -> npt.NDArray[np.uint8] | None:
        """The picture as host BGR if its camera asked for it (live view, snapshots)."""
        with self._cond:
            entry = self._frames.get((ref.ring, ref.seq))
            wanted = (ref.ring, ref.seq) in self._pixels
        return entry[1].to_bgr() if entry is not None and wanted else None

    def claim(self, ref: FrameRef) -> DeviceFrame | None:
        with self._cond:
            entry = self._frames.get((ref.ring, ref.seq))
        return None if entry is None else entry[1]

    def release(self, ref: FrameRef) -> None:
        with self._cond:
            entry = self._frames.pop((ref.ring, ref.seq), None)
            self._pixels.discard((ref.ring, ref.seq))
            if entry is not None:
                self._held[entry[0]] -= 1
                self._cond.notify_all()

    def held(self, stream: str) -> int:
        with self._cond:
            return self._held.get(stream, 0)

    def wait_room(self, stream: str, limit: int, stop: threading.Event) -> bool:
        """Wait until ``stream`` holds fewer than ``limit`` pictures; False if stopped."""
        with self._cond:
            while self._held.get(stream, 0) >= limit:
                if stop.is_set():
                    return False
                self._cond.wait(0.1)
        return True


class DecodeLane:
    """One stream's decode thread in the detector process."""

    def __init__(
        self,
        stream: StreamConfig,
        endpoint: str,
        inbox: str,
        store: DeviceFrames,
        loader: Callable[[], NvBackend] = load_backend,
        gpu_id: int = 0,
    ) -> None:
        self.stream = stream.id
        self.policy = stream.effective_drop_policy
        self.buffer = stream.buffer
        self.endpoint = endpoint
        self._inbox = inbox
        self._store = store
        self._loader = loader
        self._gpu_id = gpu_id
        self._backend: NvBackend | None = None
        self._stop = threading.Event()
        self._clock = MediaClock()
        self._sampler = None if stream.max_fps is None else Sampler(stream.max_fps)
        # This session's state.
        self._ring = ""
        self._keyed = False  # a keyframe came this session: units can be decoded
        self._base = self._last_frame = 0
        # The camera's frame indices of the units in the decoder, smallest first: each
        # picture (display order) takes the smallest, so the numbering skips exactly the
        # units the camera dropped (a count of pictures drifted after each drop, and event
        # clips are found by the camera's index) and stays in display order.
        self._pending: list[int] = []
        self._session: NvDeviceSession | None = None
        self._failed = ""
        self._time_base = Fraction(1, 90_000)
        self._decoded = self._errors = 0
        self._reported = (-1, -1, -1)
        self._reported_at = 0.0
        self._session_sampled = 0
        # Across the sessions of one camera process, in the source_dropped totals every
        # picture carries (its own counts start again with the process).
        self._camera = ""
        self._sampled = self._full = 0
        self._thread = threading.Thread(target=self._run, name=f"decode {stream.id}", daemon=True)
        self._out: Outbox | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self, wait: bool = True) -> None:
        self._stop.set()
        if wait:
            self._thread.join(5.0)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, PACKET_HWM)
        self._out = Outbox(self._inbox, linger_ms=0)  # nothing is waited for at a stop
        try:
            sock.bind(self.endpoint)
            while not self._stop.is_set():
                if sock.poll(100):
                    head, data = sock.recv_multipart()
                    self._one(head, data)
                self._report()
        except Exception:  # the thread must not die silently: the stream's camera stalls
            log.exception("the decode thread of %s failed", self.stream)
            raise
        finally:
            self._close_session()
            sock.close()
            self._out.close()
            ctx.term()

    def _one(self, head: bytes, data: bytes) -> None:
        """One unit; whatever goes wrong with it (not only the decoder's own errors) hands
        the stream to its camera's CPU rather than ending this thread, which would leave
        the camera reconnecting to a socket nobody reads."""
        try:
            self._take(pickle.loads(head), data)  # our own processes only (0700 dir)
        except Exception as e:
            log.exception("the decode thread of %s failed on a unit", self.stream)
            self._fail(f"the decode thread failed: {e!r}")

    def _take(self, unit: EncodedUnit, data: bytes) -> None:
        if unit.ring != self._ring:
            self._end_session()  # a camera that reconnected: the old decoder goes
            self._begin_session(unit)
        if unit.end:
            if unit.end == "flush" and not self._failed:
                self._decode(unit, b"", flush=True)
            self._end_session()
        elif self._failed:
            return  # the camera was told: it decodes on its CPU now
        elif self._keyed or unit.key:
            self._keyed = True
            self._decode(unit, data, flush=False)
        else:  # the session's first units never came (lost on the way): no references
            self._errors += 1

    def _begin_session(self, unit: EncodedUnit) -> None:
        self._ring, self._failed = unit.ring, ""
        self._keyed = False
        self._session_sampled = 0
        camera = unit.ring.rsplit("nv", 1)[0]  # the ring prefix: stream index, pid
        if camera != self._camera:
            self._camera, self._sampled, self._full = camera, 0, 0
        self._decoded = self._errors = 0
        self._reported = (-1, -1, -1)
        self._base = unit.frame  # frame indices go on from the camera's
        self._pending.clear()
        self._time_base = Fraction(*unit.time_base)
        if unit.end:
            return  # a session that ended before its first unit came
        try:
            if self._backend is None:
                self._backend = self._loader()
            self._session = self._backend.open_device(nv_codec(unit.codec), self._gpu_id,
                                                      unit.low_latency)  # fmt: skip
        except Exception as e:  # NvdecUnavailable, a driver error: the camera falls back
            self._fail(f"the decoder did not open in the detector process: {e}")

    def _decode(self, unit: EncodedUnit, data: bytes, flush: bool) -> None:
        session = self._session
        if session is None:
            return
        if not flush:
            heapq.heappush(self._pending, unit.frame)
            if len(self._pending) > _HELD:  # a unit that never gave a picture
                heapq.heappop(self._pending)
        t0 = time.perf_counter()
        try:
            frames = session.flush() if flush else session.decode(data, unit.pts)
        except NvdecBitstreamError as e:
            log.debug("skipping a packet NVDEC refused: %s", e)
            self._errors += 1
            if unit.frame in self._pending:  # it gives no picture: its index is skipped
                self._pending.remove(unit.frame)
                heapq.heapify(self._pending)
            return
        except Exception as e:  # NvdecDeviceError, or anything the driver raises
            self._fail(str(e))
            return
        decode_ms = (time.perf_counter() - t0) * 1000.0
        for frame in frames:
            self._picture(frame, unit, decode_ms)
            decode_ms = 0.0

    def _picture(self, frame: NvDeviceFrame, unit: EncodedUnit, decode_ms: float) -> None:
        """``unit``: the one whose decoding gave the picture out (or the session's end)."""
        self._decoded += 1
        from streamd.detect.nv12 import DeviceFrame  # torch is loaded here already

        self._last_frame = heapq.heappop(self._pending) if self._pending else self._last_frame + 1

        pts_s = None if frame.pts == NO_PTS else float(frame.pts * self._time_base)
        media_ts = self._clock.stamp(pts_s, unit.capture_ts)
        picture = DeviceFrame(frame.tensor())
        h, w, _ = picture.shape
        ref = FrameRef(
            stream=self.stream, ring=self._ring, slots=0, height=h, width=w, slot=-1,
            seq=self._decoded, capture_ts=unit.capture_ts, media_ts=media_ts,
            decode_ms=decode_ms, ready_ts=time.time(), frame=self._last_frame,
            decoded=self._decoded, decode_errors=self._errors,
            source_dropped=dict(unit.source_dropped),
        )  # fmt: skip
        if self._sampler is not None and not self._sampler.keep(media_ts):
            self._sampled += 1
            self._session_sampled += 1
            self._say(Dropped(self._totals(ref), "sampled", StageDrops()))
            return
        if self.policy == "block":
            if not self._store.wait_room(self.stream, self.buffer, self._stop):
                return
        elif self.policy == "oldest" and self._store.held(self.stream) >= self.buffer:
            self._full += 1
            self._say(Dropped(self._totals(ref), "queue_full", StageDrops()))
            return
        ref = self._totals(ref)
        self._store.put(ref, picture, unit.pixels)
        if not self._say(ref):
            self._store.release(ref)

    def _totals(self, ref: FrameRef) -> FrameRef:
        """The drops decided here added to the camera's own."""
        dropped = dict(ref.source_dropped)
        if self._sampled:
            dropped["sampled"] = dropped.get("sampled", 0) + self._sampled
        if self._full:
            dropped["queue_full"] = dropped.get("queue_full", 0) + self._full
        return FrameRef(ref.stream, ref.ring, ref.slots, ref.height, ref.width, ref.slot,
                        ref.seq, ref.capture_ts, ref.media_ts, ref.decode_ms, ref.ready_ts,
                        ref.frame, ref.decoded, ref.decode_errors, dropped)  # fmt: skip

    def _fail(self, reason: str) -> None:
        log.warning("stream %s: NVDEC in the detector process failed (%s); the camera decodes "
                    "on its CPU", self.stream, reason)  # fmt: skip
        self._close_session()
        self._failed = reason
        self._report(force=True)

    def _end_session(self) -> None:
        if not self._ring:
            return
        self._close_session()
        self._report(force=True, final=True)

    def _close_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            try:
                session.close()  # pictures it held for reordering go with it
            except Exception as e:  # a dead device may fail to release
                log.warning("closing the NVDEC session of %s failed: %s", self.stream, e)

    def _report(self, force: bool = False, final: bool = False) -> None:
        figures = (self._decoded, self._errors, self._session_sampled)
        now = time.monotonic()
        quiet = figures == self._reported or now - self._reported_at < REPORT_EVERY_S
        if not self._ring or (quiet and not force):
            return
        self._reported, self._reported_at = figures, now
        self._say(DecodeReport(self.stream, self._ring, self._decoded, self._errors,
                               self._session_sampled, final, self._failed))  # fmt: skip

    def _say(self, msg: FrameRef | Dropped | DecodeReport) -> bool:
        assert self._out is not None
        if not self._out.send(msg):
            log.warning("the detector's inbox is full: %s of %s lost", type(msg).__name__,
                        self.stream)  # fmt: skip
            if isinstance(msg, FrameRef):  # a picture that will not be analysed
                metrics.FRAMES_DROPPED.labels(self.stream, "inbox_full").inc()
            return False
        return True
