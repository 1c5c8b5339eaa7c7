"""Model-only A/B of precisions in one process, in alternating 1 s windows (issue 16).

On a shared machine separate runs drift by 2x from one minute to the next; windows
that take turns see the same interference, so their ratio holds. Contenders (the
person model, the bench clip's frames, each through the detector's own detect():
letterbox, model, NMS):

- ``before``: FP32 with the letterbox as it was before issue 16 (torch's float resize;
  the old ``prepost.preprocess`` from git, passed as a file), i.e. today's FP32 on
  onnxruntime, the target's baseline;
- ``fp32``: onnxruntime FP32 now (uint8 OpenCV resize first);
- ``onnx-int8``: onnxruntime's calibrated INT8 (QDQ);
- ``auto``: what ``model.precision: auto`` runs with the calibration set (OpenVINO INT8
  where OpenVINO is installed; its guard figures printed);
- ``openvino-bf16``: OpenVINO BF16 (auto's fallback when INT8's guard refuses).

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
    spec = BenchSpec(weights=WEIGHTS, imgsz=imgsz, backend="auto", precision="auto")
    with tempfile.TemporaryDirectory() as tmp:
        frames = _frames(spec, Path(tmp), max(batches))
        calibration = _calibration(spec, Path(tmp))
        auto = create_detector(_model_cfg(spec, calibration), 8)
        onnx_int8 = create_detector(
            _model_cfg(replace(spec, backend="onnx", precision="int8"), calibration), 8
        )
        bf16 = create_detector(
            _model_cfg(replace(spec, backend="openvino", precision="bf16"), calibration), 8
        )
    fp32 = create_detector(_model_cfg(replace(spec, backend="onnx", precision="fp32")), 8)
    old = _old_preprocess(old_prepost)

    def before(batch: list[Any]) -> None:  # FP32's detect() with the old letterbox
        r = fp32.runner  # type: ignore[attr-defined]
        shape = input_shape([f.shape for f in batch], imgsz, 32, True)
        x, placements = old(batch, shape, r.device, r.dtype, r.buffer(len(batch), shape))
        to_detections(postprocess(r.run(x, len(batch)), placements, 0.25, 0.7, None),
                      len(batch), fp32.names)  # fmt: skip

    contenders = {"before": before, "fp32": fp32.detect, "onnx-int8": onnx_int8.detect,
                  "auto": auto.detect, "openvino-bf16": bf16.detect}  # fmt: skip
    out: dict[str, Any] = {
        "imgsz": imgsz,
        "backends": {k: d.backend for k, d in
                     (("fp32", fp32), ("onnx-int8", onnx_int8), ("auto", auto),
                      ("openvino-bf16", bf16))},
        "guard": {k: [g.verdict(0.95, 0.95)[1] for g in getattr(d, "guard_reports", [])]
                  for k, d in (("onnx-int8", onnx_int8), ("auto", auto),
                               ("openvino-bf16", bf16))},
    }  # fmt: skip
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
        out[f"batch {b}"] = {**fps, **{f"{k}/before": round(fps[k] / fps["before"], 2)
                                       for k in contenders if k != "before"}}  # fmt: skip
        print(imgsz, b, out[f"batch {b}"], flush=True)
    return out


if __name__ == "__main__":
    sizes = [int(b) for b in sys.argv[3].split(",")]
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]), sizes, float(sys.argv[4])), indent=1))
