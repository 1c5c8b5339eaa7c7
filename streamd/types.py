"""The small typed messages that cross process boundaries (never frames themselves)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from streamd.config import DropPolicy, LineConfig, ZoneConfig


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
    slot: int  # -1: a picture decoded in the detector process (decode_in: detector), held there
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
    # Which of the stream's processes it is about (restarts before it): an update from a
    # superseded one, late in the inbox, is dropped.
    generation: int = 0
    final: bool = False  # the stream was removed at runtime: nothing follows this update


@dataclass(frozen=True, slots=True)
class WatchUpdate:
    """Supervisor → a camera's process: send its analysed frames for the live view at
    most ``max_fps`` times a second (0: nobody watches, send none)."""

    stream: str
    max_fps: float


@dataclass(frozen=True, slots=True)
class RegionsUpdate:
    """Supervisor → a camera's process (on its results channel): its new zones and lines,
    applied between two frames without restarting the source; its tracks are kept."""

    stream: str
    zones: tuple[ZoneConfig, ...]
    lines: tuple[LineConfig, ...]


@dataclass(frozen=True, slots=True)
class RouteUpdate:
    """Supervisor → the detector process (its inbox): a stream added or changed at
    runtime gets its results endpoint and batching lane; ``endpoint`` None: removed."""

    stream: str
    endpoint: str | None
    policy: DropPolicy = "latest"
    max_latency_s: float | None = None
    seq: int = 0  # acknowledged by a RouteAck of the same seq


@dataclass(frozen=True, slots=True)
class RouteAck:
    """The detector process → the supervisor (control inbox): the RouteUpdate of this
    seq is in effect. One lost on the way (a full inbox) is sent again."""

    seq: int


@dataclass(frozen=True, slots=True)
class Boxes:
    """A frame's detections, packed as float32 rows ``x1 y1 x2 y2 conf class`` (source
    pixels): one bytes object crosses from the detector to a camera, not three arrays
    (pickling numpy arrays costs several times more)."""

    packed: bytes

    @classmethod
    def pack(
        cls,
        xyxy: npt.NDArray[np.floating[Any]],
        confidence: npt.NDArray[np.floating[Any]],
        class_id: npt.NDArray[np.integer[Any]],
    ) -> Boxes:
        rows = np.empty((len(xyxy), 6), dtype=np.float32)
        rows[:, :4] = xyxy
        rows[:, 4] = confidence
        rows[:, 5] = class_id
        return cls(rows.tobytes())

    def rows(self) -> npt.NDArray[np.float32]:
        return np.frombuffer(self.packed, dtype=np.float32).reshape(-1, 6)


@dataclass(frozen=True, slots=True)
class StageDrops:
    """The detector process's drop totals for one stream (counted by its batcher)."""

    queue_full: int = 0
    stale: int = 0
    detector_error: int = 0  # frames of batches the detector raised on


@dataclass(frozen=True, slots=True)
class Detected:
    """Inference → the stream's own process: the boxes of one announced frame."""

    ref: FrameRef
    boxes: Boxes
    infer_ms: float
    taken_ts: float  # wall time the frame's batch was taken
    batch: int
    drops: StageDrops
    # decode_in: detector: the picture copied back to the host, only where its camera
    # asked (EncodedUnit.pixels); a ring frame's pixels are in its camera's process already.
    image: npt.NDArray[np.uint8] | None = None


@dataclass(frozen=True, slots=True)
class Dropped:
    """Inference → the stream's own process: an announced frame that will not be analysed."""

    ref: FrameRef
    # sampled: decode_in: detector's max_fps; detector_error: its batch raised
    cause: Literal["queue_full", "stale", "sampled", "detector_error"]
    drops: StageDrops


@dataclass(frozen=True, slots=True)
class EncodedUnit:
    """A camera → the detector process (``decode_in: detector``): the header of one
    compressed access unit (Annex B; its bytes travel in the next message part).

    ``ring`` names the decode session: a new one (a reconnect) closes the last one's
    decoder, pictures it held included. ``end``: ``flush`` (end of file: the held
    pictures come out) or ``close`` (the session ended otherwise: they are dropped).
    """

    stream: str
    ring: str
    codec: str  # h264 | hevc
    low_latency: bool  # no B-frames: NVDEC gives each picture out as its packet goes in
    time_base: tuple[int, int]
    pts: int  # NO_PTS (int64 min) when the packet had none
    seq: int  # 1-based in the session: the camera's in-flight count
    frame: int  # the camera's frame index for it
    capture_ts: float  # wall time it was read
    source_dropped: dict[str, int] = field(default_factory=dict)
    end: Literal["", "flush", "close"] = ""
    pixels: bool = False  # send its picture's pixels back (live view watched, snapshots)
    key: bool = False  # a keyframe: where a decoder that joins mid-session can start


