"""Demux and decode one video source with PyAV, counting (not dying on) bad packets."""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import quote, unquote

import av
import av.container
import av.error
import cv2
import numpy as np
import numpy.typing as npt

from streamd.config import source_kind

log = logging.getLogger(__name__)

MAX_PROBE_S = 1.0  # live sources: media probed before the first frame is returned
MAX_DEMUX_ERRORS_IN_ROW = 100  # past this the input is garbage, not a damaged patch


class SourceStalled(Exception):
    """No decodable frame for ``stall_timeout_s`` (no data, or only undecodable data)."""


@dataclass(frozen=True, slots=True)
class OpenOptions:
    """How to open one source; built from a stream's config."""

    url: str
    transport: Literal["tcp", "udp"] = "tcp"
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    open_timeout_s: float = 10.0
    stall_timeout_s: float = 10.0
    on_corrupt: Literal["drop", "conceal"] = "drop"
    threads: int = 0  # CPU decoder threads; 0: ffmpeg's default (one per core)


class HostPicture(Protocol):
    """A picture another decoder made (NVDEC: ``sources/nvdec.py``), in host memory."""

    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def time(self) -> float | None: ...
    def to_bgr(self) -> npt.NDArray[np.uint8]: ...


Picture = av.VideoFrame | HostPicture


class FrameDecoder(Protocol):
    """Turns one demuxed packet into pictures, counting a bad one in ``counters``.

    PyAV's own decoder (:class:`CpuDecoder`) or NVDEC (``sources/nvdec.py``); the
    size-0 packet PyAV's demuxer ends with flushes it.
    """

    name: str

    def decode(self, packet: av.Packet[Any], counters: DecodeCounters) -> list[Picture]: ...
    def close(self) -> None: ...


@dataclass(slots=True)
class DecodedFrame:
    """A decoded picture; converted to BGR only if asked for (sampling may drop it first)."""

    picture: Picture
    decode_ms: float
    pts_s: float | None
    _image: npt.NDArray[np.uint8] | None = None

    @property
    def height(self) -> int:
        return int(self.picture.height)

    @property
    def width(self) -> int:
        return int(self.picture.width)

    def image(self) -> npt.NDArray[np.uint8]:
        """The picture as BGR, HxWx3 (converted once; the time counts as decoding)."""
        if self._image is None:
            t0 = time.perf_counter()
            pic = self.picture
            self._image = to_bgr(pic) if isinstance(pic, av.VideoFrame) else pic.to_bgr()
            self.decode_ms += (time.perf_counter() - t0) * 1000.0
        return self._image


def to_bgr(picture: av.VideoFrame) -> npt.NDArray[np.uint8]:
    """BGR pixels of a decoded picture.

    Planar 4:2:0 (what cameras and files send) goes through OpenCV, which is about
    twice as fast as swscale here and releases the GIL, so the camera's analysis
    thread runs meanwhile; anything else through PyAV/swscale.
    """
    if picture.format.name == "yuv420p" and picture.width % 2 == 0 and picture.height % 2 == 0:
        planes = picture.to_ndarray()  # (h * 3/2, w): Y, then U and V, no padding
        return np.asarray(cv2.cvtColor(planes, cv2.COLOR_YUV2BGR_I420), dtype=np.uint8)
    return np.asarray(picture.to_ndarray(format="bgr24"), dtype=np.uint8)


@dataclass(slots=True)
class DecodeCounters:
    decoded: int = 0
    decode_errors: int = 0


def escape_credentials(url: str) -> str:
    """Percent-encode the user and password of a network URL for ffmpeg.

    Users write passwords as they are (``rtsp://admin:p@ss/w:rd@cam/s``);
    ffmpeg splits such a URL at the wrong ``@`` or ``/``. The userinfo is
    everything before the *last* ``@`` ahead of any query string, and the user
    ends at its first ``:``. Already-encoded values stay as they are.
    """
    scheme, sep, rest = url.partition("://")
    query = rest.find("?")
    at = rest.rfind("@", 0, query if query >= 0 else len(rest))
    if not sep or at < 0:
        return url
    user, colon, password = rest[:at].partition(":")
    userinfo = quote(unquote(user), safe="") + (
        colon + quote(unquote(password), safe="") if colon else ""
    )
    return f"{scheme}://{userinfo}@{rest[at + 1 :]}"


