"""Build the type-specific fields of each event from typed pipeline values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
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


# What a det event keeps of a box and its confidence.
BOX_DECIMALS = 1
CONF_DECIMALS = 4
TS_DECIMALS = 6  # media_ts: a microsecond


def as_published_boxes(xyxy: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """Boxes rounded as a det event publishes them (rounded in float64, as below)."""
    return np.round(np.asarray(xyxy, np.float64), BOX_DECIMALS).astype(np.float32)


def as_published_conf(conf: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    return np.round(np.asarray(conf, np.float64), CONF_DECIMALS).astype(np.float32)


def as_published_ts(ts: float) -> float:
    return round(ts, TS_DECIMALS)


def objects(detections: sv.Detections, names: dict[int, str]) -> list[dict[str, Any]]:
    """Detections as the ``objects`` list of a ``det`` event (bbox in source pixels)."""
    n = len(detections)
    # Whole columns to Python at once: per-value numpy scalars cost more than the rest.
    boxes = np.round(np.asarray(detections.xyxy, dtype=np.float64), BOX_DECIMALS).tolist()
    conf = detections.confidence
    confs = ([1.0] * n if conf is None
             else np.round(conf.astype(np.float64), CONF_DECIMALS).tolist())  # fmt: skip
    cls = detections.class_id
    class_ids = [0] * n if cls is None else cls.astype(np.int64).tolist()
    tid = detections.tracker_id
    tracks = [-1] * n if tid is None else tid.astype(np.int64).tolist()
    return [
        {
            "track_id": t if t >= 0 else None,
            "class_id": c,
            "class": names.get(c, str(c)),
            "conf": cf,
            "bbox": b,
        }
        for t, c, cf, b in zip(tracks, class_ids, confs, boxes, strict=True)
    ]


def det_fields(
    ref: FrameRef,
    objs: list[dict[str, Any]],
    latency: Latency,
    dropped: dict[str, int],
    analysed: int,
    batch: int,
) -> dict[str, Any]:
    return {
        "media_ts": as_published_ts(ref.media_ts),
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
