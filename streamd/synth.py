"""Synthetic scenes with ground truth: real people, cut from real photographs, on known paths.

The photographs ship inside the ultralytics wheel (``bus.jpg``, ``zidane.jpg``),
so this works offline. Two kinds of scene:

- ``lanes``: each person walks back and forth in a lane of its own (no overlaps).
- ``crowd``: people of different sizes (nearer is bigger and lower) walk across at
  different speeds and times, entering and leaving the frame, crossing and occluding
  each other (the nearer one is drawn over); the light dims and comes back, and the
  sensor adds noise. Ground truth keeps a person while at least ``min_visible`` of its
  box shows (its ``visibility`` is written too), MOT style: the whole box, clipped to
  the frame.

The exact box of every person in every frame is written as ground truth.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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
# The crowd scene's people: the above and a third from the bus photo.
_CROWD = (*_PEOPLE, ("bus.jpg", 260, 885, 660, 810))
SceneKind = Literal["lanes", "crowd"]


@dataclass(frozen=True, slots=True)
class SceneSpec:
    width: int = 640
    height: int = 360
    fps: int = 15
    seconds: float = 4.0
    people: int = 2
    person_height: float = 0.62  # fraction of the frame height (lanes)
    seed: int = 0
    kind: SceneKind = "lanes"
    noise: float = 0.0  # sensor noise, standard deviation in grey levels
    light: float = 0.0  # the light dims by this share at mid-clip and comes back
    min_visible: float = 0.25  # crowd: truth keeps a person while this share shows

    def __post_init__(self) -> None:
        if self.width % 2 or self.height % 2:
            raise ValueError("width and height must be even (H.264 4:2:0)")
        most = len(_PEOPLE) if self.kind == "lanes" else 12
        if not 1 <= self.people <= most:
            raise ValueError(f"people must be 1..{most} for a {self.kind} scene")
        if not 0.0 <= self.light < 1.0:
            raise ValueError("light must be in [0, 1)")


def _assets_dir() -> Path:
    from ultralytics.utils import ASSETS

    return Path(ASSETS)


def person_crops(height_px: int) -> list[Image]:
    """The shipped people, scaled to ``height_px`` tall."""
    return [_scaled(_cut(*person), height_px) for person in _PEOPLE]


def _cut(name: str, y1: int, y2: int, x1: int, x2: int) -> Image:
    photo = cv2.imread(str(_assets_dir() / name))
    if photo is None:
        raise FileNotFoundError(f"{name} not found in ultralytics assets")
    return np.asarray(photo[y1:y2, x1:x2], np.uint8)


def _scaled(crop: Image, height_px: int) -> Image:
    scale = height_px / crop.shape[0]
    size = (max(1, round(crop.shape[1] * scale)), height_px)
    return np.asarray(cv2.resize(crop, size, interpolation=cv2.INTER_AREA), np.uint8)


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
    frames, truth = (_render_crowd if spec.kind == "crowd" else _render_lanes)(spec)
    rng = np.random.default_rng(spec.seed + 1)
    n = len(frames)
    for k, img in enumerate(frames):
        if spec.light or spec.noise:
            gain = 1.0 - spec.light * (1 - math.cos(2 * math.pi * k / max(n, 1))) / 2
            out = img.astype(np.float32) * gain
            if spec.noise:
                out += rng.normal(0.0, spec.noise, img.shape).astype(np.float32)
            frames[k] = np.clip(out, 0, 255).astype(np.uint8)
    return frames, truth


def _render_lanes(spec: SceneSpec) -> tuple[list[Image], list[list[dict[str, Any]]]]:
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


@dataclass(frozen=True, slots=True)
class _Walker:
    """One person of a crowd scene: a straight walk across at constant speed."""

    crop: Image
    depth: float  # 0 = far (small, high), 1 = near (big, low); nearer is drawn over
    direction: int  # +1 left to right, -1 right to left
    t0: float  # when the walk starts at the edge outside the frame (may be < 0)
    speed: float  # pixels per second
    feet: float  # y of the feet
    bob: float  # phase of the gait's small up and down

    def box(self, t: float, width: int) -> tuple[int, int, int, int]:
        h, w = self.crop.shape[:2]
        start = -w if self.direction > 0 else width
        x = start + self.direction * self.speed * (t - self.t0)
        y = self.feet - h + 0.01 * h * math.sin(2 * math.pi * 1.6 * t + self.bob)
        return round(x), round(y), round(x) + w, round(y) + h


def _walkers(spec: SceneSpec) -> list[_Walker]:
    rng = np.random.default_rng(spec.seed)
    photos = [_cut(*p) for p in _CROWD]
    out = []
    for i in range(spec.people):
        depth = float(rng.uniform(0.0, 1.0))
        h = round(spec.height * (0.3 + 0.36 * depth))
        crop = _scaled(photos[i % len(photos)], h)
        direction = 1 if i % 2 == 0 else -1
        if direction < 0:
            crop = np.ascontiguousarray(crop[:, ::-1])  # facing the way it walks
        crossing_s = float(rng.uniform(0.45, 1.0)) * spec.seconds  # faster and slower people
        speed = (spec.width + crop.shape[1]) / crossing_s
        # Staggered: some are already in view at the start, some still in view at the end.
        t0 = float(rng.uniform(-0.4 * crossing_s, spec.seconds - 0.6 * crossing_s))
        feet = spec.height * (0.62 + 0.34 * depth)
        out.append(_Walker(crop, depth, direction, t0, speed, feet, float(rng.uniform(0, 6.3))))
    return sorted(out, key=lambda w: w.depth)  # far first: drawn under the near ones


def _render_crowd(spec: SceneSpec) -> tuple[list[Image], list[list[dict[str, Any]]]]:
    walkers = _walkers(spec)
    bg = background(spec.width, spec.height, spec.seed)
    frames: list[Image] = []
    truth: list[list[dict[str, Any]]] = []
    for k in range(round(spec.seconds * spec.fps)):
        t = k / spec.fps
        img = bg.copy()
        owner = np.full((spec.height, spec.width), -1, np.int16)  # who shows at each pixel
        boxes = [w.box(t, spec.width) for w in walkers]
        for pid, (w, (x1, y1, x2, y2)) in enumerate(zip(walkers, boxes, strict=True)):
            cx1, cy1 = max(0, x1), max(0, y1)
            cx2, cy2 = min(spec.width, x2), min(spec.height, y2)
            if cx2 <= cx1 or cy2 <= cy1:
                continue
            img[cy1:cy2, cx1:cx2] = w.crop[cy1 - y1 : cy2 - y1, cx1 - x1 : cx2 - x1]
            owner[cy1:cy2, cx1:cx2] = pid
        shown = np.bincount(owner[owner >= 0].ravel(), minlength=len(walkers))
        frame_truth = []
        for pid, (x1, y1, x2, y2) in enumerate(boxes):
            visibility = float(shown[pid]) / ((x2 - x1) * (y2 - y1))
            if visibility >= spec.min_visible:
                clipped = [max(0, x1), max(0, y1), min(spec.width, x2), min(spec.height, y2)]
                frame_truth.append({"id": pid, "bbox": clipped, "visibility": round(visibility, 3)})
        frames.append(img)
        truth.append(frame_truth)
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
    meta = {"width": spec.width, "height": spec.height, "fps": spec.fps, "kind": spec.kind,
            "frames": truth}  # fmt: skip
    truth_path.write_text(json.dumps(meta))
    return truth_path
