"""A camera whose NVDEC decoding runs in the detector process (``decode_in: detector``).

The camera keeps what it owns: PyAV opens and demuxes, the state machine
(reconnect, stall, ended), pacing, the in-flight gate and the drop policy. Its
packets, turned into Annex B here, go to the detector process over a ZeroMQ
PUSH socket (a small header, then the bytes as their own message part); a
decode thread there decodes them into device memory (``sources/device_decode.py``).
What the detector tells back (:class:`~streamd.types.DecodeReport`, on the
camera's results channel) keeps the camera's figures true: pictures decoded,
packets refused, a session without pictures for ``stall_timeout_s`` is
``stalled``, and a decoder that failed there puts the stream on this process's
CPU from the next keyframe (counted as every NVDEC fallback is).
"""

from __future__ import annotations

import logging
import pickle
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

import av
import av.bitstream
import numpy as np
import numpy.typing as npt
import zmq

from streamd.sources.reader import CpuFromKeyframe, DecodeCounters, Picture, SourceStalled
from streamd.types import DecodeReport, EncodedUnit

log = logging.getLogger(__name__)

NO_PTS = -(2**63)
PACKET_HWM = 256  # access units queued towards the detector (~4 MB of 1080p H.264)


class PacketLink:
    """The camera's PUSH socket to its decode thread in the detector process."""

    def __init__(self, endpoint: str, hwm: int = PACKET_HWM) -> None:
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PUSH)
        self._sock.setsockopt(zmq.LINGER, 1000)
        self._sock.setsockopt(zmq.SNDHWM, hwm)
        self._sock.connect(endpoint)

    def send(self, unit: EncodedUnit, data: bytes, wait: Callable[[], bool] | None = None) -> bool:
        """Queue one unit. Without ``wait`` never blocks (False: the queue is full); with
        it, waits for room while ``wait()`` says to go on (False: told to stop)."""
        parts = [pickle.dumps(unit, protocol=pickle.HIGHEST_PROTOCOL), data]
        while True:
            try:
                self._sock.send_multipart(parts, zmq.NOBLOCK, copy=False)
                return True
            except zmq.Again:
                if wait is None or not wait():
                    return False
                self._sock.poll(50, zmq.POLLOUT)

    def close(self) -> None:
        self._sock.close()
        self._ctx.term()


class RemoteTally:
    """The detector's latest report on the current decode session, and what earlier
    sessions sampled; written by the analysis thread, read by the decoding thread.
    (Sessions are decoded one after another and reported in order.)"""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: DecodeReport | None = None
        self._sampled_before = 0  # by the sessions before the last one

    def update(self, report: DecodeReport) -> None:
        with self._lock:
            last = self._last
            if last is not None and last.ring != report.ring:
                self._sampled_before += last.sampled
            self._last = report

    def get(self, ring: str) -> DecodeReport | None:
        with self._lock:
            last = self._last
        return last if last is not None and last.ring == ring else None

    def sampled(self) -> int:
        """Pictures ``max_fps`` left out in the detector, over every session."""
        with self._lock:
            return self._sampled_before + (self._last.sampled if self._last else 0)


@dataclass(frozen=True, slots=True)
class RemotePicture:
    """An access unit on its way to the detector: the camera's stand-in for the picture it
    becomes there (paced, gated and announced like one; never decoded here)."""

    data: bytes
    pts: int
    key: bool
    width: int
    height: int
    time: float | None  # when it is due (its dts: decode order, so pacing runs evenly)
    pts_s: float | None  # its picture's own time (event clips place alerts by it)
    counted = False  # not a decoded picture: the detector's reports count those

    def to_bgr(self) -> npt.NDArray[np.uint8]:
        raise RuntimeError("a remote picture has no pixels in the camera's process")


