"""INT8 variants on both CPU runtimes, raw (model only), alternating 1 s windows (issue 16).

``build`` quantises the FP32 export (``FP32.onnx``: streamd's cached export, dynamic shape)
on the bench clip's calibration set (64 frames, 48 calibrate) into WORK: onnxruntime QDQ
U8S8 per channel (what streamd's onnx int8 runs), QOperator, U8U8, S8S8 (activations
symmetric), QDQ with SiLU's Sigmoid and Mul left in float; NNCF INT8 for OpenVINO with the
MIXED and PERFORMANCE presets. ``run`` times the named contenders on the clip's held-out
frames letterboxed as the pipeline feeds them (1x3x192x320 at 320), each in turn for 1 s.

    .venv/bin/python docs/benchmarks/int8_variants.py build WORK FP32.onnx
    .venv/bin/python docs/benchmarks/int8_variants.py run WORK FP32.onnx 1,4 40 \\
        ort_fp32,ort_int8,ort_qop,ort_u8u8,ort_s8s8,ort_silufp,ov_fp32,ov_bf16,ov_mixed,ov_perf
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from streamd.bench import BenchSpec, _calibration
from streamd.detect.calibration import load_calibration
from streamd.detect.onnx_backend import session_options
from streamd.detect.quantize import _Reader, head_nodes, letterboxed

WEIGHTS = str(Path(__file__).resolve().parents[2] / "models" / "person-yolov8s.pt")


def build(work: Path, fp32: Path) -> None:
    import nncf
    import onnx
    import openvino as ov
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    folder = _calibration(BenchSpec(weights=WEIGHTS, imgsz=320, precision="int8"), work)
    assert folder is not None
    calib = load_calibration(folder)
    assert calib is not None
    inputs = letterboxed(calib.images(calib.calibrate), 320, 32)
    pre = work / "pre.onnx"
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    g = onnx.load(str(pre))
    head = head_nodes(g)
    sig_out = {o for n in g.graph.node if n.op_type == "Sigmoid" for o in n.output}
    silu = [n.name for n in g.graph.node if n.name not in head and (
        n.op_type == "Sigmoid" or (n.op_type == "Mul" and sig_out & set(n.input)))]  # fmt: skip
    u8, s8 = QuantType.QUInt8, QuantType.QInt8
    variants: dict[str, dict[str, Any]] = {
        "ort_int8": {"quant_format": QuantFormat.QDQ, "activation_type": u8, "weight_type": s8},
        "ort_qop": {"quant_format": QuantFormat.QOperator, "activation_type": u8,
                    "weight_type": s8},
        "ort_u8u8": {"quant_format": QuantFormat.QDQ, "activation_type": u8, "weight_type": u8},
        "ort_s8s8": {"quant_format": QuantFormat.QDQ, "activation_type": s8, "weight_type": s8,
                     "extra_options": {"ActivationSymmetric": True}},
        "ort_silufp": {"quant_format": QuantFormat.QDQ, "activation_type": u8,
                       "weight_type": s8, "exclude": silu},
    }  # fmt: skip
    for name, kw in variants.items():
        exclude = head + kw.pop("exclude", [])
        quantize_static(str(pre), str(work / f"{name}.onnx"), _Reader(g.graph.input[0].name,
                        inputs), per_channel=True, calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=exclude, **kw)  # fmt: skip
        print("built", name, flush=True)
    for name, preset in (("ov_mixed", nncf.QuantizationPreset.MIXED),
                         ("ov_perf", nncf.QuantizationPreset.PERFORMANCE)):  # fmt: skip
        model = ov.convert_model(str(fp32))
        keep = set(head)
        ignored = [op.get_friendly_name() for op in model.get_ordered_ops()
                   if op.get_friendly_name() in keep
                   or op.get_type_name() == "Sigmoid"]  # fmt: skip
        scope = nncf.IgnoredScope(names=ignored, validate=False)
        q = nncf.quantize(model, nncf.Dataset(inputs), preset=preset, subset_size=len(inputs),
                          ignored_scope=scope)  # fmt: skip
        ov.save_model(q, str(work / f"{name}.xml"))
        print("built", name, flush=True)


def contenders(work: Path, fp32: Path, shape: list[int]) -> dict[str, Callable[[], Any]]:
    import onnxruntime as ort
    import openvino as ov

    core = ov.Core()

    def ort_run(path: Path) -> Any:
        s = ort.InferenceSession(str(path), session_options(2), providers=["CPUExecutionProvider"])
        name = s.get_inputs()[0].name
        return lambda x: s.run(None, {name: x})

    def ov_run(path: Path, hint: str = "f32") -> Any:
        m = core.read_model(str(path))
        m.reshape({0: shape})
        c = core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": hint,
                                          "INFERENCE_NUM_THREADS": 2,
                                          "PERFORMANCE_HINT": "LATENCY",
                                          "ENABLE_CPU_PINNING": False})  # fmt: skip
        r = c.create_infer_request()
        return lambda x: r.infer({0: x})

    out: dict[str, Callable[[], Any]] = {
        "ort_fp32": lambda: ort_run(fp32), "ov_fp32": lambda: ov_run(fp32),
        "ov_bf16": lambda: ov_run(fp32, "bf16"),
        "ov_mixed": lambda: ov_run(work / "ov_mixed.xml"),
        "ov_perf": lambda: ov_run(work / "ov_perf.xml"),
    }  # fmt: skip
    for name in ("ort_int8", "ort_qop", "ort_u8u8", "ort_s8s8", "ort_silufp"):
        out[name] = lambda name=name: ort_run(work / f"{name}.onnx")  # type: ignore[misc]
    return out


def run(work: Path, fp32: Path, batches: list[int], seconds: float,
        names: list[str]) -> dict[str, Any]:  # fmt: skip
    calib = load_calibration(work / "bench.calibration")
    assert calib is not None
    frames = letterboxed(calib.images(calib.held), 320, 32)
    out: dict[str, Any] = {}
    for b in batches:
        x = np.ascontiguousarray(np.concatenate([frames[i % len(frames)] for i in range(b)]))
        makers = contenders(work, fp32, list(x.shape))
        runs = {n: makers[n]() for n in names}
        for fn in runs.values():
            fn(x)
        done = dict.fromkeys(runs, 0)
        spent = dict.fromkeys(runs, 0.0)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for n, fn in runs.items():
                t0 = time.perf_counter()
                while time.perf_counter() - t0 < 1.0:
                    fn(x)
                    done[n] += b
                spent[n] += time.perf_counter() - t0
        fps = {k: round(done[k] / spent[k], 1) for k in runs}
        base = fps.get("ort_fp32")
        out[f"batch {b}"] = {k: [v, round(v / base, 2) if base else None] for k, v in fps.items()}
        print(b, json.dumps(out[f"batch {b}"]), flush=True)
    return out


if __name__ == "__main__":
    work, fp32 = Path(sys.argv[2]), Path(sys.argv[3])
    work.mkdir(parents=True, exist_ok=True)
    if sys.argv[1] == "build":
        build(work, fp32)
    else:
        result = run(work, fp32, [int(b) for b in sys.argv[4].split(",")], float(sys.argv[5]),
                     sys.argv[6].split(","))  # fmt: skip
        print(json.dumps(result, indent=1))
