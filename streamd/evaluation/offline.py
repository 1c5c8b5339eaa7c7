"""The same tracker, offline, on the detections the daemon had: does the pipeline lose
anything (frames, boxes, ids) on the way?"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import supervision as sv

from streamd.config import TrackerConfig
from streamd.evaluation.metrics import TrackedFrame
from streamd.track import StreamTracker


def replay(frames: Sequence[TrackedFrame], cfg: TrackerConfig) -> list[TrackedFrame]:
    """A fresh tracker fed each analysed frame's boxes at its media time.

    A det event lists every box the detector found (trackers answer with all of them),
    as the tracker returned them; the detector hands them over best first, so sorting by
    confidence gives back the order the daemon's tracker was given them in.
    """
    tracker = StreamTracker(cfg)
    out = []
    for f in frames:
        order = np.argsort(-f.conf, kind="stable")
        dets = sv.Detections(
            xyxy=f.boxes[order].astype(np.float32),
            confidence=f.conf[order].astype(np.float32),
            class_id=np.zeros(len(order), np.int64),
        )
        got = tracker.update(dets, f.ts)
        ids = np.full(len(got), -1, np.int64) if got.tracker_id is None else got.tracker_id
        conf = np.ones(len(got)) if got.confidence is None else got.confidence
        out.append(TrackedFrame(f.frame, f.ts, got.xyxy.astype(np.float64),
                                conf.astype(np.float64), ids.astype(np.int64)))  # fmt: skip
    return out


@dataclass(frozen=True, slots=True)
class Agreement:
    """How the daemon's boxes and ids compare with the offline run's."""

    frames: int
    boxes: int
    same_boxes: int  # the same box (to the event's 0.1 px) in the same frame
    same_ids: int  # ... with the same track id (-1 both, or the same number)

    @property
    def identical(self) -> bool:
        return self.same_boxes == self.boxes and self.same_ids == self.boxes


def agreement(daemon: Sequence[TrackedFrame], offline: Sequence[TrackedFrame]) -> Agreement:
    boxes = same_boxes = same_ids = 0
    for a, b in zip(daemon, offline, strict=True):
        ids_b = {_key(box): int(i) for box, i in zip(b.boxes, b.ids, strict=True)}
        for box, i in zip(a.boxes, a.ids, strict=True):
            boxes += 1
            other = ids_b.get(_key(box))
            same_boxes += other is not None
            same_ids += other == int(i)
    return Agreement(len(daemon), boxes, same_boxes, same_ids)


def _key(box: np.ndarray) -> tuple[float, ...]:
    return tuple(np.round(box.astype(np.float64), 1).tolist())
