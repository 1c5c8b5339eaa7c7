"""model.precision: INT8 calibrated from the pipeline's own streams, cached, guarded.

Real parts throughout: the offline person model, onnxruntime's quantiser, the
synthetic scenes with ground truth, and the real daemon for the heartbeat and
/metrics label. imgsz 320 and a dozen calibration frames keep it short.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import supervision as sv

from streamd.calibrate import calibrate
from streamd.client import Event, Subscriber
from streamd.config import ModelConfig, load_config
from streamd.detect import DetectorError, create_detector
from streamd.detect.calibration import CalibrationFrame, load_calibration, write_calibration
from streamd.detect.guard import METHOD as GUARD_METHOD
from streamd.detect.guard import GuardReport, match
from streamd.detect.precision import precision_candidates
from streamd.detect.quantize import store_guard, stored_guard

from .daemon import collect, sample, scrape, start, stop_and_check_own_clean, write_pipeline
from .groundtruth import score
from .util import free_port

CALIBRATION_FRAMES = 12  # 9 to calibrate on, 3 held out for the guard


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model cache for the module: the ONNX export is made once."""
    return tmp_path_factory.mktemp("models")


@pytest.mark.parametrize(
    ("requested", "backend", "cuda", "calibrated", "expected"),
    [
        ("auto", "onnx", False, True, ["int8", "fp32"]),  # int8 first, fp32 if its guard fails
        ("auto", "onnx", False, False, ["fp32"]),  # no calibration set: nothing to guard with
        ("auto", "onnx", True, True, ["fp32"]),  # int8 on a GPU is TensorRT's
        ("auto", "torch", True, True, ["fp16"]),  # as streamd always ran torch on CUDA
        ("auto", "torch", False, True, ["fp32"]),
        ("auto", "tensorrt", True, True, ["int8", "fp16"]),
        ("int8", "onnx", False, True, ["int8"]),
        ("bf16", "torch", False, False, ["bf16"]),
        ("fp32", "tensorrt", True, False, ["fp32"]),
        ("auto", "openvino", False, True, ["int8", "bf16", "fp32"]),  # bf16 where the CPU has it
        ("auto", "openvino", False, False, ["fp32"]),
        ("bf16", "openvino", False, True, ["bf16"]),
    ],
)
def test_precision_candidates(
    requested: str, backend: str, cuda: bool, calibrated: bool, expected: list[str]
) -> None:
    assert precision_candidates(requested, backend, cuda, calibrated, bf16=True)[0] == expected


def test_auto_takes_openvino_only_with_a_calibration_set() -> None:
    """Without one, OpenVINO could only run FP32, which onnxruntime runs faster."""
    from streamd.detect.factory import choose_backend

    assert choose_backend("auto", False, True, False, True, calibrated=True)[0] == "openvino"
    assert choose_backend("auto", False, True, False, True, calibrated=False)[0] == "onnx"
    assert choose_backend("auto", False, True, False, False, calibrated=True)[0] == "onnx"
    assert choose_backend("auto", True, True, False, True, calibrated=True)[0] == "torch"
    with pytest.raises(DetectorError, match="OpenVINO is not installed"):
        choose_backend("openvino", False, True, False, False)


def _auto_int8() -> str:
    """The backend label auto's INT8 has here: OpenVINO's where it is installed."""
    from streamd.detect import openvino_backend

    ov = openvino_backend.available() and openvino_backend.nncf_available()
    return "openvino-cpu-int8" if ov else "onnx-cpu-int8"


@pytest.mark.parametrize(
    ("requested", "backend", "cuda", "calibrated", "message"),
    [
        ("int8", "onnx", False, False, "needs a calibration set"),
        ("bf16", "onnx", False, True, "runs fp32, int8"),
        ("int8", "torch", True, True, "needs backend tensorrt"),
        ("fp16", "torch", False, False, "runs fp32, bf16"),
    ],
)
def test_precision_refused_where_the_backend_cannot(
    requested: str, backend: str, cuda: bool, calibrated: bool, message: str
) -> None:
    with pytest.raises(DetectorError, match=message):
        precision_candidates(requested, backend, cuda, calibrated)


