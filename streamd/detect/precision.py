"""Which precisions a backend may run, fastest first: ``model.precision`` resolved.

Pure logic (unit-tested on every machine). ``auto`` lists every precision the
backend runs faster than the one after it, so the factory tries them in turn
and takes the first whose accuracy guard passes; the last one of each list
needs no guard (FP32, or FP16 on CUDA as streamd always ran it).

| backend | auto (fastest first) | may be asked for |
|---|---|---|
| onnx on the CPU | int8 (with a calibration set), fp32 | fp32, int8 |
| openvino (CPU) | int8, bf16 (with a calibration set; bf16 natively), fp32 | fp32, bf16, int8 |
| onnx on CUDA | fp32 | fp32 (int8 on a GPU: tensorrt) |
| torch on the CPU | fp32 | fp32, bf16 |
| torch on CUDA | fp16 | fp16, bf16, fp32 |
| tensorrt | int8 (with a calibration set), fp16 | int8, fp16, fp32 |

Measured on our 2-core CPU (docs/benchmarks.md): onnxruntime has no x86 bf16
or fp16 kernels; OpenVINO's int8 ran fastest, its bf16 next (both guarded: a
calibration set is what the guard judges on), then FP32.
"""

from __future__ import annotations

from streamd.detect.base import DetectorError

GUARDED = {"int8", "bf16"}  # judged by the accuracy guard where a calibration set exists

_ALLOWED = {
    ("onnx", False): ("fp32", "int8"),
    ("onnx", True): ("fp32",),
    ("openvino", False): ("fp32", "bf16", "int8"),
    ("torch", False): ("fp32", "bf16"),
    ("torch", True): ("fp16", "bf16", "fp32"),
    ("tensorrt", True): ("int8", "fp16", "fp32"),
}


def precision_candidates(
    requested: str, backend: str, cuda: bool, calibrated: bool, bf16: bool = False
) -> tuple[list[str], str]:
    """(precisions to try in order, why) for ``model.precision``; DetectorError when the
    backend cannot run what was asked for. ``bf16``: the CPU has native BF16 (OpenVINO)."""
    allowed = _ALLOWED.get((backend, cuda), ("fp32",))
    where = f"{backend} on {'CUDA' if cuda else 'the CPU'}"
    if requested == "auto":
        base = "fp16" if cuda and backend in ("torch", "tensorrt") else "fp32"
        if backend == "openvino" and calibrated:
            chain = ["int8", "bf16", base] if bf16 else ["int8", base]
            return chain, (f"{', then '.join(chain[:-1])} if its guard passes (calibration set "
                           f"present), else {base}")  # fmt: skip
        if "int8" in allowed and calibrated:
            return [
                "int8",
                base,
            ], f"int8 if its guard passes (calibration set present), else {base}"
        if "int8" in allowed:
            return [base], f"{base}: no calibration set for int8 (streamd calibrate makes one)"
        return [base], f"{base}: the fastest {where} runs"
    if requested not in allowed:
        raise DetectorError(
            f"model.precision {requested}: {where} runs {', '.join(allowed)} "
            + ("(int8 on a GPU needs backend tensorrt)" if requested == "int8" and cuda else "")
        )
    if requested == "int8" and not calibrated:
        raise DetectorError(
            "model.precision int8 needs a calibration set: run `streamd calibrate PIPELINE` "
            "(or point model.calibration at a folder of frames)"
        )
    return [requested], "asked for"
