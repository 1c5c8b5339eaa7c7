"""Inference side of the live view: analysed frames of watched streams, never blocking.

Only streams someone watches get frames, at most ``overlay.max_fps`` each; the
frame is the very one the detections were computed on. The socket keeps at
most two frames queued: a slow viewer costs dropped view frames, never
pipeline time.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import numpy.typing as npt
import zmq

from streamd.types import WatchUpdate


class ViewFeed:
    def __init__(self, endpoint: str) -> None:
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PUSH)
        self._sock.setsockopt(zmq.SNDHWM, 2)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)
        self.rates: dict[str, float] = {}
        self._due: dict[str, float] = {}
        self.sent = 0
        self.dropped = 0  # the view was busy: that frame was not shown

    def watch(self, update: WatchUpdate) -> None:
        if update.max_fps > 0:
            self.rates[update.stream] = update.max_fps
        else:
            self.rates.pop(update.stream, None)

    def wants(self, stream: str) -> bool:
        rate = self.rates.get(stream)
        return rate is not None and time.monotonic() >= self._due.get(stream, 0.0)

    def offer(self, stream: str, frame: npt.NDArray[np.uint8], meta: dict[str, Any]) -> None:
        """Send ``frame`` with its detections if ``wants(stream)``; drop it if the view is busy."""
        rate = self.rates.get(stream)
        if rate is None:
            return
        self._due[stream] = time.monotonic() + 1.0 / rate
        h, w = frame.shape[:2]
        head = json.dumps({**meta, "stream": stream, "shape": [h, w]}).encode()
        try:
            pixels = np.ascontiguousarray(frame).data  # zero-copy: ZeroMQ holds a reference
            self._sock.send_multipart([head, pixels], zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.dropped += 1
            return
        self.sent += 1

    def close(self) -> None:
        self._sock.close()
        self._ctx.term()
