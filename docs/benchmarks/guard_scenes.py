"""The accuracy guard on eval-tracking's crowd scenes (issue 16): calibrate, print verdicts.

For each scene and each calibration-set size, `streamd calibrate` samples the scene's own
stream (every fourth frame held out for the guard), builds the model the backend's
``auto`` would run and takes the guard on the held-out frames (floors 0, so every
candidate's figures are taken); the verdicts at the default floor 0.95 are printed.

    .venv/bin/python docs/benchmarks/guard_scenes.py /tmp/ev/guard crowd,crowd2,crowd3 320 \\
        openvino 64,256
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from streamd.calibrate import calibrate
from streamd.config import load_config
from streamd.evaluation.daemon import write_pipeline
from streamd.evaluation.scenes import make_scene

WEIGHTS = str(Path(__file__).resolve().parents[2] / "models" / "person-yolov8s.pt")


def main(work: Path, scenes: list[str], imgsz: int, backend: str,
         sizes: list[int]) -> dict[str, object]:  # fmt: skip
    out: dict[str, object] = {}
    for scene in scenes:
        folder = work / scene
        folder.mkdir(parents=True, exist_ok=True)
        video, _ = make_scene(scene, folder)
        for frames in sizes:
            run_dir = folder / f"{backend}-{frames}"
            run_dir.mkdir(exist_ok=True)
            model = {"weights": WEIGHTS, "imgsz": imgsz, "backend": backend,
                     "precision": "int8", "guard_recall": 0.0,
                     "guard_precision": 0.0}  # fmt: skip
            pipeline, _ = write_pipeline(run_dir, video, model, {}, {})
            outcome = calibrate(load_config(pipeline), pipeline, frames, 60.0)
            row = {"verdicts": [r.verdict(0.95, 0.95)[1] for r in outcome.guard],
                   "reports": [r.to_json() for r in outcome.guard]}  # fmt: skip
            out[f"{scene} {frames}"] = row
            print(scene, frames, row["verdicts"], flush=True)
    return out


if __name__ == "__main__":
    result = main(Path(sys.argv[1]), sys.argv[2].split(","), int(sys.argv[3]), sys.argv[4],
                  [int(n) for n in sys.argv[5].split(",")])  # fmt: skip
    print(json.dumps(result, indent=1))
