"""The accuracy guard: a quantised detector is used only if it finds what FP32 finds.

Both run on the calibration set's held-out frames (never calibrated on), with
the pipeline's own NMS and classes. Boxes are matched greedily one-to-one by
IoU (>= 0.5, same class). Against FP32: recall is the share of FP32's boxes
(confidence >= ``model.conf``) the candidate also has, precision the share of
the candidate's boxes FP32 also has, and the matched box's confidence may be
up to ``MARGIN`` under ``model.conf``: quantisation moves a box's score by a
few hundredths either way (measured: mean 0.00, sd 0.07), so a box scored
0.26 by one and 0.24 by the other is the same object seen, not a loss. A
systematic shift is a loss, so the mean confidence change of matched boxes
must stay within ``MAX_CONF_SHIFT``. Where the set has ground truth, both
models' recall and precision against it are taken at ``model.conf`` exactly.
A candidate passes when its recall and precision against FP32 reach the floor
(``model.guard_recall``, ``model.guard_precision``: 0.95) and, against ground
truth, reach that share of FP32's own. Figures are cached with the model; the
verdict is taken again at every start, so a new floor needs no rebuild.
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
# Fewer FP32 boxes than this and chance alone moves the figures about as much as the
# floor allows (quantisation flips a few boxes near conf each way): said with the verdict.
STEADY_BOXES = 150
MARGIN = 0.1  # a matched box's confidence may be this far under model.conf
MAX_CONF_SHIFT = 0.05  # mean confidence change of matched boxes, either way
METHOD = f"iou{MATCH_IOU}-margin{MARGIN}"  # figures cached under another method are retaken


@dataclass(frozen=True, slots=True)
class Match:
    """One detector's boxes against reference boxes, summed over frames."""

    reference: int  # boxes in the reference
    found: int  # boxes the detector gave
    matched: int  # reference boxes the detector has
    mean_iou: float  # of the matched pairs
    found_matched: int | None = None  # detector boxes the reference has (None: = matched)
    conf_shift: float = 0.0  # mean detector - reference confidence of the matched pairs

    @property
    def recall(self) -> float:
        return self.matched / self.reference if self.reference else 1.0

    @property
    def precision(self) -> float:
        hits = self.matched if self.found_matched is None else self.found_matched
        return hits / self.found if self.found else 1.0

    def figures(self) -> dict[str, float | int]:
        return {"recall": round(self.recall, 4), "precision": round(self.precision, 4),
                "mean_iou": round(self.mean_iou, 4), "reference_boxes": self.reference,
                "boxes": self.found}  # fmt: skip


def _pairs(
    ref: npt.NDArray[np.float32], ours: npt.NDArray[np.float32]
) -> list[tuple[int, int, float]]:
    """(reference index, our index, IoU) of a greedy one-to-one matching at >= MATCH_IOU."""
    if not len(ref) or not len(ours):
        return []
    table = sv.box_iou_batch(ref, ours)
    out: list[tuple[int, int, float]] = []
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
            out.append((r, o, value))
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
            ious += [v for _, _, v in _class_pairs(ref, det)]
        else:
            ious += [v for _, _, v in _pairs(np.asarray(ref, np.float32).reshape(-1, 4),
                                              _boxes(det))]  # fmt: skip
        ref_n += len(ref)
        found += len(det)
    return Match(ref_n, found, len(ious), float(np.mean(ious)) if ious else 0.0)


def _class_pairs(ref: sv.Detections, det: sv.Detections) -> list[tuple[int, int, float]]:
    """``_pairs`` within each class, indices into ``ref`` and ``det``."""
    ref_cls, det_cls = _classes(ref), _classes(det)
    out = []
    for c in set(ref_cls.tolist()) | set(det_cls.tolist()):
        ri, di = np.flatnonzero(ref_cls == c), np.flatnonzero(det_cls == c)
        out += [(int(ri[r]), int(di[o]), v)
                for r, o, v in _pairs(_boxes(ref)[ri], _boxes(det)[di])]  # fmt: skip
    return out


def _above(d: sv.Detections, conf: float) -> sv.Detections:
    if d.confidence is None:
        return d
    kept = d[np.asarray(d.confidence) >= conf]
    assert isinstance(kept, sv.Detections)  # a boolean mask selects Detections
    return kept


