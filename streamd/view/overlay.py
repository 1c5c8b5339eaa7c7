"""Supervisor side of the live view: viewers, drawing, JPEG encoding.

A stream is drawn and encoded only while at least one viewer is registered
for it: the first viewer asks the stream's own process for frames
(``WatchUpdate``), the last one to leave stops them. Each frame is drawn and
encoded once however many viewers there are; every viewer gets the newest
JPEG when it is ready for one (a slow viewer skips frames, nothing queues).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import zmq

from streamd.config import PipelineConfig, StreamConfig
from streamd.view.draw import FrameAnnotator
from streamd.view.feed import ViewMeta

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Picture:
    version: int  # increases with every new JPEG of the stream
    jpeg: bytes
    meta: ViewMeta


class _Stream:
    def __init__(self, annotator: FrameAnnotator) -> None:
        self.annotator = annotator
        self.viewers = 0
        self.picture: Picture | None = None
        self.encoded = 0


class LiveView:
    def __init__(
        self,
        cfg: PipelineConfig,
        endpoint: str,
        watch: Callable[[str, float], None],
        hud: Callable[[str], dict[str, Any]],
    ) -> None:
        self.cfg = cfg.overlay
        self._watch = watch
        self._hud = hud
        self.streams = {s.id: _Stream(FrameAnnotator(s, cfg.overlay)) for s in cfg.streams}
        self._cond = threading.Condition()
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PULL)
        self._sock.setsockopt(zmq.RCVHWM, 2)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(endpoint)
        self._stop = threading.Event()
        self.failed: dict[str, int] = {}  # pictures that could not be drawn, per stream
        self._thread = threading.Thread(target=self._run, name="live-view", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def set_stream(self, stream: StreamConfig) -> None:
        """A stream added or changed at runtime: drawn with its zones and lines from now."""
        annotator = FrameAnnotator(stream, self.cfg)
        with self._cond:
            current = self.streams.get(stream.id)
            if current is not None:  # its viewers and last picture stay
                current.annotator = annotator
            else:
                self.streams = {**self.streams, stream.id: _Stream(annotator)}

    def remove_stream(self, stream: str) -> None:
        """A stream removed at runtime: its waiting viewers wake and find it gone."""
        with self._cond:
            self.streams = {sid: s for sid, s in self.streams.items() if sid != stream}
            self._cond.notify_all()

    @contextlib.contextmanager
    def viewer(self, stream: str) -> Iterator[int]:
        """Register a viewer of ``stream`` for the duration of the block; yields the picture
        version to wait beyond: the current one if frames were not flowing (it may be
        old), the one before it if other viewers keep it fresh."""
        with self._cond:
            s = self.streams[stream]
            s.viewers += 1
            first = s.viewers == 1
            current = s.picture.version if s.picture is not None else 0
        if first:
            self._watch(stream, self.cfg.max_fps)
        try:
            yield current if first else max(0, current - 1)
        finally:
            with self._cond:
                s.viewers -= 1
                last = s.viewers == 0
            if last:
                self._watch(stream, 0.0)

    def next_picture(self, stream: str, after: int, timeout_s: float) -> Picture | None:
        """The stream's newest picture with a version above ``after``, waiting for one;
        None at the timeout, or at once when the stream is removed."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                s = self.streams.get(stream)
                if s is None:  # removed at runtime: nothing comes
                    return None
                pic = s.picture
                if pic is not None and pic.version > after:
                    return pic
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    return None
                self._cond.wait(left)

    def encoded(self) -> dict[str, int]:
        with self._cond:
            return {sid: s.encoded for sid, s in self.streams.items()}

    def viewers(self) -> dict[str, int]:
        with self._cond:
            return {sid: s.viewers for sid, s in self.streams.items()}

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._sock.poll(200):
                    continue
                latest: dict[str, tuple[ViewMeta, bytes]] = {}
                with contextlib.suppress(zmq.Again):
                    while True:  # keep only the newest frame of each stream
                        head, pixels = self._sock.recv_multipart(zmq.NOBLOCK)
                        meta = ViewMeta.decode(head)
                        latest[meta.stream] = (meta, pixels)
                for meta, pixels in latest.values():
                    self._render_contained(meta, pixels)
        finally:
            self._sock.close()

    def _render_contained(self, meta: ViewMeta, pixels: bytes) -> None:
        """One stream's picture that cannot be drawn (a frame or a region the drawing
        code chokes on) costs that picture, not the live view of every stream."""
        try:
            self._render(meta, pixels)
        except Exception:
            self.failed[meta.stream] = self.failed.get(meta.stream, 0) + 1
            if self.failed[meta.stream] == 1:  # once a stream: a bad region fails every frame
                log.exception("live view: a picture of %s could not be drawn", meta.stream)

    def _render(self, meta: ViewMeta, pixels: bytes) -> None:
        s = self.streams.get(meta.stream)
        if s is None or s.viewers == 0:
            return  # a frame already in flight when the last viewer left
        h, w = meta.shape
        frame = np.frombuffer(pixels, dtype=np.uint8).reshape(h, w, 3)
        drawn = s.annotator.draw(frame, meta, self._hud(meta.stream).get("state"))
        ok, buf = cv2.imencode(".jpg", drawn, [cv2.IMWRITE_JPEG_QUALITY, self.cfg.jpeg_quality])
        if not ok:
            log.warning("live view: JPEG encoding failed for %s", meta.stream)
            return
        with self._cond:
            version = (s.picture.version if s.picture else 0) + 1
            s.picture = Picture(version, bytes(buf), meta)
            s.encoded += 1
            self._cond.notify_all()

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(2.0)
        else:
            self._sock.close()
        self._ctx.term()
