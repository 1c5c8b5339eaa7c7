"""Pick and build the detector backend named by the configuration."""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from streamd.config import ModelConfig
from streamd.detect.base import Detector, DetectorError
from streamd.detect.engine_cache import Precision

if TYPE_CHECKING:  # torch is imported by the inference worker only, never the supervisor
    import torch

    from streamd.detect.calibration import CalibrationSet
    from streamd.detect.engine_cache import EngineKey
    from streamd.detect.guard import GuardReport
    from streamd.detect.yolo import Runner

log = logging.getLogger(__name__)


def choose_backend(
    requested: str, cuda: bool, onnx_runtime: bool, tensorrt: bool = False,
    openvino: bool = False, calibrated: bool = False,
) -> tuple[str, str]:  # fmt: skip
    """(backend, why) for ``model.backend``; raises DetectorError if it cannot be had."""
    if requested == "null":
        return "null", "asked for: a measurement backend (no model)"
    if requested == "openvino":
        if not openvino:
            raise DetectorError("model.backend openvino: OpenVINO is not installed; "
                                "pip install 'streamd[openvino]'")  # fmt: skip
        return "openvino", "asked for"
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
    if openvino and calibrated:
        return "openvino", ("no CUDA; OpenVINO is installed and a calibration set exists: its "
                            "INT8 (then BF16) measured fastest on CPUs")  # fmt: skip
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
    if cfg.backend == "null":  # before torch is imported: 2 s of a measurement daemon's start
        return _null_detector(cfg)
    from streamd.detect import openvino_backend, tensorrt_backend
    from streamd.detect.onnx_export import onnxruntime_available
    from streamd.detect.yolo import YoloDetector, load_checkpoint

    device = resolve_device(cfg.device, "cpu" if cfg.backend == "openvino" else cfg.backend)
    cuda = device.type == "cuda"
    calib = calibration_set(cfg)
    kind, why = choose_backend(cfg.backend, cuda, onnxruntime_available(),
                               tensorrt_backend.available(), openvino_backend.available(),
                               calib is not None)  # fmt: skip
    model, names, checkpoint = load_checkpoint(cfg.weights)
    built = _Build(cfg, kind, model, names, device, max_batch, Path(checkpoint), calib)
    runner, precision_why = built.runner()
    detector = YoloDetector(runner, names, cfg, built.stride)
    detector.precision, detector.guard_reports = built.precision, built.reports
    detector.warmup()  # the first call allocates and autotunes: keep it out of frame latency
    log.info(
        "detector backend=%s (asked %s: %s) precision %s (asked %s: %s) device=%s weights=%s "
        "classes=%s",
        detector.backend,
        cfg.backend,
        why,
        built.precision,
        cfg.precision,
        precision_why,
        detector.device,
        cfg.weights,
        names,
    )
    return detector


def _null_detector(cfg: ModelConfig) -> Detector:
    from streamd.detect.base import class_ids
    from streamd.detect.null_backend import NullDetector

    detector = NullDetector(cfg.null_boxes)
    class_ids(detector.names, cfg.classes)  # the same check as a real model's
    log.warning("detector backend=null: %d synthetic boxes per frame, no model (measurement "
                "only)", cfg.null_boxes)  # fmt: skip
    return detector


def calibration_set(cfg: ModelConfig) -> CalibrationSet | None:
    from streamd.detect.calibration import load_calibration

    return load_calibration(Path(cfg.calibration)) if cfg.calibration else None


