"""The ``model`` section: detector weights, backend and thresholds."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from streamd.config.base import _Strict


class ModelConfig(_Strict):
    weights: str = Field(
        "yolo11n.pt",
        description="Ultralytics checkpoint: a path (relative to the pipeline file) or a "
        "name ultralytics can fetch on a machine with internet.",
    )
    backend: Literal["auto", "tensorrt", "torch", "onnx", "cpu", "null"] = Field(
        "auto",
        description="Detector backend. auto: TensorRT on CUDA when installed, else torch FP16 "
        "with CUDA graphs on CUDA; without CUDA onnxruntime when installed (faster than torch "
        "on CPUs), else torch. cpu = torch on the CPU. null = no model: null_boxes moving "
        "boxes per frame, to measure the host path (auto never picks it).",
    )
    null_boxes: int = Field(
        10, ge=0, le=1000, description="backend null: boxes returned per frame."
    )
    precision: Literal["fp16", "int8", "fp32"] = Field(
        "fp16", description="TensorRT engine precision (int8 needs model.calibration)."
    )
    calibration: str | None = Field(
        None, description="Folder of .jpg/.png images for TensorRT INT8 calibration."
    )
    cuda_graphs: bool = Field(
        True, description="torch on CUDA: replay one CUDA graph per batch-size bucket."
    )
    threads: int = Field(
        0, ge=0, le=256, description="onnxruntime CPU threads; 0 = one per physical core."
    )
    cache_dir: str | None = Field(
        None,
        description="Where ONNX exports and TensorRT engines are cached "
        "(default ~/.cache/streamd/models).",
    )
    device: str = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N'.")
    imgsz: int = Field(640, ge=32, le=4096, multiple_of=32, description="Inference size.")
    conf: float = Field(0.25, gt=0.0, le=1.0, description="Minimum detection confidence.")
    iou: float = Field(0.7, gt=0.0, le=1.0, description="NMS IoU threshold.")
    classes: list[str] | None = Field(
        None, description="Class names to keep (checked against the model at start-up)."
    )

    @field_validator("backend", mode="before")
    @classmethod
    def _yaml_null(cls, v: object) -> object:
        # YAML reads a bare `backend: null` as None: that is the null backend too.
        return "null" if v is None else v
