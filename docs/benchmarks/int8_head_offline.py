"""INT8 against FP32 on many ground-truth scenes, offline (issue 16): detections and tracking.

For each scene: the detector that `streamd run` builds (the same factory, the scene's
calibration set as `streamd calibrate` samples it, 256 frames at 320) runs on every frame
of the clip, one frame at a time, in FP32 (onnxruntime) and in OpenVINO INT8, built two
ways: ``old``, the head's last convolutions quantised (streamd before 5cb0905), and
``new``, left in FP32 (what streamd builds since); ``ort_old`` and ``ort_new``: the same
two on onnxruntime (QDQ; old: streamd before f634b40). The default tracker is then replayed
on each run's boxes (``streamd.evaluation.offline.replay``, the daemon's tracker fed as the
daemon feeds it) and scored against the scene's truth (IDF1, HOTA, MOTA).

The daemon's own boxes were the same as these, box for box, on all 29 scenes of the
earlier daemon runs (`precision_tracking.py`, FP32 and the old INT8): that check is
``agree`` in the output, where ``<work>/<scene>/{fp32,int8}/frames.json`` exist.

    # scenes (crowd drawn with a seed: crowdseed201; named scenes too) and their sets
    .venv/bin/python docs/benchmarks/int8_head_offline.py prep WORK crowdseed201,crowd4
    .venv/bin/python docs/benchmarks/int8_head_offline.py track WORK SCENES fp32,old,new OUT.json
    .venv/bin/python docs/benchmarks/int8_head_offline.py boxes WORK SCENES old,new OUT.json
    .venv/bin/python docs/benchmarks/int8_head_offline.py summary OUT.json [OUT2.json ...]
"""

from __future__ import annotations

import json
import statistics as st
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt
import supervision as sv
from scipy.optimize import linear_sum_assignment

from streamd.calibrate import calibration_folder, sample, to_set
from streamd.config import ModelConfig, TrackerConfig, load_config
from streamd.detect import quantize
from streamd.detect.factory import create_detector
from streamd.evaluation.daemon import write_pipeline
from streamd.evaluation.metrics import TrackedFrame, score
from streamd.evaluation.offline import agreement, replay
from streamd.evaluation.scenes import SCENES, make_scene
from streamd.sources.reader import to_bgr

WEIGHTS = str(Path(__file__).resolve().parents[2] / "models" / "person-yolov8s.pt")
FPS = 25.0  # the crowd scenes'
FLOAT_NODES = quantize.float_nodes  # what streamd leaves in FP32 now


def prep(work: Path, scenes: list[str]) -> None:
    for scene in scenes:
        base, _, seed = scene.partition("seed")
        if seed:
            SCENES[scene] = replace(SCENES[base], seed=int(seed))
        run = work / scene / "int8"
        if (run / "pipeline.calibration").exists():
            continue
        run.mkdir(parents=True, exist_ok=True)
        video, _ = make_scene(scene, work / scene)
        model = {"weights": WEIGHTS, "imgsz": 320, "precision": "int8", "agnostic_nms": True,
                 "backend": "openvino", "guard_recall": 0.0, "guard_precision": 0.0}  # fmt: skip
        pipeline, _ = write_pipeline(run, video, model, {}, {})
        cfg = load_config(pipeline)
        cs = to_set(calibration_folder(cfg, pipeline), sample(cfg, 256, 60.0), 256, {})
        print(scene, len(cs.frames), flush=True)


def pictures(video: Path) -> list[npt.NDArray[np.uint8]]:
    with av.open(str(video)) as c:
        return [to_bgr(p) for p in c.decode(video=0)]


def detect(scene_dir: Path, variant: str, pics: list[npt.NDArray[np.uint8]]) -> list[TrackedFrame]:
    """Every frame's boxes (ids -1) from the detector ``variant``: fp32 (onnxruntime), old or
    new (OpenVINO INT8, the head's last convolutions quantised or not), ort_old or ort_new
    (the same on onnxruntime)."""
    # old: the build before 5cb0905, the head's last convolutions quantised with the rest.
    quantize.float_nodes = quantize.head_nodes if variant.endswith("old") else FLOAT_NODES
    fp32 = variant == "fp32"
    cfg = ModelConfig.model_validate({
        "weights": WEIGHTS, "imgsz": 320, "precision": "fp32" if fp32 else "int8",
        "agnostic_nms": True,  # as eval-tracking runs the person model
        "backend": "onnx" if fp32 or variant.startswith("ort") else "openvino",
        "guard_recall": 0.0, "guard_precision": 0.0,
        "calibration": str(scene_dir / "int8" / "pipeline.calibration"),
        "cache_dir": str(scene_dir.parent / f"cache-{variant}")})  # fmt: skip
    detector = create_detector(cfg, max_batch=1)
    out = []
    for i, picture in enumerate(pics):
        (d,) = detector.detect([picture])
        conf = np.ones(len(d)) if d.confidence is None else d.confidence
        out.append(TrackedFrame(i, i / FPS, d.xyxy.astype(np.float64), conf.astype(np.float64),
                                np.full(len(d), -1, np.int64)))  # fmt: skip
    return out