class RemoteDecoder:
    """A :class:`reader.FrameDecoder` whose pictures are decoded in the detector process.

    One per session of the source; its ``ring`` (a name under the camera's ring
    prefix, so results for it are the camera's own) names the session there.
    """

    name = "nvdec"

    def __init__(
        self,
        stream: av.VideoStream,
        stream_id: str,
        ring: str,
        tally: RemoteTally,
        stall_timeout_s: float,
        on_device_error: Callable[[str], None] | None = None,
    ) -> None:
        ctx = stream.codec_context
        self.stream = stream_id
        self.ring = ring
        self.codec = ctx.name
        self.low_latency = not ctx.has_b_frames
        self._bsf = av.bitstream.BitStreamFilterContext(f"{ctx.name}_mp4toannexb", stream)
        self._time_base = stream.time_base or Fraction(1, 90_000)
        self._size = (ctx.width, ctx.height)
        self._tally = tally
        self._stall_s = stall_timeout_s
        self._on_device_error = on_device_error
        self._seen = (0, 0)  # the tally's (decoded, errors) already added to the counters
        self._progress_at: float | None = None  # when the detector last decoded a picture
        self._cpu: CpuFromKeyframe | None = None
        self.sent = 0  # units handed to the detector this session (their in-flight keys)
        self.ended = False  # the demuxer's end-of-file packet came: the held pictures go out

    @property
    def on_cpu(self) -> bool:
        return self._cpu is not None

    def decode(self, packet: av.Packet[Any], counters: DecodeCounters) -> list[Picture]:
        self._follow(counters)
        if self._cpu is not None:
            return self._cpu.decode(packet, counters)
        counters.decode_errors += packet.is_corrupt  # as the other decoders count them
        if packet.size == 0:
            self.ended = True  # the worker sends the end after the last unit
            return []
        w, h = self._size
        out: list[Picture] = []
        tb = self._time_base
        key = bool(packet.is_keyframe)  # read first: the filter takes the packet's data
        for unit in self._bsf.filter(packet):
            pts = NO_PTS if unit.pts is None else int(unit.pts)
            t = None if unit.pts is None else float(unit.pts * tb)
            due = t if unit.dts is None else float(unit.dts * tb)
            out.append(RemotePicture(bytes(unit), pts, key, w, h, due, t))
        return out

    def header(
        self,
        seq: int,
        frame: int,
        capture_ts: float,
        dropped: dict[str, int],
        pts: int = NO_PTS,
        end: Literal["", "flush", "close"] = "",
        pixels: bool = False,
        key: bool = False,
    ) -> EncodedUnit:
        """The header of the unit ``seq`` of this session (or of its end); ``pixels``:
        its picture is to come back to the host (live view, snapshots)."""
        tb = self._time_base
        return EncodedUnit(self.stream, self.ring, self.codec, self.low_latency,
                           (tb.numerator, tb.denominator), pts, seq, frame, capture_ts,
                           dropped, end, pixels, key)  # fmt: skip

    def sent_one(self) -> None:
        self.sent += 1
        if self._progress_at is None:
            self._progress_at = time.monotonic()

    def _follow(self, counters: DecodeCounters) -> None:
        """What the detector said: the counters, a failure, or no pictures for too long."""
        report = self.sync(counters)
        if report is not None and report.failed and self._cpu is None:
            self._fall_back(report.failed)
            return
        since = self._progress_at
        if self._cpu is None and since is not None and time.monotonic() - since > self._stall_s:
            raise SourceStalled(f"no picture decoded (in the detector) for {self._stall_s:g}s")

    def sync(self, counters: DecodeCounters) -> DecodeReport | None:
        """Add what the detector decoded (and refused) since the last call to ``counters``."""
        report = self._tally.get(self.ring)
        if report is not None:
            decoded, errors = report.decoded, report.decode_errors
            if decoded > self._seen[0]:
                self._progress_at = time.monotonic()
            counters.decoded += decoded - self._seen[0]
            counters.decode_errors += errors - self._seen[1]
            self._seen = (decoded, errors)
        return report

    def _fall_back(self, reason: str) -> None:
        log.warning("NVDEC in the detector failed (%s); this stream decodes on the CPU from "
                    "the next keyframe", reason)  # fmt: skip
        self._cpu = CpuFromKeyframe()
        if self._on_device_error is not None:
            self._on_device_error(reason)

    def close(self) -> None:
        """Nothing held here; the worker tells the detector the session ended."""
