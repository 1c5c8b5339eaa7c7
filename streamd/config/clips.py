"""A stream's event clips: MP4s of the seconds around its alerts, remuxed from its packets."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator

from streamd.config.base import _Strict


class ClipsConfig(_Strict):
    """``streams[i].clips``: when a track of the stream raises an alert, the stream's
    process writes an MP4 from ``pre_s`` before it to ``post_s`` after the track's last
    alert (docs/architecture.md, "Event clips")."""

    enabled: bool = Field(False, description="Write a clip around every track's alerts.")
    pre_s: float = Field(
        5.0, ge=0.0, le=60.0, description="Seconds kept before the alert (from a keyframe)."
    )
    post_s: float = Field(
        5.0, ge=0.0, le=600.0, description="Seconds after the last alert of the clip's track."
    )
    max_s: float = Field(
        60.0, gt=0.0, le=3600.0, description="A clip ends after this long, alerts or not."
    )
    dir: str | None = Field(
        None,
        description="Folder of the clips (one subfolder per stream; relative to the pipeline "
        "file's folder). Default: beside the journal, <journal name>.clips.",
    )
    retention_days: float = Field(7.0, gt=0.0, description="Clips older than this are deleted.")
    max_gb: float = Field(
        10.0, gt=0.0, description="Oldest clips of the stream deleted beyond this size."
    )

    @field_validator("max_s")
    @classmethod
    def _holds_pre_and_post(cls, v: float, info: ValidationInfo) -> float:
        pre, post = info.data.get("pre_s"), info.data.get("post_s")
        if pre is not None and post is not None and v < pre + post:
            raise ValueError(f"must be at least pre_s + post_s ({pre + post:g})")
        return v
