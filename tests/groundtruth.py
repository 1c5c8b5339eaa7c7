"""Score published detections against a synthetic scene's ground truth."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any


def iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Score:
    truths: int = 0
    matched: int = 0
    track_ids: dict[int, list[int | None]] = field(default_factory=lambda: defaultdict(list))

    @property
    def recall(self) -> float:
        return self.matched / self.truths if self.truths else 0.0

    def id_consistency(self) -> dict[int, float]:
        """Per person: share of its matched frames carrying its most common track id."""
        out = {}
        for pid, ids in self.track_ids.items():
            confirmed = [i for i in ids if i is not None]
            top = Counter(confirmed).most_common(1)[0][1] if confirmed else 0
            out[pid] = top / len(ids)
        return out


def score(
    dets: list[dict[str, Any]], truth_frames: list[list[dict[str, Any]]], min_iou: float = 0.5
) -> Score:
    """Greedy IoU matching per frame; one detection per ground-truth box at most."""
    s = Score()
    for det in dets:
        truth = truth_frames[det["frame"]]
        s.truths += len(truth)
        pairs = sorted(
            (
                (iou(t["bbox"], o["bbox"]), ti, oi)
                for ti, t in enumerate(truth)
                for oi, o in enumerate(det["objects"])
            ),
            reverse=True,
        )
        used_t: set[int] = set()
        used_o: set[int] = set()
        for value, ti, oi in pairs:
            if value < min_iou or ti in used_t or oi in used_o:
                continue
            used_t.add(ti)
            used_o.add(oi)
            s.matched += 1
            s.track_ids[truth[ti]["id"]].append(det["objects"][oi]["track_id"])
    return s
