"""The detector backends: our letterbox/NMS against ultralytics' predictor, ground truth, GPU paths.

CPU backends always run; CUDA graphs skip without CUDA; TensorRT skips without TensorRT.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt
import pytest
import supervision as sv
import torch

from streamd.config import ModelConfig
from streamd.detect import DetectorError, create_detector
from streamd.detect.prepost import input_shape, postprocess, preprocess, to_detections
from streamd.detect.yolo import Runner, batch_buckets, bucket_for
from tests.groundtruth import iou

Frames = list[npt.NDArray[np.uint8]]
CUDA = torch.cuda.is_available()


def _tensorrt() -> bool:
    from streamd.detect.tensorrt_backend import available

    return available()


@pytest.fixture(scope="module")
def scene_frames(scene: tuple[Path, Path]) -> tuple[Frames, list[list[dict[str, Any]]]]:
    video, truth = scene
    with av.open(str(video)) as c:
        frames = [f.to_ndarray(format="bgr24") for f in c.decode(video=0)]
    return frames, json.loads(truth.read_text())["frames"]


def _cfg(person_model: Path, backend: str, **extra: Any) -> ModelConfig:
    return ModelConfig(weights=str(person_model), imgsz=320, backend=backend, **extra)  # type: ignore[arg-type]


def _match(ours: sv.Detections, ref: npt.NDArray[np.float32]) -> float:
    """Largest coordinate difference (px) between each reference box and our best-IoU box."""
    assert len(ours) == len(ref)
    if not len(ref):
        return 0.0
    best = sv.box_iou_batch(ref, ours.xyxy).argmax(1)
    assert len(set(best.tolist())) == len(ref)  # one of ours per reference box
    return float(np.abs(ours.xyxy[best] - ref).max())


def _min_iou(ours: sv.Detections, ref: npt.NDArray[np.float32]) -> float:
    """Same number of boxes, and each reference box overlaps one of ours by at least this."""
    assert len(ours) == len(ref)
    return float(sv.box_iou_batch(ref, ours.xyxy).max(1).min()) if len(ref) else 1.0


@pytest.mark.parametrize("backend", ["cpu", "onnx"])
def test_boxes_match_ultralytics_predictor_and_ground_truth(
    person_model: Path, scene_frames: tuple[Frames, list[list[dict[str, Any]]]], backend: str
) -> None:
    """Our letterbox + NMS reproduce ultralytics' predictor on the same weights, and find
    the people the scene put there."""
    from ultralytics.models import YOLO

    frames, truth = scene_frames
    detector = create_detector(_cfg(person_model, backend), max_batch=4)
    assert detector.backend == ("torch-cpu" if backend == "cpu" else "onnx-cpu")
    reference = YOLO(str(person_model), task="detect")
    picked = list(range(0, len(frames), 6))
    ours = detector.detect([frames[i] for i in picked])
    theirs = reference.predict([frames[i] for i in picked], imgsz=320, conf=0.25, iou=0.7,
                               device="cpu", verbose=False)  # fmt: skip
    worst = max(_match(o, t.boxes.xyxy.numpy()) for o, t in zip(ours, theirs, strict=True))
    assert worst < 1.0, f"boxes differ from ultralytics' by up to {worst:.2f} px"
    found = sum(
        any(iou(list(map(float, box)), person["bbox"]) >= 0.5 for box in det.xyxy)
        for i, det in zip(picked, ours, strict=True)
        for person in truth[i]
    )
    total = sum(len(truth[i]) for i in picked)
    assert found / total >= 0.9, f"recall {found}/{total}"
    assert set(ours[0].data["class_name"]) <= set(detector.names.values())


def test_batching_and_mixed_sizes_give_the_same_boxes(
    person_model: Path, scene_frames: tuple[Frames, list[list[dict[str, Any]]]]
) -> None:
    frames, _ = scene_frames
    detector = create_detector(_cfg(person_model, "onnx"), max_batch=3)
    small = np.ascontiguousarray(frames[5][::2, ::2])  # 320x180: a second camera's size
    alone = [detector.detect([f])[0] for f in (frames[0], small, frames[10], frames[20])]
    together = detector.detect([frames[0], small, frames[10], frames[20]])  # 2 calls: 3 + 1
    for a, b in zip(alone, together, strict=True):
        # Mixed sizes go in square, not rectangular: other padding, slightly other boxes.
        assert _min_iou(b, a.xyxy) > 0.9
    assert len(alone[1]) >= 1 and float(alone[1].xyxy[:, 2].max()) <= 320


def test_classes_filter_and_unknown_class(person_model: Path) -> None:
    with pytest.raises(DetectorError, match=r"model.classes: \['cat'\] not in"):
        create_detector(_cfg(person_model, "onnx", classes=["cat"]), max_batch=1)


def test_input_shape_rect_and_square() -> None:
    assert input_shape([(360, 640, 3)] * 2, 320, 32, rect=True) == (192, 320)
    assert input_shape([(360, 640, 3), (180, 320, 3)], 320, 32, rect=True) == (320, 320)
    assert input_shape([(360, 640, 3)], 320, 32, rect=False) == (320, 320)
    assert input_shape([(1080, 1920, 3)], 640, 32, rect=True) == (384, 640)


def test_letterbox_then_postprocess_maps_boxes_back_to_each_frame() -> None:
    """Synthetic head output with known boxes in input pixels: NMS and un-letterboxing exact."""
    frames = [np.zeros((360, 640, 3), np.uint8), np.zeros((100, 50, 3), np.uint8)]
    batch, places = preprocess(frames, (320, 320), torch.device("cpu"), torch.float32)
    assert batch.shape == (2, 3, 320, 320)
    # 640x360 → gain 0.5, 320x180 placed 70 px down; 50x100 → gain 3.2, 160x320 at x=80.
    assert (places[0].gain, places[0].left, places[0].top) == (0.5, 0, 70)
    assert (places[1].gain, places[1].left, places[1].top) == (3.2, 80, 0)
    assert float(batch[0, 0, 0, 0]) == pytest.approx(114 / 255)  # pad
    assert float(batch[0, 0, 100, 100]) == 0.0  # the (black) picture
    anchors = 6
    preds = torch.zeros(2, 4 + 2, anchors)

    def put(b: int, a: int, xywh: list[float], cls: int, score: float) -> None:
        preds[b, :4, a] = torch.tensor(xywh)
        preds[b, 4 + cls, a] = score

    put(0, 0, [100, 120, 40, 60], 0, 0.9)  # kept
    put(0, 1, [101, 121, 40, 60], 0, 0.8)  # same class, IoU ~0.9 → suppressed
    put(0, 2, [101, 121, 40, 60], 1, 0.7)  # other class → kept
    put(0, 3, [250, 200, 20, 20], 0, 0.2)  # below conf
    put(1, 0, [160, 160, 32, 64], 1, 0.6)  # second frame
    rows = postprocess(preds, places, conf=0.25, iou=0.7, classes=None)
    dets = to_detections(rows, 2, {0: "a", 1: "b"})
    assert len(dets[0]) == 2 and list(dets[0].class_id) == [0, 1]
    np.testing.assert_allclose(dets[0].xyxy[0], [160, 40, 240, 160], atol=1e-4)
    np.testing.assert_allclose(dets[1].xyxy[0], [20, 40, 30, 60], atol=1e-4)
    assert list(dets[1].data["class_name"]) == ["b"]
    only_a = to_detections(postprocess(preds, places, 0.25, 0.7, classes=[0]), 2, {0: "a", 1: "b"})
    assert [len(d) for d in only_a] == [1, 0]
    # Across classes (model.agnostic_nms): the other class's box over the kept one goes too;
    # the second frame's box is in another frame, so it stays.
    agnostic = postprocess(preds, places, 0.25, 0.7, classes=None, agnostic=True)
    assert [len(d) for d in to_detections(agnostic, 2, {0: "a", 1: "b"})] == [1, 1]


def test_batch_buckets() -> None:
    assert batch_buckets(1) == [1]
    assert batch_buckets(8) == [1, 2, 4, 8]
    assert batch_buckets(12) == [1, 2, 4, 8, 12]
    assert bucket_for(5, batch_buckets(12)) == 8 and bucket_for(9, batch_buckets(12)) == 12


def test_onnx_session_does_not_spin_and_takes_the_thread_setting(person_model: Path) -> None:
    from streamd.detect.yolo import YoloDetector

    detector = create_detector(_cfg(person_model, "onnx", threads=1), max_batch=2)
    assert isinstance(detector, YoloDetector)
    options = detector.runner.session.get_session_options()  # type: ignore[attr-defined]
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_auto_without_cuda_picks_onnx(person_model: Path) -> None:
    if CUDA:
        pytest.skip("this machine has CUDA")
    assert create_detector(_cfg(person_model, "auto"), max_batch=1).backend == "onnx-cpu"
    with pytest.raises(DetectorError, match="needs a CUDA GPU"):
        create_detector(_cfg(person_model, "tensorrt"), max_batch=1)


def _compare_with_eager(person_model: Path, frames: Frames, make: Callable[[], Runner]) -> None:
    from streamd.detect.yolo import YoloDetector, load_checkpoint

    cfg = _cfg(person_model, "torch")
    eager = create_detector(cfg.model_copy(update={"cuda_graphs": False}), max_batch=8)
    _, names, _ = load_checkpoint(str(person_model))
    fast = YoloDetector(make(), names, cfg)
    for n in (1, 3, 8):
        for a, b in zip(eager.detect(frames[:n]), fast.detect(frames[:n]), strict=True):
            assert _min_iou(b, a.xyxy) > 0.9  # FP16 both; square vs rectangular input


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_graphs_give_the_eager_boxes(
    person_model: Path, scene_frames: tuple[Frames, list[list[dict[str, Any]]]]
) -> None:
    from streamd.detect.yolo import CudaGraphRunner, load_checkpoint

    def make() -> Runner:
        model, _, _ = load_checkpoint(str(person_model))
        return CudaGraphRunner(model, torch.device("cuda:0"), 8, 320)

    _compare_with_eager(person_model, scene_frames[0], make)
    detector = create_detector(_cfg(person_model, "torch"), max_batch=8)
    assert detector.backend == "torch-cuda-fp16-graphs"


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA or not _tensorrt(), reason="needs CUDA and TensorRT")
def test_tensorrt_engine_is_built_once_and_matches_torch(
    person_model: Path, tmp_path: Path, scene_frames: tuple[Frames, list[list[dict[str, Any]]]]
) -> None:
    cfg = _cfg(person_model, "tensorrt", cache_dir=str(tmp_path))
    detector = create_detector(cfg, max_batch=8)
    assert detector.backend == "tensorrt-fp16"
    engines = list(tmp_path.glob("*.engine"))
    assert len(engines) == 1
    built_at = engines[0].stat().st_mtime_ns
    create_detector(cfg, max_batch=8)
    assert engines[0].stat().st_mtime_ns == built_at  # cache hit: not rebuilt

    def make() -> Runner:
        return detector.runner  # type: ignore[attr-defined,no-any-return]

    _compare_with_eager(person_model, scene_frames[0], make)


def test_export_engine_fills_the_cache_the_daemon_reads(person_model: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    cache = tmp_path / "cache"
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(json.dumps({
        "model": {"weights": str(person_model), "imgsz": 320, "cache_dir": str(cache)},
        "batching": {"max_batch": 2},
        "streams": [{"id": "a", "url": str(tmp_path / "none.mp4")}],
    }))  # fmt: skip
    cmd = [sys.executable, "-m", "streamd.cli", "export-engine", str(pipeline)]
    onnx = subprocess.run([*cmd, "--format", "onnx"], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert onnx.returncode == 0, onnx.stderr
    exported = Path(onnx.stdout.strip().splitlines()[-1])
    assert exported.parent == cache and exported.name.endswith("-320-b2.onnx")
    made = exported.stat().st_mtime_ns
    cfg = _cfg(person_model, "onnx", cache_dir=str(cache))
    assert create_detector(cfg, max_batch=2).backend == "onnx-cpu"
    assert exported.stat().st_mtime_ns == made  # used, not exported again
    if not CUDA:
        engine = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert engine.returncode == 2
        assert "model.backend tensorrt: needs a CUDA GPU" in engine.stderr
