"""Issue 14's small things against the real daemon: SIGTERM under a saturated load,
HTTP clients that go away, and ``streamd subscribe`` given a pipeline file."""

from __future__ import annotations

import json
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .daemon import http_status, start, stop_and_check_clean, write_pipeline
from .util import free_port, shm_segments


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from streamd.synth import SceneSpec, write_scene

    video = tmp_path_factory.mktemp("small") / "clip.mp4"
    write_scene(video, SceneSpec(width=320, height=180, fps=15, seconds=2.0, people=1))
    return video


def _wait_analysing(cfg: Path, streams: set[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            rows = http_status(cfg)["streams"]
            if all(rows[s]["analysed"] > 0 for s in streams):
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"streams {streams} not analysing within {timeout_s}s")


def test_sigterm_stops_a_saturated_daemon_within_5s(clip: Path, tmp_path: Path) -> None:
    # Four files read as fast as they are taken (block), looping: every queue stays full.
    streams = [{"id": f"s{i}", "url": str(clip), "loop": True, "drop_policy": "block"}
               for i in range(4)]  # fmt: skip
    cfg = write_pipeline(tmp_path, Path("unused.pt"), free_port(), streams,
                         model={"backend": None, "null_boxes": 20, "imgsz": 320})  # fmt: skip
    shm_before = shm_segments()
    daemon = start(cfg, tmp_path / "daemon.log")
    try:
        _wait_analysing(cfg, {s["id"] for s in streams}, 60.0)
        time.sleep(1.0)  # saturated for a while
        elapsed = stop_and_check_clean(daemon, signal.SIGTERM, shm_before)
    finally:
        daemon.kill()
    assert elapsed < 5.0


def _ask_and_vanish(listen: str, path: str) -> None:
    """Send a request, then reset the connection before the answer comes."""
    host, port = listen.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        time.sleep(0.2)


@pytest.fixture(scope="module")
def dead_and_live(clip: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One daemon for the two tests that only talk to it: a camera that never gives a
    frame (``dead``) and one that streams (``a``). Stopped once after both; its whole
    log, the stop included, must hold no traceback."""
    tmp = tmp_path_factory.mktemp("dead-and-live")
    streams = [{"id": "dead", "url": str(tmp / "missing.mp4")},  # never a frame
               {"id": "a", "url": str(clip), "loop": True, "realtime": True}]  # fmt: skip
    cfg = write_pipeline(tmp, Path("unused.pt"), free_port(), streams,
                         model={"backend": None, "null_boxes": 1, "imgsz": 320})  # fmt: skip
    daemon = start(cfg, tmp / "daemon.log")
    try:
        _wait_analysing(cfg, {"a"}, 60.0)
        yield cfg
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(10)
    text = (tmp / "daemon.log").read_text()
    assert "Traceback" not in text and "BrokenPipeError" not in text, text


def test_a_client_that_goes_away_leaves_no_traceback(dead_and_live: Path) -> None:
    cfg = dead_and_live
    listen = json.loads(cfg.read_text())["http"]["listen"]
    for path in ("/streams/dead.jpg", "/streams/dead.jpg", "/streams/dead.mjpg"):
        _ask_and_vanish(listen, path)
    time.sleep(6.0)  # the .jpg answers 503 after 5 s without a frame: into a reset socket
    assert http_status(cfg)["streams"]["dead"]["state"] == "failed"  # still serving
    text = cfg.with_name("daemon.log").read_text()  # so far; the fixture reads the rest
    assert "Traceback" not in text and "BrokenPipeError" not in text, text


def _subscribe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamd.cli", "subscribe", *args],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_subscribe_reads_the_endpoint_from_a_pipeline_file(dead_and_live: Path) -> None:
    out = _subscribe(str(dead_and_live), "--topic", "det.a", "--count", "2", "--timeout", "20")
    assert out.returncode == 0, out.stderr
    assert [json.loads(line)["stream"] for line in out.stdout.splitlines()] == ["a", "a"]


def test_subscribe_says_when_nothing_came_or_it_cannot_connect(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_pipeline(tmp_path, Path("unused.pt"), port, [{"id": "a", "url": "x.mp4"}])
    quiet = _subscribe(str(cfg), "--timeout", "1")
    assert quiet.returncode == 1
    assert f"0 event(s) from tcp://127.0.0.1:{port} within 1s" in quiet.stderr
    bad = _subscribe("not-an-endpoint", "--timeout", "1")
    assert bad.returncode == 2 and "cannot connect to 'not-an-endpoint'" in bad.stderr
    assert "Traceback" not in bad.stderr
