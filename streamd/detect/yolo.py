"""The YOLO detector: shared pre/post-processing around a backend-specific runner.

A runner only maps a letterboxed NCHW batch to the raw head output
(B, 4+nc, N). Runners: torch eager (CPU, or CUDA FP16), torch with CUDA graphs
(one captured graph per batch-size bucket, batches padded up to the bucket),
onnxruntime (``onnx_backend``) and TensorRT (``tensorrt_backend``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import supervision as sv
import torch

from streamd.config import ModelConfig
from streamd.detect.base import DetectorError, class_ids
from streamd.detect.guard import GuardReport
from streamd.detect.nv12 import Frame, letterbox
from streamd.detect.prepost import input_shape, postprocess, to_detections
from streamd.runtime.logs import adopt_ultralytics
from streamd.types import FrameRef

log = logging.getLogger(__name__)


class Runner(Protocol):
    name: str  # e.g. "torch-cuda-fp16-graphs"; the metric label and the log line
    device: torch.device
    dtype: torch.dtype
    rect: bool  # takes any stride-multiple input shape (else imgsz square only)
    max_batch: int

    def buffer(self, n: int, shape: tuple[int, int]) -> torch.Tensor:
        """An input tensor with at least ``n`` rows to letterbox into."""
        ...

    def run(self, batch: torch.Tensor, n: int) -> torch.Tensor:
        """Head output for the first ``n`` rows of ``batch``."""
        ...


def batch_buckets(max_batch: int) -> list[int]:
    """Powers of two up to ``max_batch``, and ``max_batch`` itself: 1, 2, 4, 8, 12 for 12."""
    out = [1]
    while out[-1] * 2 < max_batch:
        out.append(out[-1] * 2)
    if out[-1] != max_batch:
        out.append(max_batch)
    return out


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    return next(b for b in buckets if b >= n)


def stride_of(model: Any) -> int:
    return int(max(model.stride)) if hasattr(model, "stride") else 32


class YoloDetector:
    """BGR uint8 frames → ``sv.Detections`` per frame, on any runner."""

    def __init__(
        self, runner: Runner, names: dict[int, str], cfg: ModelConfig, stride: int = 32
    ) -> None:
        self.runner = runner
        self.names = names
        self.cfg = cfg
        self.stride = stride
        self.backend = runner.name
        self.device = str(runner.device)
        self.class_ids = class_ids(names, cfg.classes)
        self.precision = "fp32"  # what model.precision resolved to (set by the factory)
        self.guard_reports: list[GuardReport] = []  # the accuracy guards taken on the way

    def warmup(self, height: int = 360, width: int = 640) -> None:
        out = self.detect([np.zeros((height, width, 3), dtype=np.uint8)])
        if len(out) != 1:
            raise DetectorError(f"{self.backend}: warm-up returned {len(out)} results for 1 frame")

    @torch.inference_mode()
    def detect(
        self, frames: Sequence[Frame], refs: Sequence[FrameRef] | None = None
    ) -> list[sv.Detections]:
        out: list[sv.Detections] = []
        for start in range(0, len(frames), self.runner.max_batch):
            out += self._detect(frames[start : start + self.runner.max_batch])
        return out

    def _detect(self, frames: Sequence[Frame]) -> list[sv.Detections]:
        n = len(frames)
        shape = input_shape([f.shape for f in frames], self.cfg.imgsz, self.stride,
                            self.runner.rect)  # fmt: skip
        r = self.runner
        # NVDEC's NV12 pictures decoded in this process are letterboxed where they lie.
        batch, placements = letterbox(frames, shape, r.device, r.dtype, r.buffer(n, shape))
        preds = r.run(batch, n)
        if preds.ndim != 3 or preds.shape[1] != 4 + len(self.names):
            raise DetectorError(
                f"{self.backend}: head output {tuple(preds.shape)} is not "
                f"(B, 4+{len(self.names)}, N) (NMS-free exports are not supported)"
            )
        rows = postprocess(preds, placements, self.cfg.conf, self.cfg.iou, self.class_ids,
                           self.cfg.agnostic_nms)  # fmt: skip
        return to_detections(rows, n, self.names)


def load_checkpoint(weights: str) -> tuple[torch.nn.Module, dict[int, str], str]:
    """(fused eval model, class names, checkpoint path) via ultralytics, which also fetches
    official weights by name where there is internet."""
    from ultralytics.models import YOLO

    adopt_ultralytics()  # its import gave it a stdout handler of its own
    try:
        yolo = YOLO(weights, task="detect")
    except Exception as e:  # ultralytics raises many kinds for a bad checkpoint
        raise DetectorError(f"cannot load model.weights {weights!r}: {e}") from e
    model = yolo.model
    if not isinstance(model, torch.nn.Module):
        raise DetectorError(f"model.weights {weights!r} is not a torch checkpoint")
    head = model.model[-1]
    if getattr(head, "end2end", False):
        head.end2end = False  # NMS-free heads: use the one-to-many branch and our NMS
    names = {int(k): str(v) for k, v in yolo.names.items()}
    return model.fuse().eval(), names, str(yolo.ckpt_path or weights)


DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _precision(device: torch.device, precision: str | None) -> str:
    return precision or ("fp16" if device.type == "cuda" else "fp32")


class TorchRunner:
    """Eager torch: CPU float32 (or bf16), or CUDA FP16 (or bf16, fp32)."""

    rect = True

    def __init__(self, model: torch.nn.Module, device: torch.device, max_batch: int,
                 precision: str | None = None) -> None:  # fmt: skip
        p = _precision(device, precision)
        self.device = device
        self.dtype = DTYPES[p]
        self.model = model.to(device, self.dtype)
        self.max_batch = max_batch
        # The CPU's FP32 keeps the name it always had: the metric label stays stable.
        self.name = f"torch-cuda-{p}" if device.type == "cuda" else runner_name("torch-cpu", p)

    def buffer(self, n: int, shape: tuple[int, int]) -> torch.Tensor:
        return torch.empty((n, 3, *shape), device=self.device, dtype=self.dtype)

    def run(self, batch: torch.Tensor, n: int) -> torch.Tensor:
        return _head(self.model(batch[:n]))


def runner_name(base: str, precision: str) -> str:
    """``base`` for FP32 (the names backends always had), ``base-<precision>`` otherwise."""
    return base if precision == "fp32" else f"{base}-{precision}"


def _head(out: Any) -> torch.Tensor:
    # ultralytics' Detect head returns (y, features) in eval mode, y alone when exported.
    y: torch.Tensor = out[0] if isinstance(out, (tuple, list)) else out
    return y


class CudaGraphRunner:
    """Torch FP16 with one CUDA graph per batch bucket at imgsz square.

    Launching a YOLO forward eagerly costs hundreds of kernel launches; a
    replayed graph costs one. Inputs are static tensors the letterbox writes
    into; a batch of 5 runs the 8-graph with 3 stale rows whose outputs are
    ignored.
    """

    rect = False

    def __init__(self, model: torch.nn.Module, device: torch.device, max_batch: int,
                 imgsz: int, precision: str | None = None) -> None:  # fmt: skip
        if device.type != "cuda":
            raise DetectorError("CUDA graphs need a CUDA device")
        p = _precision(device, precision)
        self.device, self.dtype, self.max_batch = device, DTYPES[p], max_batch
        self.model = model.to(device, self.dtype)
        self.name = f"torch-cuda-{p}-graphs"
        self.buckets = batch_buckets(max_batch)
        self.inputs: dict[int, torch.Tensor] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.held: dict[int, list[torch.Tensor]] = {}
        for b in reversed(self.buckets):
            self._capture(b, imgsz)

    @torch.inference_mode()
    def _capture(self, b: int, imgsz: int) -> None:
        # Found on an H200 (NaN boxes, illegal memory accesses): ultralytics' head caches
        # its anchors per input shape, batch included, as a plain attribute. The warm-up
        # of the next bucket replaced the tensor this graph reads and freed it, and its
        # memory was reused. Each graph now holds the tensors the modules held when it was
        # captured (``held``). Each also has its own memory pool: that is what ran on the
        # H200; a shared pool (about half the memory with power-of-two buckets) is safe
        # with ``held`` and serial replays, to measure on the next GPU. Never ``.to()`` the
        # model after capture: that replaces parameters the graphs read by address.
        x = torch.full((b, 3, imgsz, imgsz), 0.5, device=self.device, dtype=self.dtype)
        side = torch.cuda.Stream(self.device)  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):  # warm up cuDNN autotuning outside the capture
                _head(self.model(x))
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            y = _head(self.model(x))
        self.inputs[b], self.outputs[b], self.graphs[b] = x, y, graph
        self.held[b] = module_tensors(self.model)

    def buffer(self, n: int, shape: tuple[int, int]) -> torch.Tensor:
        return self.inputs[bucket_for(n, self.buckets)]

    def run(self, batch: torch.Tensor, n: int) -> torch.Tensor:
        b = bucket_for(n, self.buckets)
        self.graphs[b].replay()
        return self.outputs[b][:n]


def module_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """Tensors the modules keep as plain attributes (caches such as a head's anchors), not
    parameters or buffers: a captured graph reads them by address."""
    return [v for m in model.modules() for v in vars(m).values() if isinstance(v, torch.Tensor)]
