"""``streamd view``: a stream's annotated live view in a window, or into a video file."""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import quote

import cv2


def mjpeg_url(address: str, stream: str, token: str | None) -> str:
    url = f"http://{address}/streams/{quote(stream)}.mjpg"
    return url if token is None else f"{url}?token={quote(token)}"


def view(url: str, out: str | None, seconds: float | None, fps: float) -> int:
    """Play ``url``; with ``out``, write an MP4 instead of showing a window."""
    if out is None and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        print("streamd view: no display here; write a file with --out FILE.mp4", file=sys.stderr)
        return 2
    cap = cv2.VideoCapture(url)
    if not cap.isOpened():
        print(f"streamd view: cannot open the live view: {_why(url)}", file=sys.stderr)
        return 1
    writer: _Recorder | None = None
    start, frames = time.monotonic(), 0
    try:
        while seconds is None or time.monotonic() - start < seconds:
            ok, frame = cap.read()
            if not ok:
                break
            frames += 1
            if out is None:
                cv2.imshow(url.split("?", 1)[0], frame)
                if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                    break
                continue
            if writer is None:
                writer = _Recorder(out, fps, frame)
            else:
                writer.add(frame)
    finally:
        cap.release()
        if writer is not None:
            writer.close()
        if out is None:
            cv2.destroyAllWindows()
    if writer is not None:
        print(f"wrote {writer.written} frames ({writer.written / fps:.1f} s at {fps:g} "
              f"frames/s) from {frames} pictures to {out}")  # fmt: skip
    return 0 if frames else 1


def _why(url: str) -> str:
    """What the daemon answers at ``url``, in words: the stream or token it refused, or
    nobody answering (OpenCV only says it could not open it)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=5):
            return "the daemon answered, but the picture could not be read"
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return "the daemon has no such stream (streamd status lists them)"
        if e.code == 401:
            return "the daemon wants its token (--token, or the pipeline file's http.token)"
        return f"the daemon answered {e.code} {e.reason}"
    except (urllib.error.URLError, OSError):
        return "no daemon answering (is it running?)"


class _Recorder:
    """An MP4 at ``fps`` that plays in real time whatever rate the pictures come at: each
    picture holds the file's frames until the next picture came (none, for pictures
    faster than ``fps``); the file starts at the first picture. It used to write each
    picture once, so a camera at 2 frames/s played five times too fast at 10 frames/s."""

    def __init__(self, out: str, fps: float, first: cv2.typing.MatLike) -> None:
        h, w = first.shape[:2]
        self._writer = cv2.VideoWriter(out, cv2.VideoWriter.fourcc(*"mp4v"), fps, (w, h))
        self._fps, self._start = fps, time.monotonic()
        self._last = first
        self.written = 0

    def add(self, frame: cv2.typing.MatLike) -> None:
        self._hold(time.monotonic())  # the picture before shows until now
        self._last = frame

    def _hold(self, now: float) -> None:
        due = int((now - self._start) * self._fps)  # the file's frames before now
        while self.written < due:
            self._writer.write(self._last)
            self.written += 1

    def close(self) -> None:
        self._hold(time.monotonic())
        self._writer.write(self._last)  # the last picture, once at least
        self.written += 1
        self._writer.release()
