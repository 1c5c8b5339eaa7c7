"""Demux and decode one video source with PyAV, counting (not dying on) bad packets."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote, unquote

import av
import av.container
import numpy as np
import numpy.typing as npt

from streamd.config import source_kind

log = logging.getLogger(__name__)

OPEN_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 10.0


@dataclass(slots=True)
class DecodedFrame:
    image: npt.NDArray[np.uint8]  # BGR, HxWx3
    decode_ms: float
    pts_s: float | None


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


def open_source(url: str) -> av.container.InputContainer:
    """Open ``url`` with bounded open/read timeouts (ffmpeg's RTSP default is none)."""
    kind = source_kind(url)
    options: dict[str, str] = {}
    fmt: str | None = None
    target = url
    if kind in ("rtsp", "http"):
        target = escape_credentials(url)
    if kind == "rtsp":
        options["rtsp_transport"] = "tcp"
    elif kind == "webcam":
        fmt = "v4l2"
        target = f"/dev/video{url}" if url.isdigit() else url
    return av.open(target, format=fmt, options=options, timeout=(OPEN_TIMEOUT_S, READ_TIMEOUT_S))


def decode_frames(
    container: av.container.InputContainer, counters: DecodeCounters
) -> Iterator[DecodedFrame]:
    """Yield decoded BGR frames; corrupt packets are skipped and counted."""
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    for packet in container.demux(stream):
        t0 = time.perf_counter()
        try:
            frames = packet.decode()
        except av.FFmpegError as e:  # a corrupt packet is skipped, not fatal
            counters.decode_errors += 1
            log.debug("skipping undecodable packet: %s", e)
            continue
        for frame in frames:
            image: npt.NDArray[np.uint8] = np.asarray(
                frame.to_ndarray(format="bgr24"), dtype=np.uint8
            )
            counters.decoded += 1
            yield DecodedFrame(image, (time.perf_counter() - t0) * 1000.0, frame.time)
            t0 = time.perf_counter()


class Pacer:
    """Sleeps so that a file plays at its own frame rate (``realtime: true``)."""

    def __init__(self) -> None:
        self._origin: tuple[float, float] | None = None  # (wall, pts)

    def reset(self) -> None:
        self._origin = None

    def delay(self, pts_s: float | None) -> float:
        if pts_s is None:
            return 0.0
        now = time.monotonic()
        if self._origin is None:
            self._origin = (now, pts_s)
            return 0.0
        wall0, pts0 = self._origin
        return max(0.0, wall0 + (pts_s - pts0) - now)


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
