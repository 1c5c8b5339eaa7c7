"""One tracker per stream, from the ``trackers`` library, driven by capture timestamps.

Every kind is told the media time of each frame, so a frame dropped by sampling or
overload is a longer Kalman step, and a lost track is kept ``lost_track_s`` seconds
whatever the rate. Every kind answers with every detection it was given (checked in
tests/test_tracker_kinds.py), ``tracker_id`` -1 until its track is confirmed (unless the
appearance cue shows a vanished identity on it), so a det event carries every box the
detector found.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import supervision as sv
from trackers import (
    BIoU,
    BoTSORTTracker,
    ByteTrackTracker,
    CIoU,
    DIoU,
    GIoU,
    IoU,
    OCSORTTracker,
    SORTTracker,
)
from trackers.core.base import BaseTracker
from trackers.utils.iou import BaseIoU
from trackers.utils.state_representations import (
    BaseStateEstimator,
    XCYCSRStateEstimator,
    XCYCWHStateEstimator,
    XYXYStateEstimator,
)

from streamd.config import TrackerConfig
from streamd.config.tracker import (
    BoTSortOptions,
    ByteTrackOptions,
    IouKind,
    MotionModel,
    OCSortOptions,
    SortOptions,
)
from streamd.track.appearance import Relinker

# The library sizes lost-track buffers in frames at 30 fps and, given timestamps, keeps
# a lost track buffer/30 seconds: so seconds * 30 is the buffer, whatever the real rate.
_LIBRARY_FPS = 30.0

_MOTION: dict[MotionModel, type[BaseStateEstimator]] = {
    "xyxy": XYXYStateEstimator,
    "xcycsr": XCYCSRStateEstimator,
    "xcycwh": XCYCWHStateEstimator,
}
_IOU: dict[IouKind, type[BaseIoU]] = {
    "iou": IoU,
    "giou": GIoU,
    "diou": DIoU,
    "ciou": CIoU,
    "biou": BIoU,
}


def build_tracker(cfg: TrackerConfig) -> BaseTracker:
    """A fresh library tracker for ``cfg.kind`` with its options."""
    buffer, fps = max(1, round(cfg.lost_track_s * _LIBRARY_FPS)), _LIBRARY_FPS
    frames = cfg.min_consecutive_frames
    o = cfg.options()
    estimator, iou = _MOTION[o.motion], _IOU[o.iou]()
    if isinstance(o, ByteTrackOptions):
        return ByteTrackTracker(
            lost_track_buffer=buffer, frame_rate=fps, minimum_consecutive_frames=frames,
            track_activation_threshold=o.activation_threshold,
            high_conf_det_threshold=o.high_conf_threshold, minimum_iou_threshold=o.min_iou,
            state_estimator_class=estimator, iou=iou,
        )  # fmt: skip
    if isinstance(o, SortOptions):
        return SORTTracker(
            lost_track_buffer=buffer, frame_rate=fps, minimum_consecutive_frames=frames,
            track_activation_threshold=o.activation_threshold,
            minimum_iou_threshold=o.min_iou, state_estimator_class=estimator, iou=iou,
        )  # fmt: skip
    if isinstance(o, OCSortOptions):
        return OCSORTTracker(
            lost_track_buffer=buffer, frame_rate=fps, minimum_consecutive_frames=frames,
            high_conf_det_threshold=o.high_conf_threshold,
            minimum_iou_threshold=o.min_iou, direction_consistency_weight=o.direction_weight,
            delta_t=o.delta_t, state_estimator_class=estimator, iou=iou,
        )  # fmt: skip
    assert isinstance(o, BoTSortOptions)
    return BoTSORTTracker(
        lost_track_buffer=buffer, frame_rate=fps, minimum_consecutive_frames=frames,
        track_activation_threshold=o.activation_threshold,
        high_conf_det_threshold=o.high_conf_threshold,
        minimum_iou_threshold_first_assoc=o.min_iou_first,
        minimum_iou_threshold_second_assoc=o.min_iou_second,
        minimum_iou_threshold_unconfirmed_assoc=o.min_iou_unconfirmed,
        enable_cmc=o.cmc, cmc_method=o.cmc_method, cmc_downscale=o.cmc_downscale,
        state_estimator_class=estimator, iou=iou,
    )  # fmt: skip


class StreamTracker:
    """``update(detections, ts, frame) -> detections`` with ``tracker_id`` (-1 = not yet
    confirmed, and showing no vanished identity): the library's tracker, then identities
    kept by appearance (a frame without pixels, e.g. evicted before its boxes came, is
    tracked by motion alone)."""

    def __init__(self, cfg: TrackerConfig, pixels: bool = True, classes_apart: bool = True) -> None:
        """``pixels``: whether every frame comes with its pixels. Where only some do (a
        stream decoded in the detector process gets them back for the live view and
        snapshots only), the appearance cue is off: ids must not depend on who watches.
        ``classes_apart``: the model's classes are different objects, so an identity is
        matched by look only within its class; false where they are states of one
        object (``model.agnostic_nms``: a person who falls stays the same person)."""
        self._cfg = cfg
        self._classes_apart = classes_apart
        self._tracker = build_tracker(cfg)
        # Of the library's trackers only BoT-SORT with camera-motion compensation looks
        # at pixels.
        self._library_wants_frame = cfg.kind == "botsort" and cfg.botsort.cmc
        on = cfg.appearance.enabled and pixels
        self.relinker = Relinker(cfg.appearance, cfg.lost_track_s) if on else None

    def update(
        self, detections: sv.Detections, ts: float, frame: npt.NDArray[np.uint8] | None = None
    ) -> sv.Detections:
        image = frame if self._library_wants_frame else None
        tracked = self._tracker.update(detections, frame=image, timestamp=ts)
        if self.relinker is not None and tracked.tracker_id is not None:
            boxes = np.asarray(tracked.xyxy, np.float32)
            cls = tracked.class_id
            classes = cls.astype(np.int64) if self._classes_apart and cls is not None else None
            tracked.tracker_id = self.relinker.update(
                boxes, tracked.tracker_id.astype(np.int64), ts, frame, classes
            )
        return tracked
