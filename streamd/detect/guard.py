"""The accuracy guard: a quantised detector is used only if it finds what FP32 finds.

Both run on the calibration set's held-out frames (never calibrated on), with
the pipeline's own thresholds. Boxes are matched greedily by IoU (>= 0.5, same
class); the figures are the candidate's recall and precision against FP32's
boxes and the mean IoU of the matches, and, where the set has ground truth,
both models' recall and precision against it. A candidate passes when its
recall and precision against FP32 reach the floor (``model.guard_recall``,
``model.guard_precision``: 0.95 by default) and, against ground truth, reach
that share of FP32's own. Figures are cached with the model; the verdict is
taken again at every start, so a new floor needs no rebuild.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import supervision as sv

MATCH_IOU = 0.5
MIN_REFERENCE_BOXES = 5  # fewer FP32 boxes than this on the held frames judge nothing


@dataclass(frozen=True, slots=True)
class Match:
    """One detector's boxes against reference boxes, summed over frames."""

    reference: int  # boxes in the reference
    found: int  # boxes the detector gave
    matched: int
    mean_iou: float  # of the matched pairs

    @property
    def recall(self) -> float:
        return self.matched / self.reference if self.reference else 1.0

    @property
    def precision(self) -> float:
        return self.matched / self.found if self.found else 1.0

    def figures(self) -> dict[str, float | int]:
        return {"recall": round(self.recall, 4), "precision": round(self.precision, 4),
                "mean_iou": round(self.mean_iou, 4), "reference_boxes": self.reference,
                "boxes": self.found}  # fmt: skip


def _pairs(ref: npt.NDArray[np.float32], ours: npt.NDArray[np.float32]) -> list[float]:
    """IoUs of a greedy one-to-one matching at >= MATCH_IOU, best first."""
    if not len(ref) or not len(ours):
        return []
    table = sv.box_iou_batch(ref, ours)
    out: list[float] = []
    used_r: set[int] = set()
    used_o: set[int] = set()
    for flat in np.argsort(-table, axis=None):
        r, o = divmod(int(flat), table.shape[1])
        value = float(table[r, o])
        if value < MATCH_IOU:
            break
        if r not in used_r and o not in used_o:
            used_r.add(r)
            used_o.add(o)
            out.append(value)
    return out


def _classes(d: sv.Detections) -> npt.NDArray[np.int64]:
    if d.class_id is None:
        return np.zeros(len(d), dtype=np.int64)
    return np.asarray(d.class_id, dtype=np.int64)


def _boxes(d: sv.Detections) -> npt.NDArray[np.float32]:
    return np.asarray(d.xyxy, dtype=np.float32)


def match(
    reference: Sequence[sv.Detections | npt.NDArray[np.float32]], ours: Sequence[sv.Detections]
) -> Match:
    """``ours`` against ``reference`` frame by frame (detections of one class each time:
    per class when the reference has classes; a plain array is ground truth, any class)."""
    ref_n = found = 0
    ious: list[float] = []
    for ref, det in zip(reference, ours, strict=True):
        if isinstance(ref, sv.Detections):
            ref_cls, det_cls = _classes(ref), _classes(det)
            for c in set(ref_cls.tolist()) | set(det_cls.tolist()):
                ious += _pairs(_boxes(ref)[ref_cls == c], _boxes(det)[det_cls == c])
            ref_n += len(ref)
        else:
            ious += _pairs(np.asarray(ref, dtype=np.float32).reshape(-1, 4), _boxes(det))
            ref_n += len(ref)
        found += len(det)
    return Match(ref_n, found, len(ious), float(np.mean(ious)) if ious else 0.0)


@dataclass(frozen=True, slots=True)
class GuardReport:
    precision: str  # the candidate's, e.g. "int8"
    frames: int  # held-out frames judged on
    vs_fp32: Match
    truth_fp32: Match | None  # FP32 against ground truth, where the set has it
    truth_candidate: Match | None
    conf: float  # the thresholds the figures were taken with
    iou: float
    classes: list[str] | None

    def verdict(self, floor_recall: float, floor_precision: float) -> tuple[bool, str]:
        """(passed, why): the figures in words, and what fell short."""
        v = self.vs_fp32
        words = (f"{self.precision} vs fp32 on {self.frames} held-out frames: recall "
                 f"{v.recall:.3f} precision {v.precision:.3f} mean IoU {v.mean_iou:.3f} "
                 f"({v.reference} fp32 boxes)")  # fmt: skip
        short = []
        if v.reference < MIN_REFERENCE_BOXES:
            short.append(f"fp32 found only {v.reference} boxes on the held-out frames: nothing "
                         "to judge by (calibrate on frames with objects in them)")  # fmt: skip
        if v.recall < floor_recall:
            short.append(f"recall {v.recall:.3f} < {floor_recall}")
        if v.precision < floor_precision:
            short.append(f"precision {v.precision:.3f} < {floor_precision}")
        t32, tc = self.truth_fp32, self.truth_candidate
        if t32 is not None and tc is not None and t32.reference:
            words += (f"; against ground truth: recall {tc.recall:.3f} (fp32 {t32.recall:.3f}), "
                      f"precision {tc.precision:.3f} (fp32 {t32.precision:.3f})")  # fmt: skip
            if tc.recall < floor_recall * t32.recall:
                short.append(f"ground-truth recall {tc.recall:.3f} < {floor_recall} x fp32's")
            if tc.precision < floor_precision * t32.precision:
                short.append(
                    f"ground-truth precision {tc.precision:.3f} < {floor_precision} x fp32's"
                )
        if short:
            return False, words + ": refused: " + "; ".join(short)
        return True, words + ": passed"

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for k in ("vs_fp32", "truth_fp32", "truth_candidate"):
            m = getattr(self, k)
            out[k] = None if m is None else {**m.figures(), **asdict(m)}
        return out

    @staticmethod
    def from_json(d: dict[str, Any]) -> GuardReport:
        def m(x: dict[str, Any] | None) -> Match | None:
            if x is None:
                return None
            return Match(int(x["reference"]), int(x["found"]), int(x["matched"]),
                         float(x["mean_iou"]))  # fmt: skip

        vs = m(d["vs_fp32"])
        if vs is None:
            raise ValueError("a guard report without its fp32 comparison")
        return GuardReport(str(d["precision"]), int(d["frames"]), vs, m(d["truth_fp32"]),
                           m(d["truth_candidate"]), float(d["conf"]), float(d["iou"]),
                           d["classes"])  # fmt: skip


def judge(
    precision: str,
    fp32: Sequence[sv.Detections],
    candidate: Sequence[sv.Detections],
    truth: Sequence[npt.NDArray[np.float32] | None],
    thresholds: tuple[float, float, list[str] | None],
) -> GuardReport:
    """The figures of ``candidate`` against ``fp32`` on the same frames, and against
    ``truth`` on those frames that have it (None: no ground truth for that frame)."""
    conf, iou, classes = thresholds
    known = [i for i, t in enumerate(truth) if t is not None]
    boxes = [t for t in truth if t is not None]
    return GuardReport(
        precision=precision,
        frames=len(fp32),
        vs_fp32=match(fp32, candidate),
        truth_fp32=match(boxes, [fp32[i] for i in known]) if known else None,
        truth_candidate=match(boxes, [candidate[i] for i in known]) if known else None,
        conf=conf,
        iou=iou,
        classes=classes,
    )
