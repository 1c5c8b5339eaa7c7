"""The ``model`` section: detector weights, backend and thresholds."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from streamd.config.base import _Strict


class ModelConfig(_Strict):
    weights: str = Field(
        "yolo11n.pt",
        description="Ultralytics checkpoint: a path (relative to the pipeline file) or a "
        "name ultralytics can fetch on a machine with internet.",
    )
    backend: Literal["auto", "tensorrt", "torch", "onnx", "openvino", "cpu", "null"] = Field(
        "auto",
        description="Detector backend. auto: TensorRT on CUDA when installed, else torch FP16 "
        "with CUDA graphs on CUDA; without CUDA OpenVINO when installed and a calibration set "
        "exists (its INT8, then BF16), else onnxruntime when installed (faster than torch "
        "on CPUs), else torch. cpu = torch on the CPU. null = no model: null_boxes moving "
        "boxes per frame, to measure the host path (auto never picks it).",
    )
    null_boxes: int = Field(
        10, ge=0, le=1000, description="backend null: boxes returned per frame."
    )
    precision: Literal["auto", "fp32", "fp16", "bf16", "int8"] = Field(
        "auto",
        description="Arithmetic of the detector. auto: the fastest one this backend and "
        "hardware run whose accuracy guard passed (int8 when a calibration set exists, then "
        "fp16 on CUDA, else fp32). int8 needs a calibration set (streamd calibrate) and is "
        "refused when its guard fails; onnx (CPU): fp32, int8; openvino: fp32, bf16, int8; "
        "torch: fp32, bf16 (fp16 on CUDA); tensorrt: fp32, fp16, int8.",
    )
    calibration: str | None = Field(
        None,
        description="Calibration set: a folder of .png/.jpg frames (and the manifest.json "
        "streamd calibrate writes). Default: <pipeline>.calibration beside the pipeline file "
        "when it exists.",
    )
    guard_recall: float = Field(
        0.95,
        ge=0.0,
        le=1.0,
        description="Accuracy guard: a quantised model must keep this share of FP32's boxes "
        "(recall of matched boxes, IoU >= 0.5) on the held-out calibration frames, and this "
        "share of FP32's recall against ground truth where the set has it.",
    )
    guard_precision: float = Field(
        0.95,
        ge=0.0,
        le=1.0,
        description="Accuracy guard: the same for precision (its boxes that FP32, or the "
        "ground truth, also has).",
    )
    cuda_graphs: bool = Field(
        True, description="torch on CUDA: replay one CUDA graph per batch-size bucket."
    )
    threads: int = Field(
        0,
        ge=0,
        le=256,
        description="onnxruntime / OpenVINO CPU threads; 0 = one per physical core.",
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
    agnostic_nms: bool = Field(
        False,
        description="NMS across classes: for a model whose classes are states of one object "
        "(the person model's Normal/Fall), so one person is one box, not one per class.",
    )
    classes: list[str] | None = Field(
        None, description="Class names to keep (checked against the model at start-up)."
    )

    @field_validator("backend", mode="before")
    @classmethod
    def _yaml_null(cls, v: object) -> object:
        # YAML reads a bare `backend: null` as None: that is the null backend too.
        return "null" if v is None else v


def default_calibration_dir(pipeline: Path) -> Path:
    """Where ``streamd calibrate`` writes a pipeline's calibration set unless
    ``model.calibration`` names a folder, and where the daemon looks for it."""
    return pipeline.parent / f"{pipeline.stem}.calibration"
