"""ByteTrack per stream, driven by capture timestamps so dropped frames do not confuse it."""

from __future__ import annotations

import supervision as sv
from trackers import ByteTrackTracker

from streamd.config import TrackerConfig

# ByteTrack sizes its lost-track buffer in frames at a nominal rate; we pass
# real timestamps, so the buffer is expressed in seconds at this rate.
_NOMINAL_FPS = 30.0


class StreamTracker:
    """``update(detections, ts) -> detections`` with ``tracker_id`` (-1 = not yet confirmed)."""

    def __init__(self, cfg: TrackerConfig) -> None:
        self._cfg = cfg
        self._tracker = self._build()

    def _build(self) -> ByteTrackTracker:
        return ByteTrackTracker(
            lost_track_buffer=max(1, round(self._cfg.lost_track_s * _NOMINAL_FPS)),
            frame_rate=_NOMINAL_FPS,
            track_activation_threshold=self._cfg.activation_threshold,
            high_conf_det_threshold=self._cfg.high_conf_threshold,
            minimum_iou_threshold=self._cfg.min_iou,
            minimum_consecutive_frames=self._cfg.min_consecutive_frames,
        )

    def update(self, detections: sv.Detections, ts: float) -> sv.Detections:
        return self._tracker.update(detections, timestamp=ts)
