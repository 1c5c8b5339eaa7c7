"""NNCF's accuracy control on streamd's OpenVINO INT8 build (issue 16), one scene's set.

Quantises the FP32 export as streamd does (PERFORMANCE preset, the head's decoding, its
last convolutions and every Sigmoid in float) with ``nncf.quantize_with_accuracy_control``:
the metric is one minus the mean error of FP32's confident outputs (score > 0.2: the
score, and the four box edges / 10) on the set's held-out frames; NNCF reverts the
operations it ranks most sensitive to FP32 until the drop is under MAX_DROP (or 20
rounds). Prints what it reverted; writes the IR to OUT.

    .venv/bin/python docs/benchmarks/int8_accuracy_control.py SCENE_DIR MAX_DROP OUT.xml
"""

from __future__ import annotations

import glob
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import nncf
import numpy as np
import onnx
import openvino as ov
from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

from streamd.detect.calibration import load_calibration
from streamd.detect.quantize import float_nodes, letterboxed


def main(scene: Path, max_drop: float, out: Path) -> None:
    calib = load_calibration(scene / "int8" / "pipeline.calibration")
    assert calib is not None
    fp32 = glob.glob(os.path.expanduser("~/.cache/streamd/models/person-yolov8s-*-320-b8.onnx"))[0]
    cal = letterboxed(calib.images(calib.calibrate), 320, 32)
    val = letterboxed(calib.images(calib.held), 320, 32)
    reference = ov.Core().compile_model(ov.convert_model(fp32), "CPU",
                                        {"INFERENCE_PRECISION_HINT": "f32"})  # fmt: skip
    ref = [reference(x)[0] for x in val]

    def metric(compiled: Any, data: Iterable[Any]) -> tuple[float, list[float]]:
        per = []
        for x, r in zip(data, ref, strict=True):
            y, keep = compiled(x)[0], r[0, 4] > 0.2
            if not keep.any():
                per.append(1.0)
                continue
            score = np.abs(y[0, 4, keep] - r[0, 4, keep]).mean()
            edges = np.abs(y[0, :4, keep] - r[0, :4, keep]).mean() / 10
            per.append(1.0 - float(score) - float(edges))
        return float(np.mean(per)), per

    model = ov.convert_model(fp32)
    keep = set(float_nodes(onnx.load(fp32, load_external_data=False)))
    ignored = [op.get_friendly_name() for op in model.get_ordered_ops()
               if op.get_friendly_name().split("/WithoutBiases")[0] in keep
               or op.get_type_name() == "Sigmoid"]  # fmt: skip
    t0 = time.time()
    q = nncf.quantize_with_accuracy_control(
        model, nncf.Dataset(cal), nncf.Dataset(val), metric, max_drop=max_drop,
        drop_type=nncf.DropType.ABSOLUTE, preset=nncf.QuantizationPreset.PERFORMANCE,
        subset_size=len(cal), ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
            max_num_iterations=20),
    )  # fmt: skip
    print(f"built in {time.time() - t0:.0f} s; FakeQuantize ops left:",
          sum(op.get_type_name() == "FakeQuantize" for op in q.get_ordered_ops()))  # fmt: skip
    ov.save_model(q, str(out), compress_to_fp16=False)


if __name__ == "__main__":
    main(Path(sys.argv[1]), float(sys.argv[2]), Path(sys.argv[3]))
