"""Model-only A/B of precisions in one process, in alternating 1 s windows (issue 16).

On a shared machine separate runs drift by 2x from one minute to the next; windows
that take turns see the same interference, so their ratio holds. Contenders (the
person model, the bench clip's frames, onnxruntime with streamd's session options):

- ``before``: FP32 with the letterbox as it was before issue 16 (torch's float resize;
  the old ``prepost.preprocess`` from git, passed as a file), i.e. today's FP32;
- ``fp32``: FP32 now (uint8 OpenCV resize first);
- ``int8``: the calibrated INT8 model as ``auto`` runs it (its guard figures printed).

    .venv/bin/python docs/benchmarks/precision_ab.py OLD_PREPOST.py 320 1,4 60
"""

from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from streamd.bench import BenchSpec, _calibration, _frames, _model_cfg
from streamd.detect import create_detector
from streamd.detect.prepost import input_shape, postprocess, to_detections

WEIGHTS = str(Path(__file__).resolve().parents[2] / "models" / "person-yolov8s.pt")


def _old_preprocess(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("old_prepost", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_prepost"] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module.preprocess


def main(old_prepost: str, imgsz: int, batches: list[int], seconds: float) -> dict[str, Any]:
    spec = BenchSpec(weights=WEIGHTS, imgsz=imgsz, backend="onnx", precision="auto")
    with tempfile.TemporaryDirectory() as tmp:
        frames = _frames(spec, Path(tmp), max(batches))
        int8 = create_detector(_model_cfg(spec, _calibration(spec, Path(tmp))), 8)
    fp32 = create_detector(_model_cfg(replace(spec, precision="fp32")), 8)
    old = _old_preprocess(old_prepost)

    def before(batch: list[Any]) -> None:  # FP32's detect() with the old letterbox
        r = fp32.runner  # type: ignore[attr-defined]
        shape = input_shape([f.shape for f in batch], imgsz, 32, True)
        x, placements = old(batch, shape, r.device, r.dtype, r.buffer(len(batch), shape))
        to_detections(postprocess(r.run(x, len(batch)), placements, 0.25, 0.7, None),
                      len(batch), fp32.names)  # fmt: skip

    contenders = {"before": before, "fp32": fp32.detect, "int8": int8.detect}
    out: dict[str, Any] = {"imgsz": imgsz, "int8_backend": int8.backend,
                           "guard": [g.verdict(0.95, 0.95)[1] for g in
                                     getattr(int8, "guard_reports", [])]}  # fmt: skip
    for b in batches:
        batch = [frames[i % len(frames)] for i in range(b)]
        done = dict.fromkeys(contenders, 0)
        spent = dict.fromkeys(contenders, 0.0)
        for fn in contenders.values():
            fn(batch)  # warm this shape
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for name, fn in contenders.items():
                t0 = time.perf_counter()
                while time.perf_counter() - t0 < 1.0:
                    fn(batch)
                    done[name] += b
                spent[name] += time.perf_counter() - t0
        fps = {k: round(done[k] / spent[k], 1) for k in contenders}
        out[f"batch {b}"] = {**fps, "int8/before": round(fps["int8"] / fps["before"], 2),
                             "int8/fp32": round(fps["int8"] / fps["fp32"], 2)}  # fmt: skip
        print(imgsz, b, out[f"batch {b}"], flush=True)
    return out


if __name__ == "__main__":
    sizes = [int(b) for b in sys.argv[3].split(",")]
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), sizes, float(sys.argv[4])), indent=1))
