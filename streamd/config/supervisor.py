"""The ``supervisor`` section: restart policy for crashed source workers."""

from __future__ import annotations

from pydantic import Field

from streamd.config.base import _Strict


class SupervisorConfig(_Strict):
    """Restart policy for crashed source workers."""

    max_restarts: int = Field(
        5, ge=0, description="Restarts allowed within restart_window_s before 'failed'."
    )
    restart_window_s: float = Field(60.0, gt=0.0)
