"""The ``supervisor`` section: restart policy for crashed source workers."""

from __future__ import annotations

from pydantic import Field

from streamd.config.base import _Strict


class SupervisorConfig(_Strict):
    """Restart policy for crashed source workers, and when the daemon counts as ready."""

    max_restarts: int = Field(
        5, ge=0, description="Restarts allowed within restart_window_s before 'failed'."
    )
    restart_window_s: float = Field(60.0, gt=0.0)
    ready_streams: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="Share of streams that must be streaming for /readyz to answer 200 "
        "(1.0: all; 0: none, the model alone).",
    )