@dataclass(frozen=True, slots=True)
class DecodeReport:
    """The detector process → a camera: how its decode session in the detector goes
    (running totals of that session). ``final``: the session's decoder is closed and
    ``decoded`` pictures are all that will come; ``failed``: the decoder failed (the
    camera decodes on its own CPU from its next keyframe)."""

    stream: str
    ring: str
    decoded: int = 0
    decode_errors: int = 0
    sampled: int = 0
    final: bool = False
    failed: str = ""


@dataclass(frozen=True, slots=True)
class Results:
    """Outcomes of one stream's frames (a batch's boxes, the frames it displaced or
    dropped as stale), in one message: fewer wake-ups than one each."""

    items: tuple[Detected | Dropped | DecodeReport, ...]


@dataclass(frozen=True, slots=True)
class ActiveTrack:
    """A confirmed track as its camera's analytics last saw it: in heartbeat rows, so a
    restarted camera can end the tracks of the process it replaces."""

    track_id: int
    class_id: int
    cls: str
    conf: float
    bbox: tuple[float, float, float, float]
    frame: int  # its last frame
    first_media_ts: float
    last_media_ts: float
    frames: int  # analysed frames it was seen in
    classes: dict[str, int]  # class name → frames seen as
    zones: tuple[str, ...]  # zones it entered

    def object_fields(self) -> dict[str, Any]:
        """The object part of a ``track`` event."""
        return {"track_id": self.track_id, "class_id": self.class_id, "class": self.cls,
                "conf": self.conf, "bbox": list(self.bbox)}  # fmt: skip

    def end_fields(self, reason: str) -> dict[str, Any]:
        """What an ``end`` adds (docs/events.md)."""
        return {
            "reason": reason,
            "first_media_ts": self.first_media_ts,
            "last_media_ts": self.last_media_ts,
            "duration_s": round(self.last_media_ts - self.first_media_ts, 3),
            "frames": self.frames,
            "classes": dict(self.classes),
            "zones": list(self.zones),
        }

    def state_fields(self) -> dict[str, Any]:
        """Its entry in the ``state`` answer."""
        return {"track_id": self.track_id, "class": self.cls, "bbox": list(self.bbox),
                "first_media_ts": self.first_media_ts, "last_media_ts": self.last_media_ts,
                "zones": list(self.zones)}  # fmt: skip


@dataclass(frozen=True, slots=True)
class JournalHealth:
    """A camera's alert journal writer, in its heartbeat row."""

    queued: int = 0  # frames' worth of alerts waiting for the journal
    stalled_s: float = 0.0  # how long the commit in progress has been running (0: none)
    unjournaled: int = 0  # alerts published without a journal entry, since the process began

    def fields(self) -> dict[str, Any]:
        return {"queued": self.queued, "stalled_s": self.stalled_s,
                "unjournaled": self.unjournaled}  # fmt: skip


@dataclass(frozen=True, slots=True)
class StreamRow:
    """One stream's figures, sent by its process every heartbeat and published in the
    ``heartbeat`` event (docs/events.md); the status board and the live view read it too."""

    stream: str
    analysed: int = 0
    fps: float = 0.0
    dropped: dict[str, int] = field(
        default_factory=lambda: {"queue_full": 0, "stale": 0, "sampled": 0}
    )
    decoded: int = 0
    decode_errors: int = 0
    latency_ms: float | None = None  # mean capture → publish since the last row
    zones: dict[str, int] = field(default_factory=dict)
    lines: dict[str, dict[str, int]] = field(default_factory=dict)
    alert_seq: int = -1
    tracks: dict[str, Any] = field(default_factory=dict)  # analytics state (the `state` request)
    active: tuple[ActiveTrack, ...] = ()  # its confirmed tracks now
    journal: JournalHealth = field(default_factory=JournalHealth)
    generation: int = 0  # which of the stream's processes sent it (restarts so far)
    # Sent by the camera's process (False: the supervisor's placeholder until its first
    # row, whose empty zones and lines mean "not known yet", not "none").
    reported: bool = False

    def beat_fields(self, state: SourceState | None) -> dict[str, Any]:
        """The row as it appears in a heartbeat."""
        return {
            "state": state.value if state else None,
            "analysed": self.analysed,
            "dropped": dict(self.dropped),
            "fps": round(self.fps, 2),
            "decoded": self.decoded,
            "decode_errors": self.decode_errors,
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 1),
            "zones": dict(self.zones),
            "lines": {k: dict(v) for k, v in self.lines.items()},
            "alert_seq": self.alert_seq,
            "journal": self.journal.fields(),
            "reported": self.reported,
        }


@dataclass(frozen=True, slots=True)
class InferenceBeat:
    """Inference → supervisor every heartbeat: the detector is alive, and which one runs."""

    backend: str
    ts: float
