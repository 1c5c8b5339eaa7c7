"""``streamd view``: a stream's annotated live view in a window, or into a video file."""

from __future__ import annotations

import os
import sys
import time
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
        print("streamd view: cannot open the live view (is the daemon running?)", file=sys.stderr)
        return 1
    writer: cv2.VideoWriter | None = None
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
                h, w = frame.shape[:2]
                writer = cv2.VideoWriter(out, cv2.VideoWriter.fourcc(*"mp4v"), fps, (w, h))
            writer.write(frame)
    finally:
        cap.release()
        if writer is not None:
            writer.release()
        if out is None:
            cv2.destroyAllWindows()
    if out is not None:
        print(f"wrote {frames} frames to {out}")
    return 0 if frames else 1
