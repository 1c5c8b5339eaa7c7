"""Backend choice and TensorRT engine cache keys (rebuilt exactly when something changes)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from streamd.detect import DetectorError
from streamd.detect.engine_cache import EngineCache, EngineKey, file_sha256
from streamd.detect.factory import choose_backend

KEY = EngineKey(
    model_sha256="ab" * 32,
    compute_capability="9.0",
    tensorrt_version="10.9.0",
    precision="fp16",
    min_batch=1,
    opt_batch=16,
    max_batch=32,
    imgsz=640,
)


@pytest.mark.parametrize(
    "change",
    [
        {"model_sha256": "cd" * 32},
        {"compute_capability": "8.9"},
        {"tensorrt_version": "10.10.0"},
        {"precision": "int8"},
        {"opt_batch": 8},
        {"max_batch": 64},
        {"imgsz": 320},
    ],
)
def test_every_part_of_the_key_changes_the_engine(change: dict[str, object]) -> None:
    other = dataclasses.replace(KEY, **change)  # type: ignore[arg-type]
    assert other.digest() != KEY.digest()
    assert other.filename("yolo11n") != KEY.filename("yolo11n")


def test_same_key_same_file_and_a_readable_name() -> None:
    again = EngineKey(**dataclasses.asdict(KEY))
    assert again.digest() == KEY.digest()
    name = KEY.filename("yolo11n")
    assert name.startswith("yolo11n-640-fp16-b32-sm90-trt10.9.0-") and name.endswith(".engine")


def test_bad_batch_profile_is_refused() -> None:
    with pytest.raises(ValueError, match="batch profile"):
        dataclasses.replace(KEY, opt_batch=64)


def test_cache_builds_once_and_rebuilds_when_the_key_changes(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path / "engines")
    builds: list[Path] = []

    def build(out: Path) -> None:
        builds.append(out)
        out.write_bytes(b"engine for " + KEY.digest().encode())

    path, built = cache.get_or_build(KEY, "m", build)
    assert built and path.read_bytes().startswith(b"engine for")
    assert cache.get_or_build(KEY, "m", build) == (path, False)  # a hit: no rebuild
    assert len(builds) == 1
    other, built = cache.get_or_build(dataclasses.replace(KEY, imgsz=320), "m", build)
    assert built and other != path and len(builds) == 2
    # A sidecar that does not match (hand-edited, or another version's) is a miss.
    path.with_suffix(".json").write_text('{"imgsz": 1}')
    assert cache.lookup(KEY, "m") is None


def test_a_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    cache = EngineCache(tmp_path)

    def broken(out: Path) -> None:
        out.write_bytes(b"half an engine")
        raise RuntimeError("builder crashed")

    with pytest.raises(RuntimeError, match="builder crashed"):
        cache.get_or_build(KEY, "m", broken)
    assert list(tmp_path.iterdir()) == []
    assert cache.lookup(KEY, "m") is None


def test_model_hash_is_of_the_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.write_bytes(b"weights")
    b.write_bytes(b"weights")
    assert file_sha256(a) == file_sha256(b)
    b.write_bytes(b"weights2")
    assert file_sha256(a) != file_sha256(b)


@pytest.mark.parametrize(
    ("requested", "cuda", "ort", "trt", "expected"),
    [
        ("auto", True, True, True, "tensorrt"),  # the fastest GPU path first
        ("auto", True, True, False, "torch"),  # then torch FP16 + CUDA graphs
        ("auto", False, True, True, "onnx"),  # no GPU: onnxruntime beats torch on CPUs
        ("auto", False, False, False, "torch"),
        ("torch", True, True, True, "torch"),
        ("cpu", True, True, True, "torch"),
        ("onnx", True, True, True, "onnx"),
        ("tensorrt", True, False, True, "tensorrt"),
        ("null", False, False, False, "null"),  # the measurement backend, only when asked
    ],
)
def test_backend_choice(requested: str, cuda: bool, ort: bool, trt: bool, expected: str) -> None:
    kind, why = choose_backend(requested, cuda, ort, trt)
    assert kind == expected and why


def test_null_backend_is_asked_for_by_yaml_null_and_never_chosen_by_auto() -> None:
    from streamd.config import parse_config

    cfg = parse_config("model: {backend: null, null_boxes: 3}\nstreams: [{id: a, url: x.mp4}]")
    assert cfg.model.backend == "null" and cfg.model.null_boxes == 3
    picks = {choose_backend("auto", c, o, t)[0] for c in (0, 1) for o in (0, 1) for t in (0, 1)}
    assert "null" not in picks


def test_null_boxes_move_smoothly_and_differ_between_streams() -> None:
    import numpy as np

    from streamd.detect.null_backend import NullDetector
    from streamd.types import FrameRef

    det = NullDetector(10)
    frame = np.zeros((180, 320, 3), np.uint8)

    def boxes(stream: str, t: float) -> np.ndarray:
        ref = FrameRef(stream, "r", 4, 180, 320, 0, 0, 0.0, t, 0.0, 0.0)
        return np.asarray(det.detect([frame], [ref])[0].xyxy)

    a0, a1 = boxes("a", 1.0), boxes("a", 1.0 + 1 / 30)
    assert a0.shape == (10, 4) and (a0[:, 2] > a0[:, 0]).all() and (a0[:, 3] > a0[:, 1]).all()
    assert 0 < np.abs(a1 - a0).max() < 3.0  # moves, a few pixels per frame at most
    assert np.abs(boxes("b", 1.0) - a0).max() > 1.0  # another stream, other paths
    assert (a0 >= 0).all() and (a0[:, 2] <= 320).all() and (a0[:, 3] <= 180).all()


def test_asking_for_an_absent_backend_is_refused_with_the_fix() -> None:
    with pytest.raises(DetectorError, match=r"pip install 'streamd\[onnx\]'"):
        choose_backend("onnx", cuda=True, onnx_runtime=False)
    with pytest.raises(DetectorError, match=r"TensorRT is not installed; pip install tensorrt"):
        choose_backend("tensorrt", cuda=True, onnx_runtime=True, tensorrt=False)
    with pytest.raises(DetectorError, match=r"needs a CUDA GPU"):
        choose_backend("tensorrt", cuda=False, onnx_runtime=True, tensorrt=True)
