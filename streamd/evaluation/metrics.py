"""Score tracked frames against a scene's ground truth with the ``trackers`` library."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from trackers.eval import (
    box_iou,
    compute_clear_metrics,
    compute_hota_metrics,
    compute_identity_metrics,
)

Boxes = npt.NDArray[np.float64]
Ids = npt.NDArray[np.int64]

# CLEAR and Identity match at this IoU; HOTA averages over 0.05..0.95 itself.
MATCH_IOU = 0.5


@dataclass(frozen=True, slots=True)
class TrackedFrame:
    """One analysed frame: every box, its confidence, its track id (-1: unconfirmed) and
    its class (None: not known, taken as one class)."""

    frame: int
    ts: float
    boxes: Boxes  # (n, 4) x1 y1 x2 y2, source pixels
    conf: npt.NDArray[np.float64]
    ids: Ids
    classes: Ids | None = None

    def as_dict(self) -> dict[str, Any]:
        d = {"frame": self.frame, "ts": self.ts, "boxes": self.boxes.tolist(),
             "conf": self.conf.tolist(), "ids": self.ids.tolist()}  # fmt: skip
        return d if self.classes is None else d | {"classes": self.classes.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrackedFrame:
        classes = np.array(d["classes"], np.int64) if "classes" in d else None
        return cls(int(d["frame"]), float(d["ts"]),
                   np.array(d["boxes"], np.float64).reshape(-1, 4),
                   np.array(d["conf"], np.float64), np.array(d["ids"], np.int64),
                   classes)  # fmt: skip

    @classmethod
    def from_event(cls, payload: dict[str, Any]) -> TrackedFrame:
        """A ``det`` event's payload (``track_id`` null = unconfirmed)."""
        objs = payload["objects"]
        return cls(
            frame=int(payload["frame"]),
            ts=float(payload["media_ts"]),
            boxes=np.array([o["bbox"] for o in objs], np.float64).reshape(-1, 4),
            conf=np.array([o["conf"] for o in objs], np.float64),
            ids=np.array([-1 if o["track_id"] is None else o["track_id"] for o in objs], np.int64),
            classes=np.array([o["class_id"] for o in objs], np.int64),
        )


@dataclass(frozen=True, slots=True)
class Scores:
    """MOT metrics of one run over the frames it analysed."""

    frames: int
    mota: float
    idf1: float
    hota: float
    deta: float
    assa: float
    idsw: int
    fp: int
    fn: int
    frag: int
    tracks: int  # distinct confirmed ids
    people: int  # distinct people in the truth of those frames

    def as_dict(self) -> dict[str, float | int]:
        return {k: getattr(self, k) for k in self.__slots__}


def score(truth: Sequence[Sequence[dict[str, Any]]], tracked: Sequence[TrackedFrame]) -> Scores:
    """CLEAR/Identity/HOTA over the frames in ``tracked`` (the analysed ones: a frame the
    daemon dropped is not scored); only confirmed boxes (id >= 0) count as the tracker's."""
    gt_ids: list[Ids] = []
    tr_ids: list[Ids] = []
    sims: list[npt.NDArray[np.float64]] = []
    gt_map: dict[int, int] = {}
    tr_map: dict[int, int] = {}
    for f in tracked:
        people = truth[f.frame]
        keep = f.ids >= 0
        gt_boxes = np.array([p["bbox"] for p in people], np.float64).reshape(-1, 4)
        gt_ids.append(_dense([int(p["id"]) for p in people], gt_map))
        tr_ids.append(_dense(f.ids[keep].tolist(), tr_map))
        sims.append(np.asarray(box_iou(gt_boxes, f.boxes[keep]), np.float64))
    clear = compute_clear_metrics(gt_ids, tr_ids, sims, threshold=MATCH_IOU)
    ident = compute_identity_metrics(gt_ids, tr_ids, sims, threshold=MATCH_IOU)
    hota = compute_hota_metrics(gt_ids, tr_ids, sims)
    return Scores(
        frames=len(tracked), mota=float(clear["MOTA"]), idf1=float(ident["IDF1"]),
        hota=float(hota["HOTA"]), deta=float(hota["DetA"]), assa=float(hota["AssA"]),
        idsw=int(clear["IDSW"]), fp=int(clear["CLR_FP"]), fn=int(clear["CLR_FN"]),
        frag=int(clear["Frag"]), tracks=len(tr_map), people=len(gt_map),
    )  # fmt: skip


def _dense(ids: list[int], mapping: dict[int, int]) -> Ids:
    """Ids renumbered 0..n-1 in order of first sight, as the metric code expects."""
    return np.array([mapping.setdefault(i, len(mapping)) for i in ids], np.int64)
