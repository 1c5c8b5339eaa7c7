"""The runtime stream API's contract: what the HTTP layer asks of the supervisor.

The HTTP layer (``control/http.py``) turns requests into these calls and
their errors into 4xx answers; the supervisor (``app.Daemon``) validates each
change with the same schema as the pipeline file, applies it to the affected
stream only, and persists it. Bodies are the JSON a stream has in the
pipeline file (``streams[i]``).
"""

from __future__ import annotations

from typing import Any, Protocol

from streamd.config import StreamConfig


class AdminError(Exception):
    """A change refused: ``status`` is the HTTP status (404 unknown stream, 409 id taken,
    421 another shard's stream, 422 invalid), ``problems`` the (key path, reason) pairs,
    as ``ConfigError`` has them."""

    def __init__(self, status: int, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{k}: {r}" if k else r for k, r in problems))
        self.status = status
        self.problems = problems


class StreamAdmin(Protocol):
    """Streams changed at runtime. Every call is applied (or refused) before it returns."""

    def list_streams(self) -> list[StreamConfig]: ...

    def get_stream(self, stream_id: str) -> StreamConfig | None: ...

    def add_stream(self, body: dict[str, Any]) -> StreamConfig:
        """Validate, start the new stream's process, persist; the stream as configured."""
        ...

    def update_stream(self, stream_id: str, body: dict[str, Any]) -> StreamConfig:
        """Replace the stream's configuration (``id`` may not change). A change of zones,
        lines or tracks only applies without restarting its source; anything else
        restarts that stream's process only."""
        ...

    def remove_stream(self, stream_id: str) -> None:
        """Stop the stream's process (its shared memory goes with it), persist."""
        ...
