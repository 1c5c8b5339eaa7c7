"""Pick and build the detector backend named by the configuration."""

from __future__ import annotations

import logging

from streamd.config import ModelConfig
from streamd.detect.base import Detector, DetectorError

log = logging.getLogger(__name__)


def choose_backend(requested: str, cuda: bool, onnx_runtime: bool) -> tuple[str, str]:
    """(backend, why) for ``model.backend``; raises DetectorError if it cannot be had."""
    if requested == "onnx":
        if not onnx_runtime:
            raise DetectorError(
                "model.backend onnx: onnxruntime (and onnx, for the export) are not installed; "
                "pip install 'streamd[onnx]' (onnxruntime-gpu on a GPU)"
            )
        return "onnx", "asked for"
    if requested in ("torch", "cpu"):
        return "torch", "asked for"
    if cuda:  # auto: the GPU path (TensorRT joins here when present)
        return "torch", "CUDA is present: torch FP16"
    if onnx_runtime:
        return "onnx", "no CUDA; onnxruntime is installed and beats torch on CPUs"
    return "torch", "no CUDA and no onnxruntime: torch on the CPU"


def create_detector(cfg: ModelConfig, max_batch: int = 8) -> Detector:
    """Build the backend; ``auto`` takes the fastest one present and says which and why."""
    import torch

    from streamd.detect.onnx_export import onnxruntime_available
    from streamd.detect.ultralytics_backend import UltralyticsDetector, resolve_device

    cuda = resolve_device(cfg.device, cfg.backend).startswith("cuda") and torch.cuda.is_available()
    kind, why = choose_backend(cfg.backend, cuda, onnxruntime_available())
    detector = UltralyticsDetector(cfg, onnx_batch=max_batch if kind == "onnx" else None)
    detector.warmup()  # the first call builds/fuses the model: keep it out of frame latency
    log.info(
        "detector backend=%s (asked %s: %s) device=%s weights=%s classes=%s",
        detector.backend,
        cfg.backend,
        why,
        detector.device,
        cfg.weights,
        detector.names,
    )
    return detector
