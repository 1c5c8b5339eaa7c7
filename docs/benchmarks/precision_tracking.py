"""Tracking with INT8 against FP32 (issue 16): the daemon on eval-tracking's scenes.

For each scene the real daemon (`streamd run`, at the imgsz given, every frame: a file read
with drop_policy block, the default tracker) runs once in FP32 (onnxruntime) and once in
INT8 on the backend given (onnx or openvino), calibrated by `streamd calibrate` on the
scene's own stream (64 frames, or the count given), and its
det events are scored by `streamd.evaluation` (IDF1, HOTA, MOTA, ID switches). The INT8
run takes the model whatever its guard said (floors 0), so its tracking is measured even
where `auto` would refuse it; the guard's verdict at the default floor is reported too.

    .venv/bin/python docs/benchmarks/precision_tracking.py /tmp/ev/prec crowd,crowd2,crowd3 320 \
        [onnx|openvino] [FRAMES]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from streamd.calibrate import calibrate
from streamd.config import load_config
from streamd.evaluation.daemon import run_daemon, write_pipeline
from streamd.evaluation.metrics import score
from streamd.evaluation.scenes import make_scene

WEIGHTS = str(Path(__file__).resolve().parents[2] / "models" / "person-yolov8s.pt")


def main(work: Path, scenes: list[str], imgsz: int, backend: str = "onnx",
         frames: int = 64) -> dict[str, object]:  # fmt: skip
    out: dict[str, object] = {}
    for scene in scenes:
        folder = work / scene
        folder.mkdir(parents=True, exist_ok=True)
        video, truth = make_scene(scene, folder)
        row: dict[str, object] = {}
        for precision in ("fp32", "int8"):
            run_dir = folder / precision
            run_dir.mkdir(exist_ok=True)
            model = {"weights": WEIGHTS, "imgsz": imgsz, "precision": precision,
                     "backend": backend if precision == "int8" else "onnx",
                     "guard_recall": 0.0, "guard_precision": 0.0}  # fmt: skip
            pipeline, endpoint = write_pipeline(run_dir, video, model, {}, {})
            if precision == "int8":
                outcome = calibrate(load_config(pipeline), pipeline, frames, 60.0)
                row["guard_at_0.95"] = [r.verdict(0.95, 0.95)[1] for r in outcome.guard]
            run = run_daemon(pipeline, endpoint, run_dir / "daemon.log", 900)
            row[precision] = score(truth, run.frames).as_dict()
            print(scene, precision, row[precision], flush=True)
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
    )
    print(json.dumps(result, indent=1))
