"""Build the type-specific fields of each event from typed pipeline values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import supervision as sv

from streamd.types import FrameRef, StatusUpdate


@dataclass(frozen=True, slots=True)
class Latency:
    """Per-stage latency of one frame, milliseconds."""

    decode: float
    queue: float
    infer: float
    track: float
    total: float

    def as_dict(self) -> dict[str, float]:
        return {
            "decode": _ms(self.decode),
            "queue": _ms(self.queue),
            "infer": _ms(self.infer),
            "track": _ms(self.track),
            "total": _ms(self.total),
        }


def _ms(v: float) -> float:
    # Clocks of two processes can disagree by a hair; latency is never negative.
    return round(max(0.0, v), 3)


def objects(detections: sv.Detections, names: dict[int, str]) -> list[dict[str, Any]]:
    """Detections as the ``objects`` list of a ``det`` event (bbox in source pixels)."""
    out: list[dict[str, Any]] = []
    tracker_ids = detections.tracker_id
    for i in range(len(detections)):
        class_id = int(detections.class_id[i]) if detections.class_id is not None else 0
        conf = float(detections.confidence[i]) if detections.confidence is not None else 1.0
        track = int(tracker_ids[i]) if tracker_ids is not None else -1
        out.append(
            {
                "track_id": track if track >= 0 else None,
                "class_id": class_id,
                "class": names.get(class_id, str(class_id)),
                "conf": round(conf, 4),
                "bbox": [round(float(v), 1) for v in detections.xyxy[i]],
            }
        )
    return out


def det_fields(
    ref: FrameRef,
    objs: list[dict[str, Any]],
    latency: Latency,
    dropped: dict[str, int],
    analysed: int,
    batch: int,
) -> dict[str, Any]:
    return {
        "media_ts": round(ref.media_ts, 6),
        "frame": ref.frame,
        "width": ref.width,
        "height": ref.height,
        "objects": objs,
        "latency_ms": latency.as_dict(),
        "dropped": dropped,
        "analysed": analysed,
        "batch": batch,
    }


def status_fields(update: StatusUpdate) -> dict[str, Any]:
    return {
        "state": update.state.value,
        "reason": update.reason,
        "detail": update.detail,
        "prev_state": update.prev_state.value if update.prev_state else None,
        "in_prev_state_s": round(max(0.0, update.in_prev_state_s), 3),
        "attempt": update.attempt,
        "retry_in_s": update.retry_in_s,
        "counters": dict(update.counters),
    }
