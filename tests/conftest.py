"""Shared fixtures: the offline model, a synthetic scene with ground truth, free ports."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .util import free_port, shm_segments

ROOT = Path(__file__).resolve().parents[1]
PERSON_MODEL = ROOT / "models" / "person-yolov8s.pt"

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ["YOLO_AUTOINSTALL"] = "0"


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


@pytest.fixture
def run_env(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A daemon slot: tmp dir, a publish port, an event log, and cleanup of what a test started."""
    from .daemon import EventLog

    port = free_port()
    env: dict[str, Any] = {
        "tmp": tmp_path,
        "port": port,
        "shm": shm_segments(),
        "log": EventLog(f"tcp://127.0.0.1:{port}"),
        "servers": [],
        "daemon": None,
    }
    yield env
    daemon = env["daemon"]
    if daemon is not None and daemon.poll() is None:
        daemon.kill()
        daemon.wait(10)
    for server in env["servers"]:
        server.close()
    env["log"].close()


@pytest.fixture(scope="session")
def hevc_clip(live_clip: tuple[Path, Path]) -> Path:
    """The live clip re-encoded as H.265 at 480x270: a camera reconfigured while away."""
    import shutil
    import subprocess

    src, _ = live_clip
    out = src.with_name("live-hevc.mp4")
    exe = shutil.which("ffmpeg")
    assert exe, "ffmpeg missing: `make test` installs it (make system-deps)"
    subprocess.run(
        [exe, "-v", "error", "-y", "-i", str(src), "-vf", "scale=480:270", "-c:v", "libx265",
         "-preset", "ultrafast", "-x265-params", "log-level=error", str(out)],
        check=True,
    )  # fmt: skip
    return out
