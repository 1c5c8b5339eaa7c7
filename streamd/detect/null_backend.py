"""The ``null`` backend: a measurement tool, not a detector.

It returns ``boxes`` boxes per frame at once, without looking at the pixels.
Each box drifts smoothly inside its own cell of a grid laid over the frame,
as a function of the stream and its media clock, so the tracker keeps stable
identities and tracking, analytics and publishing do real work. With it,
``streamd bench`` measures the host path (everything but the model). ``auto``
never picks it.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import supervision as sv

from streamd.types import FrameRef

if TYPE_CHECKING:
    from streamd.detect.nv12 import Frame

NAMES = {0: "person"}
_BOX_FRACTION = 0.35  # of the cell: neighbours never overlap, ids stay stable
_SWING = 0.25  # of the cell, either side of its centre
_CONF = 0.9


class NullDetector:
    """``detect`` returns the same smooth, per-stream boxes whatever the frames hold."""

    backend = "null"

    def __init__(self, boxes: int) -> None:
        self.names = dict(NAMES)
        self.boxes = boxes
        cols = max(1, math.ceil(math.sqrt(boxes)))
        self._grid = (cols, max(1, math.ceil(boxes / cols)))
        i = np.arange(boxes, dtype=np.float64)
        self._cell = np.stack([i % cols, i // cols], axis=1)
        self._period = 3.0 + (i * 0.7) % 4.0  # seconds: boxes move at different speeds
        self._calls = 0

    def detect(
        self, frames: Sequence[Frame], refs: Sequence[FrameRef] | None = None
    ) -> list[sv.Detections]:
        self._calls += 1
        out = []
        for k, frame in enumerate(frames):
            ref = refs[k] if refs is not None else None
            t = ref.media_ts if ref is not None else self._calls / 30.0
            phase = (zlib.crc32(ref.stream.encode()) % 628) / 100.0 if ref is not None else 0.0
            out.append(self._boxes(frame.shape[1], frame.shape[0], t, phase))
        return out

    def _boxes(self, width: int, height: int, t: float, phase: float) -> sv.Detections:
        cols, rows = self._grid
        cw, ch = width / cols, height / rows
        angle = 2.0 * math.pi * t / self._period + phase + np.arange(self.boxes)
        cx = (self._cell[:, 0] + 0.5 + _SWING * np.sin(angle)) * cw
        cy = (self._cell[:, 1] + 0.5 + _SWING * np.cos(angle)) * ch
        half_w, half_h = _BOX_FRACTION * cw / 2.0, _BOX_FRACTION * ch / 2.0
        xyxy = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)
        n = self.boxes
        return sv.Detections(
            xyxy=xyxy.astype(np.float32),
            confidence=np.full(n, _CONF, dtype=np.float32),
            class_id=np.zeros(n, dtype=int),
            data={"class_name": np.array([NAMES[0]] * n)},
        )
