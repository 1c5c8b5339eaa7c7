"""The ``log`` section: the log line format every process writes, and the supervisor's summary."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from streamd.config.base import _Strict

LogFormat = Literal["text", "json"]


class LogConfig(_Strict):
    """How every process of the daemon logs to stderr."""

    format: LogFormat = Field(
        "text",
        description="text: one readable line a record; json: one JSON object a line (time, "
        "level, process, logger, message, stream, exception) for log shippers.",
    )
    summary_s: float = Field(
        60.0,
        ge=0.0,
        description="Seconds between the supervisor's summary lines (per-stream state, fps, "
        "drops, latency); 0 turns them off. Totals are logged at shutdown either way.",
    )