class _Build:
    """One backend's runner at the precision ``model.precision`` resolves to: candidates
    fastest first, a guarded one (int8) taken only when its accuracy guard passes."""

    def __init__(self, cfg: ModelConfig, kind: str, model: torch.nn.Module,
                 names: dict[int, str], device: torch.device, max_batch: int,
                 checkpoint: Path, calib: CalibrationSet | None) -> None:  # fmt: skip
        from streamd.detect.yolo import stride_of

        self.cfg, self.kind, self.model, self.names = cfg, kind, model, names
        self.calib = calib
        self.device, self.max_batch, self.checkpoint = device, max_batch, checkpoint
        self.stride = stride_of(model)
        self.strides = [int(s) for s in getattr(model, "stride", [8, 16, 32])]
        self.precision = "fp32"
        self.reports: list[GuardReport] = []  # every guard taken, passed or not
        self._onnx: Path | None = None
        self._fp32: Runner | None = None
        self.guarded_model: Path | None = None  # its guard figures are cached beside it

    def runner(self) -> tuple[Runner, str]:
        """(runner, why this precision)."""
        from streamd.detect.precision import GUARDED, precision_candidates

        calib = self.calib
        cuda = self.device.type == "cuda"
        candidates, why = precision_candidates(self.cfg.precision, self.kind, cuda,
                                               calib is not None, self._bf16())  # fmt: skip
        refused: list[str] = []
        for i, precision in enumerate(candidates):
            try:
                runner = self._make(precision, calib)
            except DetectorError as e:
                if i == len(candidates) - 1:
                    raise
                log.warning("precision %s cannot be built, falling back to %s: %s", precision,
                            candidates[i + 1], e)  # fmt: skip
                refused.append(f"{precision} not built ({e})")
                continue
            if precision in GUARDED and calib is not None:
                passed, words = self._guard(runner, precision, calib)
                if not passed:
                    if i == len(candidates) - 1:
                        raise DetectorError(f"model.precision {precision}: {words}")
                    log.warning("precision %s refused by the accuracy guard, falling back to %s: "
                                "%s", precision, candidates[i + 1], words)  # fmt: skip
                    refused.append(f"{precision} refused by its guard")
                    continue
                why = f"{why}; guard: {words}"
            self.precision = precision
            return runner, "; ".join([*refused, why])
        raise DetectorError("no precision to run")  # unreachable: the last candidate returns

    def _bf16(self) -> bool:
        from streamd.detect import openvino_backend

        return self.kind == "openvino" and openvino_backend.has_bf16()

    def onnx_path(self) -> Path:
        from streamd.detect.onnx_export import exported_onnx

        if self._onnx is None:
            self._onnx = exported_onnx(self.checkpoint, self.cfg.imgsz, self.max_batch,
                                       model_cache_dir(self.cfg))  # fmt: skip
        return self._onnx

    def _make(self, precision: str, calib: CalibrationSet | None) -> Runner:
        import torch

        from streamd.detect.yolo import CudaGraphRunner, TorchRunner

        cfg, device = self.cfg, self.device
        if self.kind == "torch":
            if device.type == "cuda" and cfg.cuda_graphs:
                return CudaGraphRunner(self.model, device, self.max_batch, cfg.imgsz, precision)
            return TorchRunner(self.model, device, self.max_batch, precision)
        if self.kind == "tensorrt":
            from streamd.detect.tensorrt_backend import TensorRTRunner

            engine, key = tensorrt_engine(cfg, device, self.max_batch, self.checkpoint,
                                          self.onnx_path(), precision, calib)  # fmt: skip
            self.guarded_model = engine if precision == "int8" else None
            return TensorRTRunner(engine, device, key)
        if self.kind == "openvino":
            runner = self._openvino_runner(precision, calib)
        elif precision == "fp32":
            runner = self._onnx_fp32()
        else:
            runner = self._onnx_runner(self._int8_path(calib), precision)
        if runner.device.type == "cpu":
            # torch only letterboxes and runs NMS here: one thread, so its OpenMP pool
            # does not spin against onnxruntime's threads and the decoders.
            torch.set_num_threads(1)
        return runner

    def _onnx_runner(self, path: Path, precision: str) -> Runner:
        from streamd.detect.onnx_backend import OnnxRunner

        return OnnxRunner(path, self.device, self.max_batch, self.cfg.threads, self.strides,
                          precision)  # fmt: skip

    def _onnx_fp32(self) -> Runner:
        if self._fp32 is None:
            self._fp32 = self._onnx_runner(self.onnx_path(), "fp32")
        return self._fp32

    def _int8_path(self, calib: CalibrationSet | None) -> Path:
        from streamd.detect.engine_cache import file_sha256
        from streamd.detect.quantize import cached_int8, quant_key

        if calib is None:  # precision_candidates never offers int8 without a set
            raise DetectorError("model.precision int8 needs a calibration set")
        key = quant_key(file_sha256(self.checkpoint), self.cfg.imgsz, calib.digest)
        t0 = time.monotonic()
        path, built = cached_int8(self.onnx_path(), key, self.checkpoint.stem,
                                  model_cache_dir(self.cfg), calib.images(calib.calibrate),
                                  self.stride)  # fmt: skip
        if built:
            log.info("INT8 model quantised in %.1f s on %d calibration frames of %s: %s",
                     time.monotonic() - t0, len(calib.calibrate), calib.folder, path)  # fmt: skip
        else:
            log.info("INT8 model from cache (calibration set %s, %s): %s", calib.folder,
                     calib.digest[:12], path)  # fmt: skip
        self.guarded_model = path
        return path

    def _openvino_runner(self, precision: str, calib: CalibrationSet | None) -> Runner:
        from streamd.detect.openvino_backend import OpenVinoRunner

        path = self._ov_int8_path(calib) if precision == "int8" else self.onnx_path()
        self.guarded_model = path if precision == "int8" else None
        return OpenVinoRunner(path, self.max_batch, self.cfg.threads, precision)

    def _ov_int8_path(self, calib: CalibrationSet | None) -> Path:
        from streamd.detect.engine_cache import EngineCache, file_sha256
        from streamd.detect.openvino_backend import build_int8, nncf_available, quant_key
        from streamd.detect.quantize import float_nodes, letterboxed

        if calib is None:  # precision_candidates never offers int8 without a set
            raise DetectorError("model.precision int8 needs a calibration set")
        if not nncf_available():
            raise DetectorError("OpenVINO INT8 needs nncf: pip install 'streamd[openvino]'")
        import onnx

        key = quant_key(file_sha256(self.checkpoint), self.cfg.imgsz, calib.digest)
        fp32 = self.onnx_path()

        def build(out: Path) -> None:
            inputs = letterboxed(calib.images(calib.calibrate), self.cfg.imgsz, self.stride)
            graph = onnx.load(str(fp32), load_external_data=False)
            build_int8(fp32, out, inputs, set(float_nodes(graph)))

        t0 = time.monotonic()
        cache = EngineCache(model_cache_dir(self.cfg), companions=(".bin",))
        path, built = cache.get_or_build(key, self.checkpoint.stem, build)
        if built:
            log.info("OpenVINO INT8 model quantised in %.1f s on %d calibration frames of %s: "
                     "%s", time.monotonic() - t0, len(calib.calibrate), calib.folder,
                     path)  # fmt: skip
        else:
            log.info("OpenVINO INT8 model from cache (calibration set %s, %s): %s",
                     calib.folder, calib.digest[:12], path)  # fmt: skip
        return path

    def _reference(self) -> Runner:
        """FP32 on the CPU: the original every guarded precision is judged against."""
        from streamd.detect.onnx_export import onnxruntime_available
        from streamd.detect.yolo import TorchRunner

        if self.kind == "onnx" and self.device.type == "cpu":
            return self._onnx_fp32()
        if onnxruntime_available():
            from streamd.detect.onnx_backend import OnnxRunner

            return OnnxRunner(self.onnx_path(), torch_cpu(), self.max_batch, self.cfg.threads,
                              self.strides)  # fmt: skip
        import copy

        return TorchRunner(copy.deepcopy(self.model), torch_cpu(), self.max_batch, "fp32")

    def _guard(self, runner: Runner, precision: str, calib: CalibrationSet) -> tuple[bool, str]:
        from streamd.detect.guard import MARGIN, METHOD, judge
        from streamd.detect.quantize import store_guard, stored_guard
        from streamd.detect.yolo import YoloDetector

        cfg = self.cfg
        thresholds = (cfg.conf, cfg.iou, cfg.classes)
        # NMS across classes changes both models' boxes: a verdict of the other mode is
        # not this one's.
        method = METHOD + ("-agnostic" if cfg.agnostic_nms else "")
        model_file = self.guarded_model
        report = None if model_file is None else stored_guard(model_file, thresholds, method)
        if report is None:
            held = calib.held
            images = calib.images(held)
            # Both at a lower threshold: the guard forgives a score that crossed it a little.
            low = cfg.model_copy(update={"conf": max(0.01, cfg.conf - MARGIN)})
            fp32 = YoloDetector(self._reference(), self.names, low, self.stride).detect(images)
            ours = YoloDetector(runner, self.names, low, self.stride).detect(images)
            truth = [None if f.truth is None else np.asarray(f.truth, dtype=np.float32)
                     for f in held]  # fmt: skip
            report = replace(judge(precision, fp32, ours, truth, thresholds), method=method)
            if model_file is not None:
                store_guard(model_file, report)
        self.reports.append(report)
        return report.verdict(cfg.guard_recall, cfg.guard_precision)


