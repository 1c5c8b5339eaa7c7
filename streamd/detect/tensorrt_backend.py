"""TensorRT runner: an engine built from the ONNX export, cached by ``EngineKey``.

TensorRT is optional (``pip install tensorrt`` on a machine that can reach
NVIDIA's wheel host). Nothing here imports it at module load: ``available()``
says whether it is there and every entry point imports it lazily, so the rest
of streamd (and the cache-key logic, tested everywhere) never needs it.

Engines: FP16 by default (INT8 with a calibration folder of images, FP32 for
debugging), explicit batch with one optimisation profile min 1 / opt
``max(1, max_batch // 2)`` / max ``max_batch``, input ``imgsz`` square.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamd.detect.base import DetectorError
from streamd.detect.engine_cache import EngineCache, EngineKey, Precision, file_sha256

log = logging.getLogger(__name__)


def available() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def engine_key(checkpoint: Path, precision: Precision, max_batch: int, imgsz: int,
               device: torch.device, calibration_sha256: str = "") -> EngineKey:  # fmt: skip
    import tensorrt as trt

    major, minor = torch.cuda.get_device_capability(device)
    return EngineKey(
        model_sha256=file_sha256(checkpoint),
        compute_capability=f"{major}.{minor}",
        tensorrt_version=str(trt.__version__),
        precision=precision,
        min_batch=1,
        opt_batch=max(1, max_batch // 2),
        max_batch=max_batch,
        imgsz=imgsz,
        calibration_sha256=calibration_sha256,
    )


def build_engine(onnx_path: Path, key: EngineKey, out: Path,
                 calibration: Sequence[Path] | None) -> None:  # fmt: skip
    """Compile ``onnx_path`` for ``key`` and write the serialized engine to ``out``."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise DetectorError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    name = network.get_input(0).name
    profile = builder.create_optimization_profile()
    shape = (3, key.imgsz, key.imgsz)
    profile.set_shape(name, (key.min_batch, *shape), (key.opt_batch, *shape),
                      (key.max_batch, *shape))  # fmt: skip
    config.add_optimization_profile(profile)
    if key.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if key.precision == "int8":
        if not calibration:
            raise DetectorError("model.precision int8 needs a calibration set (streamd calibrate)")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _calibrator(trt, calibration, key, out.with_suffix(".calib"))
        config.set_calibration_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise DetectorError(f"TensorRT failed to build an engine for {onnx_path.name} (see log)")
    out.write_bytes(bytes(serialized))


def calibration_batches(files: Sequence[Path], imgsz: int, batch: int) -> Iterator[torch.Tensor]:
    """Letterboxed float32 NCHW batches of the calibration set's calibration frames (the
    held-out ones are the accuracy guard's)."""
    import cv2

    from streamd.detect.prepost import preprocess

    if not files:
        raise DetectorError("INT8 calibration: the calibration set has no calibration frames")
    for start in range(0, len(files) - batch + 1, batch):
        images = [cv2.imread(str(p)) for p in files[start : start + batch]]
        frames = [np.asarray(im, dtype=np.uint8) for im in images if im is not None]
        if len(frames) == batch:
            x, _ = preprocess(frames, (imgsz, imgsz), torch.device("cuda"), torch.float32)
            yield x


def _calibrator(trt: Any, files: Sequence[Path], key: EngineKey, cache: Path) -> Any:
    size = max(1, min(key.opt_batch, len(files)))

    class Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.batches = calibration_batches(files, key.imgsz, size)
            self.current: torch.Tensor | None = None

        def get_batch_size(self) -> int:
            return size

        def get_batch(self, names: list[str]) -> list[int] | None:
            self.current = next(self.batches, None)
            return None if self.current is None else [self.current.data_ptr()]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data: Any) -> None:
            cache.write_bytes(bytes(data))

    return Calibrator()


def cached_engine(checkpoint: Path, onnx_path: Path, key: EngineKey, cache_dir: Path,
                  calibration: Sequence[Path] | None) -> Path:  # fmt: skip
    """The engine for ``key`` (INT8: calibrated on ``calibration``, the set's calibration
    frames), from the cache or built now."""
    cache = EngineCache(cache_dir)
    path, built = cache.get_or_build(
        key, checkpoint.stem, lambda tmp: build_engine(onnx_path, key, tmp, calibration)
    )
    log.info("TensorRT engine %s: %s", "built" if built else "from cache", path)
    return path


class TensorRTRunner:
    rect = False  # the profile fixes height and width at imgsz

    def __init__(self, engine_path: Path, device: torch.device, key: EngineKey) -> None:
        import tensorrt as trt

        self.device, self.dtype, self.max_batch = device, torch.float32, key.max_batch
        self.name = f"tensorrt-{key.precision}"
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise DetectorError(f"TensorRT cannot load {engine_path} (built by another version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.input = next(n for n in names if self.engine.get_tensor_mode(n) == mode)
        self.output = next(n for n in names if self.engine.get_tensor_mode(n) != mode)
        self.inputs = torch.empty((key.max_batch, 3, key.imgsz, key.imgsz), device=device)
        self.stream = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]

    def buffer(self, n: int, shape: tuple[int, int]) -> torch.Tensor:
        return self.inputs

    def run(self, batch: torch.Tensor, n: int) -> torch.Tensor:
        x = batch[:n]
        self.context.set_input_shape(self.input, tuple(x.shape))
        y = torch.empty(tuple(self.context.get_tensor_shape(self.output)), device=self.device,
                        dtype=torch.float32)  # fmt: skip
        self.context.set_tensor_address(self.input, x.data_ptr())
        self.context.set_tensor_address(self.output, y.data_ptr())
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # letterbox done
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise DetectorError(f"{self.name}: execution failed")
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return y
