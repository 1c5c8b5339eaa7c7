"""The ``overlay`` section: the annotated live view."""

from __future__ import annotations

from pydantic import Field

from streamd.config.base import _Strict


class OverlayConfig(_Strict):
    """The annotated live view: only drawn and encoded while someone watches."""

    max_fps: float = Field(10.0, gt=0.0, le=60.0, description="Annotated frames/s per stream.")
    jpeg_quality: int = Field(75, ge=10, le=100)
    trace_s: float = Field(2.0, ge=0.0, le=30.0, description="Motion trace length (seconds).")
