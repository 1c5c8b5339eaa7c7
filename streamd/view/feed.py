"""Camera side of the live view: analysed frames of a watched stream, never blocking.

Only while someone watches a stream does its process send frames, at most
``overlay.max_fps``; the frame is the very one the detections were computed
on. The socket keeps at most two frames queued: a slow viewer costs dropped
view frames, never pipeline time.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import zmq

from streamd import metrics
from streamd.types import WatchUpdate


@dataclass(frozen=True, slots=True)
class ViewMeta:
    """What the live view draws on a frame (crosses to the supervisor as JSON)."""

    stream: str
    frame: int
    ts: float
    objects: list[dict[str, Any]]
    latency_ms: float
    fps: float
    zones: dict[str, int] = field(default_factory=dict)
    lines: dict[str, dict[str, int]] = field(default_factory=dict)
    shape: tuple[int, int] = (0, 0)

    def encode(self) -> bytes:
        return json.dumps(asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes) -> ViewMeta:
        d = json.loads(data)
        d["shape"] = tuple(d["shape"])
        return cls(**d)


class ViewFeed:
    def __init__(self, endpoint: str, stream: str) -> None:
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PUSH)
        self._sock.setsockopt(zmq.SNDHWM, 2)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)
        self.rate: float | None = None
        self._due = 0.0
        self._sent = metrics.VIEW_FRAMES.labels(stream, "sent")
        self._dropped = metrics.VIEW_FRAMES.labels(stream, "dropped")  # the view was busy

    def watch(self, update: WatchUpdate) -> None:
        self.rate = update.max_fps if update.max_fps > 0 else None

    def wants(self) -> bool:
        return self.rate is not None and time.monotonic() >= self._due

    def offer(self, frame: npt.NDArray[np.uint8], meta: ViewMeta) -> None:
        """Send ``frame`` with its detections if watched; drop it if the view is busy."""
        if self.rate is None:
            return
        self._due = time.monotonic() + 1.0 / self.rate
        h, w = frame.shape[:2]
        head = ViewMeta(**{**asdict(meta), "shape": (h, w)}).encode()
        try:
            pixels = np.ascontiguousarray(frame).data  # zero-copy: ZeroMQ holds a reference
            self._sock.send_multipart([head, pixels], zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self._dropped.inc()
            return
        self._sent.inc()

    def close(self) -> None:
        self._sock.close()
        self._ctx.term()