def _dets(boxes: list[list[float]]) -> sv.Detections:
    xyxy = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return sv.Detections(xyxy=xyxy, confidence=np.ones(len(xyxy), dtype=np.float32),
                         class_id=np.zeros(len(xyxy), dtype=int))  # fmt: skip


def test_guard_figures_and_verdict() -> None:
    """Greedy one-to-one matching at IoU 0.5: a missed box costs recall, an extra one
    precision; the verdict names what fell under the floor."""
    ref = [_dets([[i * 50, 0, i * 50 + 40, 80] for i in range(10)])]
    shifted = [[i * 50 + 2, 0, i * 50 + 42, 80] for i in range(9)]  # one missed, IoU ~0.9
    ours = [_dets([*shifted, [600, 0, 640, 80]])]  # and one extra
    m = match(ref, ours)
    assert (m.reference, m.found, m.matched) == (10, 10, 9)
    assert m.recall == pytest.approx(0.9) and m.precision == pytest.approx(0.9)
    assert 0.85 < m.mean_iou < 0.95
    report = GuardReport("int8", 1, m, None, None, 0.25, 0.7, None)
    passed, words = report.verdict(0.95, 0.95)
    assert not passed and "recall 0.900 < 0.95" in words and "precision 0.900 < 0.95" in words
    assert report.verdict(0.9, 0.9)[0]
    assert GuardReport.from_json(json.loads(json.dumps(report.to_json()))) == report
    few = GuardReport("int8", 1, match([_dets([[0, 0, 9, 9]])], [_dets([[0, 0, 9, 9]])]), None,
                      None, 0.25, 0.7, None)  # fmt: skip
    assert not few.verdict(0.95, 0.95)[0]  # 1 box judges nothing: refused, not waved through


def test_a_stored_verdict_is_only_reused_for_the_same_thresholds_and_nms(tmp_path: Path) -> None:
    """The guard's figures kept beside a quantised model are taken again when the
    thresholds or the NMS mode (model.agnostic_nms: both models' boxes change) differ."""
    ref = [_dets([[i * 50, 0, i * 50 + 40, 80] for i in range(10)])]
    report = GuardReport("int8", 1, match(ref, ref), None, None, 0.25, 0.7, None)
    model = tmp_path / "m-int8.onnx"
    store_guard(model, report)
    assert stored_guard(model, (0.25, 0.7, None)) == report
    assert stored_guard(model, (0.3, 0.7, None)) is None
    assert stored_guard(model, (0.25, 0.7, None), GUARD_METHOD + "-agnostic") is None
    store_guard(model, replace(report, method=GUARD_METHOD + "-agnostic"))
    assert stored_guard(model, (0.25, 0.7, None), GUARD_METHOD + "-agnostic") is not None
    assert stored_guard(model, (0.25, 0.7, None)) is None


def test_guard_forgives_a_score_that_crossed_the_threshold_but_not_a_shift() -> None:
    """A box FP32 scored 0.27 and INT8 0.23 (conf 0.25) is the same object seen; every score
    lowered by 0.1 is a loss even when each box is still there."""
    from streamd.detect.guard import agreement

    boxes = [[i * 50, 0, i * 50 + 40, 80] for i in range(10)]

    def scored(conf: list[float]) -> list[sv.Detections]:
        d = _dets(boxes)
        d.confidence = np.asarray(conf, dtype=np.float32)
        return [d]

    ref = scored([0.27] * 5 + [0.8] * 5)
    jitter = agreement(ref, scored([0.23] * 5 + [0.81] * 5), 0.25)
    assert (jitter.recall, jitter.precision) == (1.0, 1.0) and abs(jitter.conf_shift) < 0.05
    shifted = agreement(ref, scored([0.17] * 5 + [0.7] * 5), 0.25)
    report = GuardReport("int8", 1, shifted, None, None, 0.25, 0.7, None)
    passed, words = report.verdict(0.95, 0.95)
    assert not passed and "confidence moved -0.100" in words