def agreement(reference: Sequence[sv.Detections], ours: Sequence[sv.Detections],
              conf: float, margin: float = MARGIN) -> Match:  # fmt: skip
    """``ours`` against ``reference`` (both detected at ``conf - margin`` or lower): recall of
    the reference's boxes at ``conf`` by ours at ``conf - margin``, precision of ours at
    ``conf`` by the reference's at ``conf - margin``, mean IoU and confidence change of
    the recall matches."""
    ref_n = found = found_matched = 0
    ious: list[float] = []
    shifts: list[float] = []
    for ref, det in zip(reference, ours, strict=True):
        ref_hi, det_lo = _above(ref, conf), _above(det, conf - margin)
        for r, o, v in _class_pairs(ref_hi, det_lo):
            ious.append(v)
            shifts.append(
                float(np.asarray(det_lo.confidence)[o] - np.asarray(ref_hi.confidence)[r])
            )
        det_hi, ref_lo = _above(det, conf), _above(ref, conf - margin)
        found_matched += len(_class_pairs(ref_lo, det_hi))
        ref_n += len(ref_hi)
        found += len(det_hi)
    return Match(ref_n, found, len(ious), float(np.mean(ious)) if ious else 0.0, found_matched,
                 float(np.mean(shifts)) if shifts else 0.0)  # fmt: skip


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
    method: str = METHOD

    def verdict(self, floor_recall: float, floor_precision: float) -> tuple[bool, str]:
        """(passed, why): the figures in words, and what fell short."""
        v = self.vs_fp32
        words = (f"{self.precision} vs fp32 on {self.frames} held-out frames: recall "
                 f"{v.recall:.3f} precision {v.precision:.3f} mean IoU {v.mean_iou:.3f} "
                 f"confidence {v.conf_shift:+.3f} ({v.reference} fp32 boxes)")  # fmt: skip
        short = []
        if v.reference < MIN_REFERENCE_BOXES:
            short.append(f"fp32 found only {v.reference} boxes on the held-out frames: nothing "
                         "to judge by (calibrate on frames with objects in them)")  # fmt: skip
        if v.recall < floor_recall:
            short.append(f"recall {v.recall:.3f} < {floor_recall}")
        if v.precision < floor_precision:
            short.append(f"precision {v.precision:.3f} < {floor_precision}")
        if abs(v.conf_shift) > MAX_CONF_SHIFT:
            short.append(f"confidence moved {v.conf_shift:+.3f} on average (> {MAX_CONF_SHIFT})")
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
        if v.reference < STEADY_BOXES:
            words += (f" (only {v.reference} fp32 boxes: chance moves these figures by a few "
                      "hundredths; more held-out frames, e.g. streamd calibrate --frames 256, "
                      "make the verdict steadier)")  # fmt: skip
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
            fm = x.get("found_matched")
            return Match(int(x["reference"]), int(x["found"]), int(x["matched"]),
                         float(x["mean_iou"]), None if fm is None else int(fm),
                         float(x.get("conf_shift", 0.0)))  # fmt: skip

        vs = m(d["vs_fp32"])
        if vs is None:
            raise ValueError("a guard report without its fp32 comparison")
        return GuardReport(str(d["precision"]), int(d["frames"]), vs, m(d["truth_fp32"]),
                           m(d["truth_candidate"]), float(d["conf"]), float(d["iou"]),
                           d["classes"], str(d.get("method", "")))  # fmt: skip


def judge(
    precision: str,
    fp32: Sequence[sv.Detections],
    candidate: Sequence[sv.Detections],
    truth: Sequence[npt.NDArray[np.float32] | None],
    thresholds: tuple[float, float, list[str] | None],
) -> GuardReport:
    """The figures of ``candidate`` against ``fp32`` on the same frames (both detected at
    ``conf - MARGIN``), and against ``truth`` at ``conf`` on those frames that have it
    (None: no ground truth for that frame)."""
    conf, iou, classes = thresholds
    known = [i for i, t in enumerate(truth) if t is not None]
    boxes = [t for t in truth if t is not None]
    f32 = [_above(fp32[i], conf) for i in known]
    cand = [_above(candidate[i], conf) for i in known]
    return GuardReport(
        precision=precision,
        frames=len(fp32),
        vs_fp32=agreement(fp32, candidate, conf),
        truth_fp32=match(boxes, f32) if known else None,
        truth_candidate=match(boxes, cand) if known else None,
        conf=conf,
        iou=iou,
        classes=classes,
    )
