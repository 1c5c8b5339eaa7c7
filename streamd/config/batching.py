"""The ``batching`` section: how frames are grouped into detector calls."""

from __future__ import annotations

from pydantic import Field

from streamd.config.base import _Strict


class BatchingConfig(_Strict):
    max_batch: int = Field(8, ge=1, le=256, description="Frames per detector call at most.")
    max_wait_ms: float = Field(
        10.0,
        ge=0.0,
        le=1000.0,
        description="Send a partial batch once its oldest frame waited this long.",
    )
