"""Model-only img/s of the old and new INT8 builds (OpenVINO IR and onnxruntime QDQ) that
``int8_head_offline.py`` cached for one scene, taking alternating 1 s turns (2 threads).

    .venv/bin/python docs/benchmarks/int8_head_speed.py /tmp/ev5/crowd 30 speed.json
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import openvino as ov

from streamd.detect.calibration import load_calibration
from streamd.detect.onnx_backend import session_options
from streamd.detect.quantize import letterboxed

VARIANTS = ("old", "new", "ort_old", "ort_new")


def runner(path: str, x: npt.NDArray[np.float32]) -> Callable[[], Any]:
    if path.endswith(".onnx"):
        s = ort.InferenceSession(path, session_options(2), providers=["CPUExecutionProvider"])
        name = s.get_inputs()[0].name
        return lambda: s.run(None, {name: x})
    m = ov.Core().read_model(path)
    m.reshape({0: list(x.shape)})
    c = ov.Core().compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                           "INFERENCE_NUM_THREADS": 2,
                                           "PERFORMANCE_HINT": "LATENCY",
                                           "ENABLE_CPU_PINNING": False})  # fmt: skip
    r = c.create_infer_request()
    return lambda: r.infer({0: x})


def main(scene: Path, seconds: float, out: Path) -> None:
    calib = load_calibration(scene / "int8" / "pipeline.calibration")
    assert calib is not None
    digest = calib.digest[:12]
    paths = {v: glob.glob(f"{scene.parent}/cache-{v}/*-c{digest}-*."
                          + ("onnx" if v.startswith("ort") else "xml"))[0]
             for v in VARIANTS}  # fmt: skip
    frames = letterboxed(calib.images(calib.held), 320, 32)
    res: dict[str, Any] = {"paths": paths}
    for b in (1, 4):
        x = np.ascontiguousarray(np.concatenate([frames[i % len(frames)] for i in range(b)]))
        runs = {n: runner(p, x) for n, p in paths.items()}
        for fn in runs.values():
            fn()
        done, spent = dict.fromkeys(runs, 0), dict.fromkeys(runs, 0.0)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for n, fn in runs.items():
                t0 = time.perf_counter()
                while time.perf_counter() - t0 < 1.0:
                    fn()
                    done[n] += b
                spent[n] += time.perf_counter() - t0
        fps = {k: round(done[k] / spent[k], 1) for k in runs}
        res[f"batch {b}"] = {
            **fps,
            "openvino new/old": round(fps["new"] / fps["old"], 3),
            "onnxruntime new/old": round(fps["ort_new"] / fps["ort_old"], 3),
        }
        print(b, res[f"batch {b}"], flush=True)
    res["load_after"] = os.getloadavg()
    out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), float(sys.argv[2]), Path(sys.argv[3]))
