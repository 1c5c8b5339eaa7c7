"""OpenVINO runner on the CPU: FP32, BF16 and INT8 (NNCF post-training quantisation).

Why a second CPU runtime (issue 16, docs/benchmarks.md): onnxruntime's INT8
spends a quarter of its time on SiLU as separate quantised sigmoid and
multiply passes; OpenVINO fuses each convolution with its SiLU and the
requantisation into one kernel, which made its INT8 the fastest detector
measured on our 2-core CPU. Its BF16 (``INFERENCE_PRECISION_HINT``) uses the
CPU's AVX-512 BF16 or AMX where present and needs no calibration.

INT8 is built by NNCF from the FP32 ONNX export, calibrated on the set's
``calibrate`` frames letterboxed as the pipeline feeds them; the detect head
after its convolutions (DFL, box decoding) and every Sigmoid stay floating
point, as in onnxruntime's INT8 and ultralytics' own OpenVINO export. The IR
(``.xml`` and ``.bin``) is cached under an ``OvQuantKey``.

A model is compiled twice per input size (height, width), when that size
first comes (the detector's warm-up for the usual one): for one frame with a
static shape, which ran 15 % faster than a dynamic batch of one, and for
batches of 2 up to ``max_batch`` with a dynamic batch dimension, as fast as
static shapes there. A compile takes about half a second, so compiling one
model per batch size would stall the first batch of each size. Pool threads
are not pinned to cores: pinned, they lost a third of their speed whenever
another process took a core on our shared 2-core machine.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from streamd.detect.base import DetectorError
from streamd.runtime.logs import logged_output

log = logging.getLogger(__name__)

METHOD = "nncf-performance-fp32head-fp32lastconvs-fp32sigmoid"
MAX_SIZES = 8  # input sizes kept compiled at once; the least recently used goes first


def available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def nncf_available() -> bool:
    return importlib.util.find_spec("nncf") is not None


def has_bf16() -> bool:
    """The CPU runs BF16 natively (AVX-512 BF16 or AMX), as OpenVINO sees it."""
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def openvino_version() -> str:
    import openvino

    return str(openvino.__version__)


@dataclass(frozen=True, slots=True)
class OvQuantKey:
    model_sha256: str  # of the checkpoint's bytes
    imgsz: int
    calibration_sha256: str
    openvino_version: str
    nncf_version: str
    method: str = METHOD

    def digest(self) -> str:
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def filename(self, stem: str) -> str:
        return f"{stem}-{self.imgsz}-ov-int8-c{self.calibration_sha256[:12]}-{self.digest()}.xml"


def quant_key(model_sha256: str, imgsz: int, calibration_sha256: str) -> OvQuantKey:
    import nncf

    return OvQuantKey(model_sha256, imgsz, calibration_sha256, openvino_version(),
                      str(nncf.__version__))  # fmt: skip


def build_int8(fp32_onnx: Path, out: Path, inputs: Sequence[npt.NDArray[np.float32]],
               keep_float: set[str]) -> None:  # fmt: skip
    """Quantise ``fp32_onnx`` with NNCF on ``inputs`` (letterboxed (1, 3, H, W) frames) and
    write the IR to ``out`` (.xml) and its weights beside it (.bin). ``keep_float``: ONNX
    node names left in floating point (the detect head and its last convolutions; OpenVINO
    names a convolution's parts ``<node>/...``)."""
    if not nncf_available():
        raise DetectorError("OpenVINO INT8 needs nncf: pip install 'streamd[openvino]'")
    import nncf
    import openvino as ov

    if not inputs:
        raise DetectorError("INT8 calibration needs at least one frame")
    with logged_output(log, logging.DEBUG):  # NNCF reports every node it skips
        try:
            model = ov.convert_model(str(fp32_onnx))
            ignored = [op.get_friendly_name() for op in model.get_ordered_ops()
                       if op.get_friendly_name().split("/WithoutBiases")[0] in keep_float
                       or op.get_type_name() == "Sigmoid"]  # fmt: skip
            quantised = nncf.quantize(
                model, nncf.Dataset(list(inputs)), preset=nncf.QuantizationPreset.PERFORMANCE,
                subset_size=len(inputs), ignored_scope=nncf.IgnoredScope(names=ignored,
                                                                         validate=False),
            )  # fmt: skip
            ov.save_model(quantised, str(out), compress_to_fp16=False)
        except Exception as e:  # NNCF and OpenVINO raise many kinds
            raise DetectorError(
                f"OpenVINO INT8 quantisation of {fp32_onnx.name} failed: {e}"
            ) from e


class OpenVinoRunner:
    """An OpenVINO model (ONNX or IR) on the CPU, one compiled model per input shape."""

    rect = True  # any stride-multiple input shape

    def __init__(self, path: Path, max_batch: int, threads: int, precision: str) -> None:
        import openvino as ov

        from streamd.detect.yolo import runner_name

        if precision not in ("fp32", "bf16", "int8"):
            raise DetectorError(f"openvino runs fp32, bf16 or int8, not {precision}")
        self.core = ov.Core()
        try:
            self.model = self.core.read_model(str(path))
        except Exception as e:  # OpenVINO raises its own RuntimeError kinds
            raise DetectorError(f"OpenVINO cannot load {path}: {e}") from e
        self.config: dict[str, Any] = {
            # int8: what NNCF left in floating point stays FP32 (the head's box decoding)
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",
            "ENABLE_CPU_PINNING": False,  # the decoders and other processes share the cores
        }
        if threads > 0:
            self.config["INFERENCE_NUM_THREADS"] = threads
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.max_batch = max_batch
        self.precision = precision
        self.name = runner_name("openvino-cpu", precision)
        self._requests: OrderedDict[tuple[int, int], tuple[Any, Any]] = OrderedDict()

    def buffer(self, n: int, shape: tuple[int, int]) -> torch.Tensor:
        return torch.empty((n, 3, *shape), dtype=self.dtype)

    def _request(self, shape: tuple[int, ...]) -> Any:
        """The infer request for a (n, 3, h, w) input: static n = 1, else dynamic n."""
        n, _, h, w = shape
        size = (h, w)
        requests = self._requests.get(size)
        if requests is None:
            requests = (self._compile([1, 3, h, w]),
                        self._compile([(2, max(2, self.max_batch)), 3, h, w]))  # fmt: skip
            self._requests[size] = requests
            if len(self._requests) > MAX_SIZES:
                self._requests.popitem(last=False)
            log.debug("%s compiled for %dx%d inputs (%d sizes compiled)", self.name, w, h,
                      len(self._requests))  # fmt: skip
        self._requests.move_to_end(size)
        return requests[0] if n == 1 else requests[1]

    def _compile(self, shape: list[Any]) -> Any:
        import openvino as ov

        model = self.model.clone()
        dims = [ov.Dimension(*d) if isinstance(d, tuple) else ov.Dimension(d) for d in shape]
        model.reshape({0: ov.PartialShape(dims)})
        try:
            compiled = self.core.compile_model(model, "CPU", self.config)
        except Exception as e:  # OpenVINO raises its own RuntimeError kinds
            raise DetectorError(f"{self.name}: cannot compile for input {shape}: {e}") from e
        return compiled.create_infer_request()

    def run(self, batch: torch.Tensor, n: int) -> torch.Tensor:
        x = batch[:n].contiguous().numpy()
        request = self._request(tuple(x.shape))
        request.infer({0: x}, share_inputs=True)
        # The request reuses its output buffer on the next call: copy it out.
        return torch.from_numpy(np.array(request.get_output_tensor(0).data, copy=True))
