"""Frames that stay on the GPU (issue 18, design B): NV12 letterboxed as torch ops
(``detect/nv12.py``) against OpenCV's conversion and the CPU letterbox, with the real
detector's boxes on both."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import numpy.typing as npt
import pytest
import torch

from streamd.config import ModelConfig
from streamd.detect import create_detector
from streamd.detect.nv12 import DeviceFrame, letterbox, nv12_to_rgb
from streamd.detect.prepost import input_shape, preprocess

IMGSZ = 320


def _nv12_frames(video: Path, every: int = 6) -> list[npt.NDArray[np.uint8]]:
    with av.open(str(video)) as container:
        frames = [f for i, f in enumerate(container.decode(video=0)) if i % every == 0]
        return [np.ascontiguousarray(f.reformat(format="nv12").to_ndarray()) for f in frames]


@pytest.fixture(scope="module")
def nv12(scene: tuple[Path, Path]) -> list[npt.NDArray[np.uint8]]:
    return _nv12_frames(scene[0])


def test_nv12_letterbox_matches_opencv_and_the_cpu_letterbox(
    nv12: list[npt.NDArray[np.uint8]],
) -> None:
    """The colour conversion is OpenCV's to the level; after the resize (bilinear on
    float here, cv2 on uint8 there) within 1 level of 255 anywhere and under 0.5 on
    average, on the scene's real frames, for a whole batch and for one mixing host and
    device frames. (Measured when written: max 0.5, mean 0.23.)"""
    bgr = [cv2.cvtColor(f, cv2.COLOR_YUV2BGR_NV12) for f in nv12]
    dev = [DeviceFrame(torch.from_numpy(f)) for f in nv12]
    cpu = torch.device("cpu")
    shape = input_shape([b.shape for b in bgr], IMGSZ, 32, True)
    assert shape == input_shape([d.shape for d in dev], IMGSZ, 32, True) == (192, 320)
    rgb = nv12_to_rgb(torch.stack([d.nv12 for d in dev]))
    assert np.array_equal(rgb.flip(1).permute(0, 2, 3, 1).to(torch.uint8).numpy(), np.stack(bgr))
    ref, ref_places = preprocess(bgr, shape, cpu, torch.float32)
    ours, places = letterbox(dev, shape, cpu, torch.float32)
    assert places == ref_places
    diff = (ours - ref).abs() * 255
    assert float(diff.max()) <= 1.0 and float(diff.mean()) <= 0.5, (diff.max(), diff.mean())
    mixed = [bgr[0], dev[1], bgr[2], dev[3]]
    both, _ = letterbox(mixed, shape, cpu, torch.float32)
    assert torch.equal(both[0], ref[0]) and torch.equal(both[2], ref[2])
    assert torch.equal(both[1], ours[1]) and torch.equal(both[3], ours[3])
    # A fixed-shape input (CUDA graphs, TensorRT): square, padded the same way.
    square, _ = letterbox(dev[:2], (IMGSZ, IMGSZ), cpu, torch.float32)
    ref_sq, _ = preprocess(bgr[:2], (IMGSZ, IMGSZ), cpu, torch.float32)
    assert float(((square - ref_sq).abs() * 255).max()) <= 1.0


def test_a_device_frame_comes_back_to_the_host_as_opencv_makes_it(
    nv12: list[npt.NDArray[np.uint8]],
) -> None:
    """Snapshots and the live view of a detector-decoded stream: the host copy."""
    back = DeviceFrame(torch.from_numpy(nv12[0])).to_bgr()
    want = cv2.cvtColor(nv12[0], cv2.COLOR_YUV2BGR_NV12)
    assert back.shape == want.shape and back.dtype == np.uint8
    assert int(np.abs(back.astype(np.int16) - want).max()) <= 1


def test_the_detector_boxes_on_nv12_frames_are_within_a_pixel_of_the_bgr_frames(
    nv12: list[npt.NDArray[np.uint8]], person_model: Path
) -> None:
    detector = create_detector(ModelConfig(weights=str(person_model), imgsz=IMGSZ), 8)
    bgr = [cv2.cvtColor(f, cv2.COLOR_YUV2BGR_NV12) for f in nv12]
    ours = detector.detect([DeviceFrame(torch.from_numpy(f)) for f in nv12])
    theirs = detector.detect(bgr)
    assert sum(len(d) for d in theirs) >= len(nv12)  # two people walk through the scene
    for a, b in zip(ours, theirs, strict=True):
        assert len(a) == len(b)
        if len(a):
            pa = a.xyxy[np.lexsort((a.xyxy[:, 1], a.xyxy[:, 0]))]
            pb = b.xyxy[np.lexsort((b.xyxy[:, 1], b.xyxy[:, 0]))]
            assert float(np.abs(pa - pb).max()) <= 1.0
