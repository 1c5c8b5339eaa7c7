"""The ``tracker`` section: ByteTrack settings."""

from __future__ import annotations

from pydantic import Field

from streamd.config.base import _Strict


class TrackerConfig(_Strict):
    """ByteTrack settings; thresholds must suit the detector's confidence range."""

    activation_threshold: float = Field(0.5, gt=0.0, le=1.0)
    high_conf_threshold: float = Field(0.5, gt=0.0, le=1.0)
    min_iou: float = Field(0.1, ge=0.0, le=1.0)
    lost_track_s: float = Field(1.0, gt=0.0, description="Keep a lost track this long.")
    min_consecutive_frames: int = Field(2, ge=1)
