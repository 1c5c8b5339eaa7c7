"""Ultralytics YOLO on torch (CUDA FP16 when present, else CPU)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import supervision as sv

from streamd.config import ModelConfig
from streamd.detect.base import DetectorError

log = logging.getLogger(__name__)

# Never let ultralytics pip-install packages behind the user's back.
os.environ["YOLO_AUTOINSTALL"] = "0"


def resolve_device(device: str, backend: str) -> str:
    import torch

    if backend == "cpu" or device == "cpu":
        return "cpu"
    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DetectorError(f"model.device is {device!r} but CUDA is not available")
    return device


def _ort_has_cuda() -> bool:
    # onnxruntime (not -gpu) on a GPU machine runs on the CPU: name it as it runs.
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


class UltralyticsDetector:
    """Ultralytics' predictor over a torch checkpoint or, for ``onnx``, its ONNX export."""

    def __init__(self, cfg: ModelConfig, onnx_batch: int | None = None) -> None:
        from ultralytics.models import YOLO

        self.device = resolve_device(cfg.device, cfg.backend)
        try:
            self.model = YOLO(cfg.weights, task="detect")
        except Exception as e:  # ultralytics raises many kinds for a bad checkpoint
            raise DetectorError(f"cannot load model.weights {cfg.weights!r}: {e}") from e
        self.names: dict[int, str] = {int(k): str(v) for k, v in self.model.names.items()}
        self.class_ids = self._class_ids(cfg.classes)
        self.cfg = cfg
        on_gpu = self.device.startswith("cuda")
        if onnx_batch is not None:
            self.model = self._onnx_model(cfg, onnx_batch)
            self.half = False
            self.backend = "onnx-cuda" if on_gpu and _ort_has_cuda() else "onnx-cpu"
        else:
            self.half = on_gpu
            self.backend = "torch-cuda-fp16" if on_gpu else "torch-cpu"

    def _onnx_model(self, cfg: ModelConfig, batch: int) -> Any:
        from ultralytics.models import YOLO

        from streamd.detect.onnx_export import default_cache_dir, exported_onnx

        checkpoint = Path(str(self.model.ckpt_path or cfg.weights))
        cache = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
        path = exported_onnx(checkpoint, cfg.imgsz, batch, cache)
        return YOLO(str(path), task="detect")

    def _class_ids(self, classes: list[str] | None) -> list[int] | None:
        if classes is None:
            return None
        by_name = {v: k for k, v in self.names.items()}
        unknown = [c for c in classes if c not in by_name]
        if unknown:
            raise DetectorError(
                f"model.classes: {unknown} not in the model's classes {sorted(by_name)}"
            )
        return [by_name[c] for c in classes]

    def warmup(self, height: int = 360, width: int = 640) -> None:
        self.detect([np.zeros((height, width, 3), dtype=np.uint8)])

    def detect(self, frames: Sequence[npt.NDArray[np.uint8]]) -> list[sv.Detections]:
        results = self.model.predict(
            list(frames),
            imgsz=self.cfg.imgsz,
            conf=self.cfg.conf,
            iou=self.cfg.iou,
            classes=self.class_ids,
            device=self.device,
            quantize=16 if self.half else None,
            verbose=False,
        )
        return [sv.Detections.from_ultralytics(r) for r in results]
