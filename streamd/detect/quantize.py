"""INT8 for onnxruntime: the FP32 export quantised statically (QDQ, per channel), cached.

``onnxruntime.quantization`` calibrates activation ranges (min/max) on the
calibration set's ``calibrate`` frames, each letterboxed at the shape the
pipeline will feed it (640x360 at imgsz 320 goes in as 320x192), and writes a
QDQ model: uint8 activations, int8 weights per output channel, which
onnxruntime's CPU provider runs with integer kernels (VNNI where the CPU has
it). The detect head after its last convolutions stays FP32: its output
concatenates box coordinates in pixels with class scores in [0, 1], which one
8-bit scale cannot hold both of. So do those last convolutions, whose outputs
are the scores and box edges themselves.

The model is cached beside the FP32 export under a ``QuantKey`` (checkpoint
hash, imgsz, calibration set digest, onnxruntime version, method), written
atomically, so a start with the same set reuses it; its guard figures are
kept in a ``.guard.json`` beside it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from streamd.detect.base import DetectorError
from streamd.detect.engine_cache import EngineCache
from streamd.detect.guard import METHOD as GUARD_METHOD
from streamd.detect.guard import GuardReport
from streamd.detect.prepost import input_shape, preprocess
from streamd.runtime.logs import logged_output

log = logging.getLogger(__name__)

METHOD = "qdq-u8s8-perchannel-minmax-fp32head-fp32lastconvs"


@dataclass(frozen=True, slots=True)
class QuantKey:
    model_sha256: str  # of the checkpoint's bytes
    imgsz: int
    calibration_sha256: str
    onnxruntime_version: str
    method: str = METHOD

    def digest(self) -> str:
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def filename(self, stem: str) -> str:
        return f"{stem}-{self.imgsz}-int8-c{self.calibration_sha256[:12]}-{self.digest()}.onnx"


def quant_key(model_sha256: str, imgsz: int, calibration_sha256: str) -> QuantKey:
    import onnxruntime

    return QuantKey(model_sha256, imgsz, calibration_sha256, str(onnxruntime.__version__))


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over letterboxed frames, one at a time."""

    def __init__(self, name: str, inputs: list[npt.NDArray[np.float32]]) -> None:
        self.name = name
        self.items = iter(inputs)

    def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
        x = next(self.items, None)
        return None if x is None else {self.name: x}


def letterboxed(frames: Sequence[npt.NDArray[np.uint8]], imgsz: int,
                stride: int) -> list[npt.NDArray[np.float32]]:  # fmt: skip
    """Each frame as the network sees it in the pipeline: (1, 3, H, W) float32."""
    out = []
    for f in frames:
        shape = input_shape([f.shape], imgsz, stride, rect=True)
        x, _ = preprocess([f], shape, torch.device("cpu"), torch.float32)
        out.append(x.numpy())
    return out


def head_nodes(model: Any) -> list[str]:
    """Nodes of the detect head after its convolutions (DFL, box decoding, sigmoid, concat):
    the module that produces the graph's output, less its ``cv*`` conv branches."""
    producer = next(n for n in model.graph.node if model.graph.output[0].name in n.output)
    parts = producer.name.split("/")
    if len(parts) < 3:
        return [producer.name]
    prefix = "/".join(parts[:2]) + "/"  # e.g. "/model.22/"
    return [n.name for n in model.graph.node
            if n.name.startswith(prefix) and not n.name.startswith(prefix + "cv")]  # fmt: skip


def head_last_convs(model: Any, head: set[str]) -> list[str]:
    """The detect head's last convolutions (each branch's class scores and box
    distribution, 1x1): the convolutions whose output goes into ``head`` (its nodes after
    the ``cv*`` branches, ``head_nodes``). Their outputs are the scores and box edges
    themselves, so their rounding moves boxes across the confidence thresholds that
    decide detections and tracks."""
    into_head = {i for n in model.graph.node if n.name in head for i in n.input}
    return [n.name for n in model.graph.node if n.op_type == "Conv" and n.name not in head
            and any(o in into_head for o in n.output)]  # fmt: skip


def float_nodes(model: Any) -> list[str]:
    """What INT8 leaves in floating point: the detect head after its convolutions, and its
    last convolutions (quantised, they cost OpenVINO's INT8 twice the boxes FP32 found and
    it did not, on 74 scenes: docs/benchmarks.md)."""
    head = head_nodes(model)
    last = head_last_convs(model, set(head))
    if not last:  # an export laid out otherwise: INT8 as before, but say so
        log.warning("INT8: no last convolutions of a detect head found in this export; "
                    "they are quantised with the rest")  # fmt: skip
    return head + last


def build_int8(fp32_onnx: Path, out: Path, frames: Sequence[npt.NDArray[np.uint8]], imgsz: int,
               stride: int) -> None:  # fmt: skip
    """Quantise ``fp32_onnx`` calibrated on ``frames`` and write the QDQ model to ``out``."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not frames:
        raise DetectorError("INT8 calibration needs at least one frame")
    inputs = letterboxed(frames, imgsz, stride)
    with tempfile.TemporaryDirectory(prefix="streamd-quant-") as tmp, logged_output(log):
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(fp32_onnx), str(pre), skip_symbolic_shape=True)
            graph = onnx.load(str(pre))
            quantize_static(
                str(pre), str(out), _Reader(graph.graph.input[0].name, inputs),
                quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=float_nodes(graph),
            )  # fmt: skip
        except DetectorError:
            raise
        except Exception as e:  # onnxruntime's quantiser raises many kinds
            raise DetectorError(f"INT8 quantisation of {fp32_onnx.name} failed: {e}") from e


def cached_int8(
    fp32_onnx: Path, key: QuantKey, stem: str, cache_dir: Path,
    frames: Sequence[npt.NDArray[np.uint8]], stride: int,
) -> tuple[Path, bool]:  # fmt: skip
    """(path, built): the cached INT8 model for ``key``, or one quantised now."""
    cache = EngineCache(cache_dir)
    return cache.get_or_build(
        key, stem, lambda tmp: build_int8(fp32_onnx, tmp, frames, key.imgsz, stride)
    )


def guard_path(model: Path) -> Path:
    return model.with_suffix(".guard.json")


def stored_guard(model: Path, thresholds: tuple[float, float, list[str] | None],
                 method: str = GUARD_METHOD) -> GuardReport | None:  # fmt: skip
    """The figures kept with ``model``, if they were taken with these thresholds and this
    method (which names the NMS mode: class-aware or across classes)."""
    try:
        report = GuardReport.from_json(json.loads(guard_path(model).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    same = (report.conf, report.iou, report.classes) == thresholds and report.method == method
    return report if same else None


def store_guard(model: Path, report: GuardReport) -> None:
    path = guard_path(model)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report.to_json(), sort_keys=True))
    tmp.replace(path)
