"""Tracking with INT8 against FP32 (issue 16): the daemon on eval-tracking's scenes.

For each scene the real daemon (`streamd run`, at the imgsz given, every frame: a file read
with drop_policy block, the default tracker) runs once in FP32 (onnxruntime) and once in
INT8 on the backend given (onnx or openvino), calibrated by `streamd calibrate` on the
scene's own stream (64 frames, or the count given), and its
det events are scored by `streamd.evaluation` (IDF1, HOTA, MOTA, ID switches). The INT8
run takes the model whatever its guard said (floors 0), so its tracking is measured even
where `auto` would refuse it; the guard's verdict at the default floor is reported too.

    .venv/bin/python docs/benchmarks/precision_tracking.py /tmp/ev/prec crowd,crowd2,crowd3 320 \
        [onnx|openvino] [FRAMES] [RUNS, e.g. onnx:fp32,openvino:int8,onnx:int8,openvino:fp32]

A scene named ``<scene>seed<N>`` (``crowdseed21``) is that scene drawn with seed N.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from streamd.calibrate import calibrate
from streamd.config import load_config
from streamd.evaluation.daemon import run_daemon, write_pipeline
from streamd.evaluation.metrics import score
from streamd.evaluation.scenes import SCENES, make_scene

WEIGHTS = str(Path(__file__).resolve().parents[2] / "models" / "person-yolov8s.pt")


def main(work: Path, scenes: list[str], imgsz: int, backend: str = "onnx",
         frames: int = 64, runs: str = "onnx:fp32,BACKEND:int8") -> dict[str, object]:  # fmt: skip
    """``runs``: backend:precision pairs, each a daemon pass (BACKEND: the one given); a
    guarded precision is calibrated first on the scene (``frames``) and taken whatever its
    guard says."""
    out: dict[str, object] = {}
    for scene in scenes:
        base, _, seed = scene.partition("seed")  # e.g. crowdseed21: crowd drawn with seed 21
        if seed:
            SCENES[scene] = replace(SCENES[base], seed=int(seed))
        folder = work / scene
        folder.mkdir(parents=True, exist_ok=True)
        video, truth = make_scene(scene, folder)
        row: dict[str, object] = {}
        for pair in runs.replace("BACKEND", backend).split(","):
            kind, precision = pair.split(":")
            name = "fp32" if pair == "onnx:fp32" else ("int8" if pair == f"{backend}:int8"
                                                       else pair.replace(":", "-"))  # fmt: skip
            run_dir = folder / name
            run_dir.mkdir(exist_ok=True)
            model = {"weights": WEIGHTS, "imgsz": imgsz, "precision": precision,
                     "agnostic_nms": True,  # as eval-tracking runs the person model
                     "backend": kind, "guard_recall": 0.0, "guard_precision": 0.0}  # fmt: skip
            pipeline, endpoint = write_pipeline(run_dir, video, model, {}, {})
            if precision in ("int8", "bf16"):
                outcome = calibrate(load_config(pipeline), pipeline, frames, 60.0)
                row[f"guard_at_0.95 {name}"] = [r.verdict(0.95, 0.95)[1] for r in outcome.guard]
            run = run_daemon(pipeline, endpoint, run_dir / "daemon.log", 900)
            # Kept so other trackers can be replayed on the same detections.
            (run_dir / "frames.json").write_text(json.dumps([f.as_dict() for f in run.frames]))
            row[name] = score(truth, run.frames).as_dict()
            print(scene, name, row[name], flush=True)
        out[scene] = row
    return out


if __name__ == "__main__":
    extra = sys.argv[4:]
    result = main(
        Path(sys.argv[1]),
        sys.argv[2].split(","),
        int(sys.argv[3]),
        extra[0] if extra else "onnx",
        int(extra[1]) if len(extra) > 1 else 64,
        extra[2] if len(extra) > 2 else "onnx:fp32,BACKEND:int8",
    )
    print(json.dumps(result, indent=1))
