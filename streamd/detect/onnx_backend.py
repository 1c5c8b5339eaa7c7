"""onnxruntime runner: the exported graph on the CPU provider, or CUDA with IO binding.

streamd builds the session itself (not through ultralytics' predictor) so it
can set the thread pool: onnxruntime's intra-op threads spin-wait for work by
default, which on a small machine burns the CPU the source decoders and the
rest of the pipeline need (measured: docs/benchmarks.md).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from streamd.detect.base import DetectorError

log = logging.getLogger(__name__)


def ort_has_cuda() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def session_options(threads: int) -> Any:
    import onnxruntime

    so = onnxruntime.SessionOptions()
    if threads > 0:
        so.intra_op_num_threads = threads
    # Idle pool threads sleep instead of spinning: the decoders share these cores.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    return so


class OnnxRunner:
    rect = True  # exported with dynamic height/width

    def __init__(self, path: Path, device: torch.device, max_batch: int, threads: int,
                 strides: list[int], precision: str = "fp32") -> None:  # fmt: skip
        import onnxruntime

        from streamd.detect.yolo import runner_name

        cuda = device.type == "cuda" and ort_has_cuda()
        providers: list[Any] = ["CPUExecutionProvider"]
        if cuda:
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        try:
            self.session = onnxruntime.InferenceSession(
                str(path), session_options(threads), providers=providers
            )
        except Exception as e:  # onnxruntime raises its own pybind error types
            raise DetectorError(f"onnxruntime cannot load {path}: {e}") from e
        self.device = device if cuda else torch.device("cpu")
        self.dtype = torch.float32
        self.max_batch = max_batch
        self.strides = strides
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.precision = precision  # int8: a QDQ model (detect/quantize.py)
        self.name = runner_name("onnx-cuda" if cuda else "onnx-cpu", precision)

    def buffer(self, n: int, shape: tuple[int, int]) -> torch.Tensor:
        return torch.empty((n, 3, *shape), device=self.device, dtype=self.dtype)

    def run(self, batch: torch.Tensor, n: int) -> torch.Tensor:
        x = batch[:n].contiguous()
        if self.device.type == "cpu":
            (y,) = self.session.run([self.output_name], {self.input_name: x.numpy()})
            return torch.from_numpy(np.asarray(y))
        return self._run_bound(x)

    def _run_bound(self, x: torch.Tensor) -> torch.Tensor:
        # Input and output stay on the GPU: bind torch's buffers to the session.
        h, w = x.shape[2:]
        anchors = sum((h // s) * (w // s) for s in self.strides)
        width = self.session.get_outputs()[0].shape[1]
        if not isinstance(width, int):
            raise DetectorError(f"{self.name}: output channels are dynamic; re-export the model")
        y = torch.empty((x.shape[0], width, anchors), device=self.device, dtype=torch.float32)
        io = self.session.io_binding()
        dev = self.device.index or 0
        io.bind_input(self.input_name, "cuda", dev, np.float32, tuple(x.shape), x.data_ptr())
        io.bind_output(self.output_name, "cuda", dev, np.float32, tuple(y.shape), y.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # the letterbox must be written
        self.session.run_with_iobinding(io)
        return y
