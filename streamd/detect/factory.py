"""Pick and build the detector backend named by the configuration."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from streamd.config import ModelConfig
from streamd.detect.base import Detector, DetectorError

if TYPE_CHECKING:  # torch is imported by the inference worker only, never the supervisor
    import torch

    from streamd.detect.yolo import Runner

log = logging.getLogger(__name__)


def choose_backend(
    requested: str, cuda: bool, onnx_runtime: bool, tensorrt: bool = False
) -> tuple[str, str]:
    """(backend, why) for ``model.backend``; raises DetectorError if it cannot be had."""
    if requested == "null":
        return "null", "asked for: a measurement backend (no model)"
    if requested == "tensorrt":
        if not cuda:
            raise DetectorError("model.backend tensorrt: needs a CUDA GPU and none is usable")
        if not tensorrt:
            raise DetectorError(
                "model.backend tensorrt: TensorRT is not installed; pip install tensorrt "
                "(or use backend torch: FP16 with CUDA graphs)"
            )
        return "tensorrt", "asked for"
    if requested == "onnx":
        if not onnx_runtime:
            raise DetectorError(
                "model.backend onnx: onnxruntime (and onnx, for the export) are not installed; "
                "pip install 'streamd[onnx]' (onnxruntime-gpu on a GPU)"
            )
        return "onnx", "asked for"
    if requested in ("torch", "cpu"):
        return "torch", "asked for"
    if cuda and tensorrt:
        return "tensorrt", "CUDA and TensorRT are present: TensorRT FP16 engine"
    if cuda:
        return "torch", "CUDA is present, TensorRT is not: torch FP16"
    if onnx_runtime:
        return "onnx", "no CUDA; onnxruntime is installed and beats torch on CPUs"
    return "torch", "no CUDA and no onnxruntime: torch on the CPU"


def resolve_device(device: str, backend: str) -> torch.device:
    import torch

    if backend == "cpu" or device == "cpu":
        return torch.device("cpu")
    if device == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DetectorError(f"model.device is {device!r} but CUDA is not available")
    return torch.device(device)


def model_cache_dir(cfg: ModelConfig) -> Path:
    from streamd.detect.onnx_export import default_cache_dir

    return Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()


def create_detector(cfg: ModelConfig, max_batch: int = 8) -> Detector:
    """Build the backend; ``auto`` takes the fastest one present and says which and why."""
    from streamd.detect import tensorrt_backend
    from streamd.detect.onnx_export import onnxruntime_available
    from streamd.detect.yolo import YoloDetector, load_checkpoint, stride_of

    if cfg.backend == "null":
        return _null_detector(cfg)
    device = resolve_device(cfg.device, cfg.backend)
    cuda = device.type == "cuda"
    kind, why = choose_backend(cfg.backend, cuda, onnxruntime_available(),
                               tensorrt_backend.available())  # fmt: skip
    model, names, checkpoint = load_checkpoint(cfg.weights)
    stride = stride_of(model)
    runner = _runner(kind, cfg, model, device, max_batch, Path(checkpoint))
    detector = YoloDetector(runner, names, cfg, stride)
    detector.warmup()  # the first call allocates and autotunes: keep it out of frame latency
    log.info(
        "detector backend=%s (asked %s: %s) device=%s weights=%s classes=%s",
        detector.backend,
        cfg.backend,
        why,
        detector.device,
        cfg.weights,
        names,
    )
    return detector


def _null_detector(cfg: ModelConfig) -> Detector:
    from streamd.detect.null_backend import NullDetector
    from streamd.detect.yolo import class_ids

    detector = NullDetector(cfg.null_boxes)
    class_ids(detector.names, cfg.classes)  # the same check as a real model's
    log.warning("detector backend=null: %d synthetic boxes per frame, no model (measurement "
                "only)", cfg.null_boxes)  # fmt: skip
    return detector


def _runner(kind: str, cfg: ModelConfig, model: torch.nn.Module, device: torch.device,
            max_batch: int, checkpoint: Path) -> Runner:  # fmt: skip
    import torch

    from streamd.detect.yolo import CudaGraphRunner, TorchRunner

    if kind == "torch":
        if device.type == "cuda" and cfg.cuda_graphs:
            return CudaGraphRunner(model, device, max_batch, cfg.imgsz)
        return TorchRunner(model, device, max_batch)
    from streamd.detect.onnx_export import exported_onnx

    onnx_path = exported_onnx(checkpoint, cfg.imgsz, max_batch, model_cache_dir(cfg))
    if kind == "onnx":
        from streamd.detect.onnx_backend import OnnxRunner

        strides = [int(s) for s in getattr(model, "stride", [8, 16, 32])]
        runner = OnnxRunner(onnx_path, device, max_batch, cfg.threads, strides)
        if runner.device.type == "cpu":
            # torch only letterboxes and runs NMS here: one thread, so its OpenMP pool
            # does not spin against onnxruntime's threads and the decoders.
            torch.set_num_threads(1)
        return runner
    return tensorrt_runner(cfg, device, max_batch, checkpoint, onnx_path)


def tensorrt_runner(cfg: ModelConfig, device: torch.device, max_batch: int, checkpoint: Path,
                    onnx_path: Path) -> Runner:  # fmt: skip
    from streamd.detect import tensorrt_backend as trt

    key = trt.engine_key(checkpoint, cfg.precision, max_batch, cfg.imgsz, device)
    calibration = Path(cfg.calibration) if cfg.calibration else None
    engine = trt.cached_engine(checkpoint, onnx_path, key, model_cache_dir(cfg), calibration)
    return trt.TensorRTRunner(engine, device, key)


def export_model(cfg: ModelConfig, max_batch: int, fmt: str) -> Path:
    """Build the ONNX export (``onnx``) or the TensorRT engine (``engine``) ahead of time,
    into the same cache the daemon reads; returns its path."""
    from streamd.detect import tensorrt_backend as trt
    from streamd.detect.onnx_export import exported_onnx
    from streamd.detect.yolo import load_checkpoint

    _, _, checkpoint = load_checkpoint(cfg.weights)
    onnx_path = exported_onnx(Path(checkpoint), cfg.imgsz, max_batch, model_cache_dir(cfg))
    if fmt == "onnx":
        return onnx_path
    device = resolve_device(cfg.device, "tensorrt")
    choose_backend("tensorrt", device.type == "cuda", True, trt.available())  # refuses clearly
    key = trt.engine_key(Path(checkpoint), cfg.precision, max_batch, cfg.imgsz, device)
    calibration = Path(cfg.calibration) if cfg.calibration else None
    return trt.cached_engine(Path(checkpoint), onnx_path, key, model_cache_dir(cfg), calibration)
