"""Synthetic scenes with ground truth: real people, cut from real photographs, on known paths.

The photographs ship inside the ultralytics wheel (``bus.jpg``, ``zidane.jpg``),
so this works offline. Each person walks back and forth in a lane of its own;
the exact box of every person in every frame is written as ground truth.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]

# (photo, y1, y2, x1, x2): tight boxes around whole people in the shipped photos.
_PEOPLE = (
    ("bus.jpg", 400, 905, 50, 245),
    ("zidane.jpg", 40, 720, 740, 1150),
    ("bus.jpg", 405, 870, 222, 345),
)


@dataclass(frozen=True, slots=True)
class SceneSpec:
    width: int = 640
    height: int = 360
    fps: int = 15
    seconds: float = 4.0
    people: int = 2
    person_height: float = 0.62  # fraction of the frame height
    seed: int = 0

    def __post_init__(self) -> None:
        if self.width % 2 or self.height % 2:
            raise ValueError("width and height must be even (H.264 4:2:0)")
        if not 1 <= self.people <= len(_PEOPLE):
            raise ValueError(f"people must be 1..{len(_PEOPLE)}")


def _assets_dir() -> Path:
    from ultralytics.utils import ASSETS

    return Path(ASSETS)


def person_crops(height_px: int) -> list[Image]:
    """The shipped people, scaled to ``height_px`` tall."""
    crops: list[Image] = []
    for name, y1, y2, x1, x2 in _PEOPLE:
        photo = cv2.imread(str(_assets_dir() / name))
        if photo is None:
            raise FileNotFoundError(f"{name} not found in ultralytics assets")
        crop = photo[y1:y2, x1:x2]
        scale = height_px / crop.shape[0]
        size = (max(1, round(crop.shape[1] * scale)), height_px)
        crops.append(np.asarray(cv2.resize(crop, size, interpolation=cv2.INTER_AREA), np.uint8))
    return crops


def background(width: int, height: int, seed: int) -> Image:
    """A calm textured backdrop: gradient, a floor band and a few soft blocks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack(
        [90 + 50 * xx / width, 120 + 40 * yy / height, 110 + 40 * (1 - xx / width)], axis=-1
    )
    img[int(height * 0.8) :] *= 0.7  # floor
    for _ in range(6):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, int(height * 0.6)))
        w, h = (
            int(rng.integers(width // 12, width // 5)),
            int(rng.integers(height // 12, height // 5)),
        )
        img[y : y + h, x : x + w] = img[y : y + h, x : x + w] * 0.6 + rng.integers(60, 200, 3) * 0.4
    noise = rng.normal(0, 3, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def _paths(
    spec: SceneSpec, crops: list[Image]
) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """Start and far end of each person's walk, one lane per person, no overlaps."""
    lane_w = spec.width / spec.people
    paths = []
    for i, crop in enumerate(crops):
        h, w = crop.shape[:2]
        margin = 0.05 * lane_w
        left = i * lane_w + margin
        right = max(left, (i + 1) * lane_w - margin - w)
        y = spec.height - h - 0.06 * spec.height
        start, end = (left, y), (right, y - 0.04 * spec.height)
        paths.append((end, start) if i % 2 else (start, end))  # alternate directions
    return paths


def render_frames(spec: SceneSpec) -> tuple[list[Image], list[list[dict[str, Any]]]]:
    """All frames of the scene and, per frame, the ground-truth boxes."""
    crops = person_crops(round(spec.height * spec.person_height))[: spec.people]
    bg = background(spec.width, spec.height, spec.seed)
    paths = _paths(spec, crops)
    n = round(spec.seconds * spec.fps)
    frames: list[Image] = []
    truth: list[list[dict[str, Any]]] = []
    for k in range(n):
        # One smooth back-and-forth walk over the clip.
        u = (1 - math.cos(2 * math.pi * k / max(n, 1))) / 2
        img = bg.copy()
        boxes = []
        for pid, (crop, ((sx, sy), (ex, ey))) in enumerate(zip(crops, paths, strict=True)):
            x, y = round(sx + (ex - sx) * u), round(sy + (ey - sy) * u)
            h, w = crop.shape[:2]
            img[y : y + h, x : x + w] = crop
            boxes.append({"id": pid, "bbox": [x, y, x + w, y + h]})
        frames.append(img)
        truth.append(boxes)
    return frames, truth


def write_scene(video: Path, spec: SceneSpec, truth_path: Path | None = None) -> Path:
    """Encode the scene as H.264 MP4 and its ground truth as JSON; return the truth path."""
    frames, truth = render_frames(spec)
    video.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(video), mode="w") as out:
        stream = out.add_stream("libx264", rate=spec.fps)
        stream.width, stream.height, stream.pix_fmt = spec.width, spec.height, "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast", "g": str(spec.fps)}
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    truth_path = truth_path or video.with_suffix(".truth.json")
    meta = {"width": spec.width, "height": spec.height, "fps": spec.fps, "frames": truth}
    truth_path.write_text(json.dumps(meta))
    return truth_path