def torch_cpu() -> torch.device:
    import torch

    return torch.device("cpu")


def tensorrt_engine(cfg: ModelConfig, device: torch.device, max_batch: int, checkpoint: Path,
                    onnx_path: Path, precision: str, calib: CalibrationSet | None,
                    ) -> tuple[Path, EngineKey]:  # fmt: skip
    """The cached (or newly built) engine; INT8 calibrated on the set's calibration frames,
    its digest in the key."""
    from streamd.detect import tensorrt_backend as trt

    int8 = calib is not None and precision == "int8"
    key = trt.engine_key(checkpoint, _trt_precision(precision), max_batch, cfg.imgsz, device,
                         calib.digest if int8 and calib is not None else "")  # fmt: skip
    files = [calib.folder / f.file for f in calib.calibrate] if int8 and calib else None
    return trt.cached_engine(checkpoint, onnx_path, key, model_cache_dir(cfg), files), key


def _trt_precision(precision: str) -> Precision:
    if precision not in ("fp16", "int8", "fp32"):
        raise DetectorError(f"model.precision {precision}: TensorRT runs fp32, fp16 or int8")
    return precision  # type: ignore[return-value]


def export_model(cfg: ModelConfig, max_batch: int, fmt: str) -> Path:
    """Build the ONNX export (``onnx``) or the TensorRT engine (``engine``) ahead of time,
    into the same cache the daemon reads; returns its path. ``model.precision`` auto builds
    INT8 from the calibration set when there is one, else FP16."""
    from streamd.detect import tensorrt_backend as trt
    from streamd.detect.onnx_export import exported_onnx
    from streamd.detect.precision import precision_candidates
    from streamd.detect.yolo import load_checkpoint

    _, _, checkpoint = load_checkpoint(cfg.weights)
    onnx_path = exported_onnx(Path(checkpoint), cfg.imgsz, max_batch, model_cache_dir(cfg))
    if fmt == "onnx":
        return onnx_path
    device = resolve_device(cfg.device, "tensorrt")
    choose_backend("tensorrt", device.type == "cuda", True, trt.available())  # refuses clearly
    calib = calibration_set(cfg)
    precision = precision_candidates(cfg.precision, "tensorrt", True, calib is not None)[0][0]
    return tensorrt_engine(cfg, device, max_batch, Path(checkpoint), onnx_path, precision,
                           calib)[0]  # fmt: skip
