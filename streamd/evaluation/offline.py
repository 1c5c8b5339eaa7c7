"""The same tracker, offline, on the detections the daemon had: does the pipeline lose
anything (frames, boxes, ids) on the way?"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import supervision as sv

from streamd.config import TrackerConfig
from streamd.evaluation.metrics import TrackedFrame
from streamd.sources.reader import to_bgr
from streamd.track import StreamTracker


def replay(
    frames: Sequence[TrackedFrame], cfg: TrackerConfig, video: Path | None = None,
    classes_apart: bool = True,
) -> list[TrackedFrame]:  # fmt: skip
    """A fresh tracker fed each analysed frame's boxes (and classes) at its media time, and
    the frame's pixels decoded from ``video`` as the daemon decodes them (for the
    appearance cue). ``classes_apart``: as the daemon's (not ``model.agnostic_nms``).

    A det event lists every box the detector found (trackers answer with all of them),
    as the tracker returned them; the detector hands them over best first, so sorting by
    confidence gives back the order the daemon's tracker was given them in.
    """
    tracker = StreamTracker(cfg, classes_apart=classes_apart)
    wanted = video is not None and tracker.relinker is not None
    pictures = _pictures(video, [f.frame for f in frames]) if wanted and video else None
    out = []
    for f in frames:
        order = np.argsort(-f.conf, kind="stable")
        dets = sv.Detections(
            xyxy=f.boxes[order].astype(np.float32),
            confidence=f.conf[order].astype(np.float32),
            class_id=np.zeros(len(order), np.int64) if f.classes is None else f.classes[order],
        )
        got = tracker.update(dets, f.ts, None if pictures is None else next(pictures))
        ids = np.full(len(got), -1, np.int64) if got.tracker_id is None else got.tracker_id
        conf = np.ones(len(got)) if got.confidence is None else got.confidence
        cls = None if f.classes is None or got.class_id is None else got.class_id.astype(np.int64)
        out.append(TrackedFrame(f.frame, f.ts, got.xyxy.astype(np.float64),
                                conf.astype(np.float64), ids.astype(np.int64), cls))  # fmt: skip
    return out


def _pictures(video: Path, wanted: list[int]) -> Iterator[npt.NDArray[np.uint8]]:
    """The frames numbered ``wanted`` (ascending), decoded in order as the daemon does."""
    with av.open(str(video)) as container:
        decoded = container.decode(video=0)
        index = -1
        for k in wanted:
            picture = None
            while index < k:
                picture = next(decoded)
                index += 1
            if picture is None:
                raise ValueError(f"frame {k} requested twice or out of order")
            yield to_bgr(picture)


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