def ffmpeg_input(opts: OpenOptions) -> tuple[str, str | None, dict[str, str]]:
    """The (target, format, options) ffmpeg is opened with for ``opts``."""
    kind = source_kind(opts.url)
    options: dict[str, str] = {}
    fmt: str | None = None
    target = opts.url
    if kind in ("rtsp", "http"):
        target = escape_credentials(opts.url)
        # Probing a live stream waits for media (5 s of it by default: longer than a short
        # open timeout at a low frame rate). An open cut off mid-probe can leave the
        # connection unusable (seen with rtsps: EIO on the next read), so probe briefly.
        probe_s = min(MAX_PROBE_S, opts.open_timeout_s / 3.0)
        options["analyzeduration"] = str(int(probe_s * 1_000_000))
    if kind == "rtsp":
        options["rtsp_transport"] = opts.transport
    elif kind == "webcam":
        fmt = "v4l2"
        target = f"/dev/video{opts.url}" if opts.url.isdigit() else opts.url
        if opts.width is not None and opts.height is not None:
            options["video_size"] = f"{opts.width}x{opts.height}"
        if opts.fps is not None:
            options["framerate"] = f"{opts.fps:g}"
    return target, fmt, options


def auto_decode_threads(streams: int, cores: int | None = None) -> int:
    """Decoder threads per stream when the config says 0: the cores shared among the
    streams, at least 1 and at most 4 (each adds a picture of delay and memory)."""
    cores = cores or usable_cores()
    return max(1, min(4, cores // max(1, streams)))


def usable_cores(cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """The cores this process may use: its affinity, bounded by a cgroup v2 CPU quota
    (a container's CPU limit, which the affinity does not show)."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = Path(cpu_max).read_text().split()[:2]
    except (OSError, ValueError):
        return cores
    if quota == "max":
        return cores
    return max(1, min(cores, int(quota) // max(1, int(period))))


def open_source(opts: OpenOptions) -> av.container.InputContainer:
    """Open a source with bounded open and read timeouts (ffmpeg's RTSP default is none).

    The read timeout is the stall timeout: a read that waits longer than that
    for data is aborted by PyAV's interrupt callback (``av.ExitError``).
    """
    target, fmt, options = ffmpeg_input(opts)
    container = av.open(
        target, format=fmt, options=options, timeout=(opts.open_timeout_s, opts.stall_timeout_s)
    )
    if not container.streams.video:
        container.close()
        raise av.error.InvalidDataError(22, "no video stream in source")  # EINVAL
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    if opts.threads:
        stream.thread_count = opts.threads
    if opts.on_corrupt == "drop":
        # Make the decoder report damaged pictures instead of concealing them silently.
        stream.codec_context.options = {"err_detect": "explode"}
    return container


def decode_frames(
    container: av.container.InputContainer,
    counters: DecodeCounters,
    stall_timeout_s: float,
    on_packet: Callable[[av.Packet[Any]], None] | None = None,
    decoder: FrameDecoder | None = None,
) -> Iterator[DecodedFrame]:
    """Yield decoded frames until the end of the input.

    Corrupt packets and undecodable data are skipped and counted in
    ``counters.decode_errors``. Raises :class:`SourceStalled` when no frame
    could be decoded for ``stall_timeout_s`` (a read that got no data at all
    for that long is aborted by the container's read timeout). ``on_packet`` sees
    every demuxed packet before it is decoded (the event clips' pre-roll);
    ``decoder`` decodes them (PyAV's own by default).
    """
    stream = container.streams.video[0]
    decoder = decoder or CpuDecoder()
    last_frame = time.monotonic()
    demux_errors_in_row = 0
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.ExitError:  # PyAV's interrupt callback: the read timed out
            raise SourceStalled(f"no data for {stall_timeout_s:g}s") from None
        except av.error.InvalidDataError as e:
            # A demuxer error ends PyAV's generator; a new one resumes after the bad data.
            counters.decode_errors += 1
            demux_errors_in_row += 1
            if demux_errors_in_row > MAX_DEMUX_ERRORS_IN_ROW:
                raise
            log.debug("skipping undemuxable data: %s", e)
            packets = container.demux(stream)
            continue
        demux_errors_in_row = 0
        if on_packet is not None:
            on_packet(packet)
        t0 = time.perf_counter()
        frames = decoder.decode(packet, counters)
        for frame in frames:
            # A unit on its way to the detector process (decode_in: detector) is counted
            # there, when it becomes a picture.
            counters.decoded += getattr(frame, "counted", True)
            yield DecodedFrame(frame, (time.perf_counter() - t0) * 1000.0, frame.time)
            t0 = time.perf_counter()
            last_frame = time.monotonic()
        if not frames and time.monotonic() - last_frame > stall_timeout_s:
            raise SourceStalled(f"no decodable frame for {stall_timeout_s:g}s")


class CpuDecoder:
    """PyAV's (ffmpeg's) software decoder, the stream's own codec context."""

    name = "cpu"

    def decode(self, packet: av.Packet[Any], counters: DecodeCounters) -> list[Picture]:
        return list(_decode_packet(packet, counters))

    def close(self) -> None:
        """Nothing to release: the codec context closes with its container."""


class CpuFromKeyframe:
    """The CPU decoder a stream falls back to after NVDEC failed mid-session: it starts at
    the next keyframe, since the references of the packets before it were decoded by the
    NVDEC session that is gone (they are not corrupt packets, so not counted as such)."""

    def __init__(self) -> None:
        self._cpu = CpuDecoder()
        self._waiting_key = True

    def decode(self, packet: av.Packet[Any], counters: DecodeCounters) -> list[Picture]:
        if self._waiting_key and packet.size and not packet.is_keyframe:
            return []
        self._waiting_key = False
        return self._cpu.decode(packet, counters)


def _decode_packet(packet: av.Packet[Any], counters: DecodeCounters) -> list[av.VideoFrame]:
    bad = packet.is_corrupt  # e.g. the last packet of a truncated file
    try:
        frames = packet.decode()
    except av.FFmpegError as e:  # a corrupt packet is skipped, not fatal
        log.debug("skipping undecodable packet: %s", e)
        frames, bad = [], True
    counters.decode_errors += bad
    return [f for f in frames if isinstance(f, av.VideoFrame)]


def frame_step(container: av.container.InputContainer) -> float | None:
    """The video stream's nominal seconds per frame (1 / its average rate), None if unknown."""
    rate = container.streams.video[0].average_rate
    return float(1 / rate) if rate else None


class Pacer:
    """Sleeps so that a file plays at its own frame rate (``realtime: true``).

    A frame is due at the wall time of an origin frame plus its pts distance from
    it. When pts goes back or leaps ahead (a spliced or looped MPEG-TS, a
    resolution change that restarts the clock), that distance means nothing: the
    origin moves so the frame is due one usual step after the one before, and
    the stream goes on at its rate instead of racing to catch up or stalling.

    The usual step is learnt from the stream: the median of its recent forward
    steps, seeded with its nominal rate when the container says one. Only a step
    back, or a leap of more than ``JUMP_STEPS`` usual steps and ``MIN_JUMP_S``,
    is a jump, so a slow stream (0.5 fps: a step of 2 s) plays at its own rate
    and a short pause in a fast one is kept.
    """

    JUMP_STEPS = 10
    MIN_JUMP_S = 1.0
    HISTORY = 15  # steps the median is taken over: a few odd ones do not move it

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, nominal_dt: float | None = None
    ) -> None:
        self._clock = clock
        self._origin: tuple[float, float] | None = None  # (wall, pts)
        self._last_pts = 0.0
        self._steps: deque[float] = deque(maxlen=self.HISTORY)
        self.expect(nominal_dt)

    def expect(self, nominal_dt: float | None) -> None:
        """The container's nominal frame step (None: unknown), until the stream shows its own."""
        if nominal_dt is not None and nominal_dt > 0 and not self._steps:
            self._steps.append(nominal_dt)

    def reset(self) -> None:
        self._origin = None

    def delay(self, pts_s: float | None) -> float:
        """Seconds to wait before the frame with this pts is due."""
        if pts_s is None:
            return 0.0
        now = self._clock()
        if self._origin is None:
            self._origin = (now, pts_s)
        else:
            self._origin = self._follow(self._origin, pts_s)
        self._last_pts = pts_s
        wall0, pts0 = self._origin
        return max(0.0, wall0 + (pts_s - pts0) - now)

    def _follow(self, origin: tuple[float, float], pts_s: float) -> tuple[float, float]:
        """The origin for the frame at ``pts_s``: moved if its step is a jump."""
        step = pts_s - self._last_pts
        usual = statistics.median(self._steps) if self._steps else None
        if step > 0:  # leaps too: a stream whose rate really changed is followed
            self._steps.append(step)
        leap = usual is not None and step > max(self.JUMP_STEPS * usual, self.MIN_JUMP_S)
        if step >= 0 and not leap:
            return origin
        # A jump: due one usual step after the frame before (at once if none is known).
        wall0, pts0 = origin
        return wall0 + (self._last_pts - pts0) + (usual or 0.0), pts_s


class MediaClock:
    """Turns pts into a strictly increasing stream time across loops and pts resets.

    The tracker's motion model steps by this clock, so a file read faster than
    real time still moves one frame interval per frame.
    """

    def __init__(self, nominal_dt: float = 1.0 / 30.0) -> None:
        self._offset = 0.0
        self._last: float | None = None
        self._dt = nominal_dt

    def stamp(self, pts_s: float | None, wall: float) -> float:
        if pts_s is None:
            t = wall
        else:
            t = pts_s + self._offset
            if self._last is not None and t <= self._last:
                self._offset += self._last - t + self._dt
                t = self._last + self._dt
            elif self._last is not None:
                self._dt = min(t - self._last, 1.0)
        self._last = t
        return t
