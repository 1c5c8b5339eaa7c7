"""onnxruntime against OpenVINO on the same graphs, raw runtimes, alternating 1 s windows.

Why OpenVINO is not a streamd backend (issue 16): FP32, OpenVINO's BF16 (this EPYC
has AVX-512 BF16) and the INT8 QDQ model streamd quantises, each on both runtimes
where it applies, 2 threads, latency mode, the input letterboxed as the pipeline
feeds it (640x360 at imgsz 320: 1x3x192x320). Needs ``pip install openvino`` (not a
streamd dependency).

    .venv/bin/python docs/benchmarks/openvino_ab.py FP32.onnx INT8.onnx 1,4 40
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort
import openvino as ov

from streamd.detect.onnx_backend import session_options


def main(fp32: str, int8: str, batches: list[int], seconds: float) -> dict[str, Any]:
    core = ov.Core()
    runs: dict[str, Callable[[np.ndarray], Any]] = {}
    for name, path in (("onnxruntime fp32", fp32), ("onnxruntime int8", int8)):
        s = ort.InferenceSession(path, session_options(2), providers=["CPUExecutionProvider"])
        runs[name] = lambda x, s=s: s.run(None, {"images": x})
    for name, path, hint in (("openvino fp32", fp32, "f32"), ("openvino bf16", fp32, "bf16"),
                             ("openvino int8", int8, "f32")):  # fmt: skip
        model = core.read_model(path)
        model.reshape({"images": [-1, 3, 192, 320]})
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                                     "INFERENCE_NUM_THREADS": 2,
                                                     "PERFORMANCE_HINT": "LATENCY"})  # fmt: skip
        req = compiled.create_infer_request()
        runs[name] = lambda x, req=req: req.infer({0: x})
    out: dict[str, Any] = {"openvino": ov.__version__, "onnxruntime": ort.__version__}
    rng = np.random.default_rng(0)
    for b in batches:
        x = rng.random((b, 3, 192, 320), dtype=np.float32)
        done = dict.fromkeys(runs, 0)
        spent = dict.fromkeys(runs, 0.0)
        for fn in runs.values():
            fn(x)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for name, fn in runs.items():
                t0 = time.perf_counter()
                while time.perf_counter() - t0 < 1.0:
                    fn(x)
                    done[name] += b
                spent[name] += time.perf_counter() - t0
        out[f"batch {b}"] = {k: round(done[k] / spent[k], 1) for k in runs}
        print(b, out[f"batch {b}"], flush=True)
    return out


if __name__ == "__main__":
    sizes = [int(b) for b in sys.argv[3].split(",")]
    print(json.dumps(main(sys.argv[1], sys.argv[2], sizes, float(sys.argv[4])), indent=1))
