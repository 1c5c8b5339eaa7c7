"""The small typed messages that cross process boundaries (never frames themselves)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class SourceState(StrEnum):
    CONNECTING = "connecting"
    STREAMING = "streaming"
    STALLED = "stalled"
    RECONNECTING = "reconnecting"
    FAILED = "failed"
    ENDED = "ended"


@dataclass(frozen=True, slots=True)
class FrameRef:
    """Where a decoded frame lies in shared memory, and when it was captured."""

    stream: str
    ring: str  # shared-memory segment name
    slots: int  # ring size, needed to attach
    height: int
    width: int
    slot: int
    seq: int  # the ring's write sequence number (checked against the slot stamp)
    capture_ts: float  # wall time the frame was captured/decoded (seconds since the epoch)
    media_ts: float  # the stream's own clock (pts), made monotonic across loops/jumps
    decode_ms: float
    ready_ts: float  # wall time the frame was fully written into the ring
    frame: int = 0  # frame index in the stream since the worker started (across rings)
    decoded: int = 0  # the source's running totals, so the bus sees them without a transition
    decode_errors: int = 0
    source_dropped: dict[str, int] = field(default_factory=dict)  # dropped before the ring


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """A source state transition, published as ``status.<stream>``."""

    stream: str
    state: SourceState
    reason: str
    ts: float
    prev_state: SourceState | None = None
    in_prev_state_s: float = 0.0
    attempt: int = 0
    detail: str = ""
    retry_in_s: float | None = None  # reconnecting: the backoff delay before the next attempt
    counters: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WatchUpdate:
    """Supervisor → inference: send this stream's analysed frames for the live view at
    most ``max_fps`` times a second (0: nobody watches, send none)."""

    stream: str
    max_fps: float