Runs = dict[str, list[TrackedFrame]]  # a scene's detections, by variant


def _each(work: Path, scenes: list[str], variants: list[str], out: Path,
          one: Callable[[Path, str, Runs], dict[str, Any]]) -> None:  # fmt: skip
    res: dict[str, dict[str, Any]] = json.loads(out.read_text()) if out.exists() else {}
    for scene in scenes:
        todo = [v for v in variants if v not in res.get(scene, {})]
        if not todo:
            continue
        pics = pictures(work / scene / f"{scene}.mp4")
        dets: Runs = {}
        for v in todo:
            t0 = time.monotonic()
            dets[v] = detect(work / scene, v, pics)
            res.setdefault(scene, {})[v] = one(work / scene, v, dets) | {
                "s": round(time.monotonic() - t0, 1)}  # fmt: skip
            out.write_text(json.dumps(res))
            print(scene, v, res[scene][v], flush=True)


def track(work: Path, scenes: list[str], variants: list[str], out: Path) -> None:
    def one(d: Path, v: str, dets: Runs) -> dict[str, Any]:
        truth = json.loads((d / f"{d.name}.truth.json").read_text())["frames"]
        tracked = replay(dets[v], TrackerConfig(), d / f"{d.name}.mp4")
        row: dict[str, Any] = {"score": score(truth, tracked).as_dict(),
                               "boxes": sum(len(f.conf) for f in dets[v])}  # fmt: skip
        kept = d / {"fp32": "fp32", "old": "int8"}.get(v, "-") / "frames.json"  # 29 scenes
        if kept.exists():  # the daemon's run of this detector: the same boxes?
            daemon = [TrackedFrame.from_dict(x) for x in json.loads(kept.read_text())]
            a = agreement(daemon, tracked)
            row["agree"] = {"frames": a.frames, "boxes": a.boxes, "same_boxes": a.same_boxes}
        return row

    _each(work, scenes, variants, out, one)


def boxes(work: Path, scenes: list[str], variants: list[str], out: Path) -> None:
    """Each variant's boxes against FP32's, frame by frame (one-to-one at IoU >= 0.5)."""

    def one(d: Path, v: str, dets: Runs) -> dict[str, Any]:
        if "fp32" not in dets:
            dets["fp32"] = detect(d, "fp32", pictures(d / f"{d.name}.mp4"))
        return _agree(dets["fp32"], dets[v])

    _each(work, scenes, variants, out, one)


def _agree(ref: list[TrackedFrame], got: list[TrackedFrame]) -> dict[str, Any]:
    n_ref = n_got = matched = cross = 0
    dconf = iou_sum = 0.0
    for a, b in zip(ref, got, strict=True):
        n_ref, n_got = n_ref + len(a.conf), n_got + len(b.conf)
        iou = sv.box_iou_batch(a.boxes, b.boxes)
        r, c = linear_sum_assignment(-iou)
        ok = iou[r, c] >= 0.5
        r, c = r[ok], c[ok]
        matched += len(r)
        dconf += float(np.abs(a.conf[r] - b.conf[c]).sum())
        iou_sum += float(iou[r, c].sum())
        cross += int(((a.conf[r] >= 0.5) != (b.conf[c] >= 0.5)).sum())  # BoT-SORT's split
    m = max(matched, 1)
    return {"fp32_boxes": n_ref, "boxes": n_got, "matched": matched, "conf_mae": dconf / m,
            "mean_iou": iou_sum / m, "crossed_0.5": cross}  # fmt: skip


def summary(files: list[Path]) -> dict[str, Any]:
    res: dict[str, dict[str, Any]] = {}
    for f in files:
        for scene, row in json.loads(f.read_text()).items():
            res.setdefault(scene, {}).update(row)
    out: dict[str, Any] = {}
    for v in ("old", "new", "ort_old", "ort_new"):
        scenes = [s for s in res if "fp32" in res[s] and v in res[s]]
        if len(scenes) < 2:
            continue
        for m in ("idf1", "hota", "mota"):
            d = [res[s][v]["score"][m] - res[s]["fp32"]["score"][m] for s in scenes]
            mean, se = st.mean(d), st.stdev(d) / len(d) ** 0.5
            out[f"{v} {m}"] = {"n": len(d), "mean": mean, "se": se, "median": st.median(d),
                               "lose_over_0.02": sum(x < -0.02 for x in d),
                               "min": min(d), "max": max(d)}  # fmt: skip
        lost = [res[s]["fp32"]["boxes"] - res[s][v]["boxes"] for s in scenes]
        out[f"{v} boxes fewer than fp32"] = {"mean": st.mean(lost), "se": st.stdev(lost)
                                             / len(lost) ** 0.5}  # fmt: skip
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "prep":
        prep(Path(args[0]), args[1].split(","))
    elif cmd in ("track", "boxes"):
        {"track": track, "boxes": boxes}[cmd](Path(args[0]), args[1].split(","),
                                              args[2].split(","), Path(args[3]))  # fmt: skip
    else:
        summary([Path(a) for a in args])