def _held_frames_truth(video: Path, truth: Path) -> tuple[list[np.ndarray], list[list[dict]]]:
    import av

    with av.open(str(video)) as c:
        frames = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    return frames, json.loads(truth.read_text())["frames"]


@pytest.mark.e2e
def test_calibrate_builds_int8_that_the_next_start_reuses(
    person_model: Path, scene: tuple[Path, Path], model_cache: Path, tmp_path: Path
) -> None:
    """`streamd calibrate` samples the pipeline's stream, quantises, guards and caches; the
    daemon started next finds the set beside the pipeline file and loads that model (not
    rebuilt), says int8 in its heartbeat and metric label, and its boxes match the scene's
    ground truth. Backend auto: OpenVINO's INT8 where it is installed, else onnxruntime's."""
    label = _auto_int8()
    suffix = ".xml" if label.startswith("openvino") else ".onnx"
    video, truth_path = scene
    port = free_port()
    pipeline = write_pipeline(tmp_path, person_model, port, [{"id": "walk", "url": str(video)}],
                              model={"weights": str(person_model), "imgsz": 320, "conf": 0.25,
                                     "cache_dir": str(model_cache)})  # fmt: skip
    cfg = load_config(pipeline)
    assert cfg.model.calibration is None  # nothing calibrated yet
    outcome = calibrate(cfg, pipeline, CALIBRATION_FRAMES, 60.0)
    assert (outcome.backend, outcome.precision) == (label, "int8"), outcome.verdicts
    assert outcome.folder == tmp_path / "pipeline.calibration"
    cs = load_calibration(outcome.folder)
    assert cs is not None and len(cs.frames) == CALIBRATION_FRAMES and len(cs.held) == 3
    assert all(f.truth is not None for f in cs.frames)  # synth's truth came along
    (built,) = model_cache.glob(f"*-int8-c{cs.digest[:12]}-*{suffix}")
    stamp = built.stat().st_mtime_ns
    assert load_config(pipeline).model.calibration == str(outcome.folder)

    sub = Subscriber(f"tcp://127.0.0.1:{port}")  # connected before the daemon binds
    daemon = start(pipeline, tmp_path / "daemon.log")
    try:
        truth = json.loads(truth_path.read_text())["frames"]

        def done(evs: list[Event]) -> bool:
            beats = [e for e in evs if e.topic == "heartbeat"]
            return sum(1 for e in evs if e.topic == "det.walk") >= len(truth) and bool(beats)

        events = collect(sub, done, timeout_s=120)
        backend = [e.payload for e in events if e.topic == "heartbeat"][-1]["backend"]
        m = scrape(pipeline)
        stop_and_check_own_clean(daemon, signal.SIGTERM)
    finally:
        if daemon.poll() is None:
            daemon.kill()
        sub.close()
    text = (tmp_path / "daemon.log").read_text()
    assert backend == label, text[-3000:]
    assert sample(m, "streamd_detector_backend", backend=label) == 1.0
    assert "INT8 model from cache" in text and "quantised in" not in text
    assert built.stat().st_mtime_ns == stamp
    assert list(model_cache.glob(f"*-int8-c{cs.digest[:12]}-*{suffix}")) == [built]
    walk = [e.payload for e in events if e.topic == "det.walk"]
    s = score(walk, truth)
    print(f"int8 recall against ground truth: {s.recall:.3f} ({s.matched}/{s.truths})")
    assert s.recall >= 0.9


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_guard_refuses_a_blank_calibration_and_auto_falls_back(
    backend: str, person_model: Path, model_cache: Path, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """Calibrated on black frames, INT8 misses people FP32 finds on a crowded scene: refused
    with the figures in the log; auto falls back (onnxruntime: FP32; OpenVINO: BF16, which
    needs no calibration, where the CPU has it, else FP32); int8 asked for refuses to start."""
    from streamd.detect import openvino_backend

    if backend == "openvino" and not (openvino_backend.available()
                                      and openvino_backend.nncf_available()):  # fmt: skip
        pytest.skip("OpenVINO and NNCF are not installed (pip install 'streamd[openvino]')")
    from streamd.synth import SceneSpec, render_frames

    frames, _ = render_frames(SceneSpec(width=640, height=360, fps=15, seconds=4.0, people=8,
                                        seed=3, kind="crowd", noise=4.0, light=0.4))  # fmt: skip
    black = np.zeros_like(frames[0])
    rows = [(CalibrationFrame(f"black-{i}.png"), black) for i in range(4)]
    rows += [(CalibrationFrame(f"held-{i:03d}.png", "crowd", i / 15, held=True), frames[i])
             for i in range(0, len(frames), 5)]  # fmt: skip
    folder = tmp_path / "blank.calibration"
    write_calibration(folder, rows, {})
    cfg = ModelConfig(weights=str(person_model), imgsz=320, calibration=str(folder),
                      cache_dir=str(model_cache), backend=backend)  # fmt: skip
    with caplog.at_level(logging.INFO, logger="streamd.detect.factory"):
        detector = create_detector(cfg, max_batch=4)
    fallback = "bf16" if backend == "openvino" and openvino_backend.has_bf16() else "fp32"
    label = {"onnx": "onnx-cpu", "openvino": "openvino-cpu"}[backend]
    label += "" if fallback == "fp32" else f"-{fallback}"
    assert (detector.backend, getattr(detector, "precision", None)) == (label, fallback)
    refused = [r.getMessage() for r in caplog.records if "refused by the accuracy guard" in
               r.getMessage()]  # fmt: skip
    assert refused and f"falling back to {fallback}" in refused[0], caplog.text
    assert "recall" in refused[0] and "< 0.95" in refused[0]
    print(refused[0])
    t0 = time.monotonic()
    with pytest.raises(DetectorError, match=r"model\.precision int8: .*refused"):
        create_detector(cfg.model_copy(update={"precision": "int8"}), max_batch=4)
    assert time.monotonic() - t0 < 20  # the model and its figures came from the cache


def _ov_quantised(model: Path) -> dict[str, bool]:
    """Each convolution of an OpenVINO IR: whether its input comes through a FakeQuantize."""
    import openvino as ov

    return {op.get_friendly_name().removesuffix("/WithoutBiases"):
            op.input(0).get_source_output().get_node().get_type_name() == "FakeQuantize"
            for op in ov.Core().read_model(str(model)).get_ordered_ops()
            if op.get_type_name() == "Convolution"}  # fmt: skip


def _qdq_quantised(model: Path) -> dict[str, bool]:
    """Each Conv of a QDQ model: whether its weights come through a DequantizeLinear."""
    import onnx

    graph = onnx.load(str(model)).graph
    made_by = {o: n.op_type for n in graph.node for o in n.output}
    return {n.name: made_by.get(n.input[1]) == "DequantizeLinear"
            for n in graph.node if n.op_type == "Conv"}  # fmt: skip


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_int8_keeps_the_heads_last_convolutions_in_float(
    backend: str, person_model: Path, model_cache: Path, tmp_path: Path
) -> None:
    """Both INT8 builds run the detect head's last convolutions (the class scores and box
    edges themselves) in FP32, as the head after them; the convolutions before them are
    quantised."""
    from streamd.detect import openvino_backend

    if backend == "openvino" and not (openvino_backend.available()
                                      and openvino_backend.nncf_available()):  # fmt: skip
        pytest.skip("OpenVINO and NNCF are not installed (pip install 'streamd[openvino]')")
    from streamd.synth import SceneSpec, render_frames

    frames, _ = render_frames(SceneSpec(width=640, height=360, fps=15, seconds=1.0, people=4,
                                        seed=5, kind="crowd", noise=4.0, light=0.4))  # fmt: skip
    rows = [(CalibrationFrame(f"f-{i:03d}.png", "crowd", i / 15, held=i % 4 == 3), f)
            for i, f in enumerate(frames[:8])]  # fmt: skip
    folder = tmp_path / "crowd.calibration"
    write_calibration(folder, rows, {})
    cs = load_calibration(folder)
    assert cs is not None
    cfg = ModelConfig(weights=str(person_model), imgsz=320, calibration=str(folder),
                      cache_dir=str(model_cache), backend=backend, precision="int8",
                      guard_recall=0.0, guard_precision=0.0)  # fmt: skip
    assert create_detector(cfg, max_batch=1).precision == "int8"
    if backend == "openvino":
        (ir,) = model_cache.glob(f"*-ov-int8-c{cs.digest[:12]}-*.xml")
        quantised = _ov_quantised(ir)
    else:
        (qdq,) = model_cache.glob(f"*-320-int8-c{cs.digest[:12]}-*.onnx")
        quantised = _qdq_quantised(qdq)
    last = [f"/model.22/{b}.{i}/{b}.{i}.2/Conv" for b in ("cv2", "cv3") for i in range(3)]
    before = [f"/model.22/{b}.{i}/{b}.{i}.1/conv/Conv" for b in ("cv2", "cv3") for i in range(3)]
    assert [n for n in last if quantised[n]] == []
    assert [n for n in before if not quantised[n]] == []


def test_an_export_without_the_head_layout_is_quantised_whole_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An export whose head's output is not fed by convolutions (as ultralytics' is, by
    each scale's last one): nothing extra is kept in FP32, and the log says so."""
    import onnx
    from onnx import TensorProto, helper

    from streamd.detect.quantize import float_nodes

    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 1, 1], [0.1] * 12)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["images", "w"], ["y"], name="conv"),
         helper.make_node("Sigmoid", ["y"], ["s"], name="act"),
         helper.make_node("Concat", ["s"], ["out"], name="head", axis=1)],
        "flat", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 8, 8])], [weight],
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="streamd.detect.quantize"):
        kept = float_nodes(onnx.helper.make_model(graph))
    assert kept == ["head"]
    assert "no last convolutions of a detect head" in caplog.text


def test_a_new_calibration_set_is_a_new_build(tmp_path: Path) -> None:
    """The set's digest is in both cache keys; a folder of plain images is a set too (every
    fourth held out), and changing one frame changes its digest."""
    import dataclasses

    import cv2

    from streamd.detect.engine_cache import EngineKey
    from streamd.detect.quantize import QuantKey

    q = QuantKey("ab" * 32, 320, "cd" * 32, "1.32.0")
    assert q.filename("m") != dataclasses.replace(q, calibration_sha256="ef" * 32).filename("m")
    e = EngineKey("ab" * 32, "9.0", "10.9", "int8", 1, 4, 8, 640, "cd" * 32)
    assert e.digest() != dataclasses.replace(e, calibration_sha256="ef" * 32).digest()
    for i in range(8):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((36, 64, 3), i * 10, dtype=np.uint8))
    cs = load_calibration(tmp_path)
    assert cs is not None and [f.file for f in cs.held] == ["3.png", "7.png"]
    cv2.imwrite(str(tmp_path / "0.png"), np.full((36, 64, 3), 255, dtype=np.uint8))
    again = load_calibration(tmp_path)
    assert again is not None and again.digest != cs.digest
    assert load_calibration(tmp_path / "missing") is None
