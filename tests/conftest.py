"""Shared fixtures: the offline model, a synthetic scene with ground truth, free ports."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PERSON_MODEL = ROOT / "models" / "person-yolov8s.pt"

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ["YOLO_AUTOINSTALL"] = "0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def shm_segments() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("streamd_*")}


@pytest.fixture(scope="session")
def person_model() -> Path:
    if not PERSON_MODEL.exists():
        pytest.fail(f"{PERSON_MODEL} missing: run `make setup` (models/fetch-person-model.sh)")
    return PERSON_MODEL


@pytest.fixture(scope="session")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 4 s, 15 fps, 640x360 H.264 clip of two walking people and its ground truth."""
    from streamd.synth import SceneSpec, write_scene

    video = tmp_path_factory.mktemp("scene") / "walk.mp4"
    truth = write_scene(video, SceneSpec(width=640, height=360, fps=15, seconds=4.0, people=2))
    return video, truth


@pytest.fixture(scope="session")
def live_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 60 s, 4 fps H.264 scene: long enough to outlast every live-source test.

    4 fps keeps two or three live streams under the CPU detector's capacity,
    so one stream's outage cannot speed another up (rates are compared).
    """
    from streamd.synth import SceneSpec, write_scene

    video = tmp_path_factory.mktemp("live") / "live.mp4"
    truth = write_scene(video, SceneSpec(width=640, height=360, fps=4, seconds=60.0, people=2))
    return video, truth
