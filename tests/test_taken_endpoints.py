"""A public endpoint someone else holds refuses start-up, naming its key, and is left alone.

A taken TCP port fails the bind. An ipc path does not: libzmq unlinks whatever
is there before binding, so without a check the daemon would silently take a
live process's socket, or delete a file that happens to have that name.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import zmq

from .daemon import write_pipeline
from .util import free_port


@pytest.fixture
def holder() -> Iterator[zmq.Socket[bytes]]:
    """Another process's PUB socket (this test's), to bind where the daemon wants to."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    yield sock
    sock.close(linger=0)
    ctx.term()


def _refused(cfg: Path, key: str, endpoint: str) -> None:
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "streamd.cli", "run", str(cfg)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2, out.stderr[-2000:]
    assert time.monotonic() - t0 < 30
    assert f"{key} {endpoint}" in out.stderr
    assert "inference" not in out.stderr  # refused before the detector was started


def _pipeline(tmp_path: Path, publish: str, journal_endpoint: str | None = None) -> Path:
    journal = {"path": str(tmp_path / "alerts.sqlite"),
               "endpoint": journal_endpoint or f"tcp://127.0.0.1:{free_port()}"}  # fmt: skip
    return write_pipeline(tmp_path, tmp_path / "never-loaded.pt", 0, [{"id": "a", "url": "x.mp4"}],
                          publish={"endpoint": publish}, journal=journal)  # fmt: skip


def test_a_taken_publish_port_is_named(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        endpoint = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        _refused(_pipeline(tmp_path, endpoint), "publish.endpoint", endpoint)


@pytest.mark.parametrize("key", ["publish.endpoint", "journal.endpoint"])
def test_an_ipc_path_a_process_listens_on_is_not_taken_over(
    tmp_path: Path, holder: zmq.Socket[bytes], key: str
) -> None:
    path = tmp_path / "events.ipc"
    endpoint = f"ipc://{path}"
    holder.bind(endpoint)
    inode = path.stat().st_ino
    other = f"ipc://{tmp_path / 'other.ipc'}"
    if key == "publish.endpoint":
        cfg = _pipeline(tmp_path, endpoint)
    else:
        cfg = _pipeline(tmp_path, other, journal_endpoint=endpoint)
    _refused(cfg, key, endpoint)
    assert path.stat().st_ino == inode  # still the holder's socket


def test_a_file_at_the_ipc_path_is_not_deleted(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a socket")
    endpoint = f"ipc://{path}"
    _refused(_pipeline(tmp_path, endpoint), "publish.endpoint", endpoint)
    assert path.read_text() == "not a socket"


def test_an_ipc_socket_left_by_a_dead_process_is_reused(tmp_path: Path) -> None:
    """What a SIGKILLed daemon leaves at its ipc path does not stop the next one."""
    path = tmp_path / "events.ipc"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # bound, never listening: nobody answers there
    clip = tmp_path / "clip.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc=size=160x120:rate=15", "-t", "1", "-pix_fmt", "yuv420p", str(clip)],
                   check=True)  # fmt: skip
    cfg = _pipeline(tmp_path, f"ipc://{path}")
    cfg.write_text(cfg.read_text().replace(
        '"model": {', '"model": {"backend": "null", ').replace("x.mp4", str(clip)))  # fmt: skip
    out = subprocess.run([sys.executable, "-m", "streamd.cli", "run", str(cfg), "--duration", "2"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "running 1 stream(s)" in out.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_configuration_the_detector_refuses_exits_2_without_a_traceback(
    tmp_path: Path,
) -> None:
    """The detector process refuses its setup (tensorrt without a GPU): the supervisor
    says so and exits 2 (refused), however the closed pipe and the exit race."""
    model = {"weights": "unused.pt", "backend": "tensorrt", "imgsz": 320}
    cfg = write_pipeline(tmp_path, Path("unused.pt"), free_port(), [{"id": "a", "url": "x.mp4"}],
                         model=model)  # fmt: skip
    out = subprocess.run([sys.executable, "-m", "streamd.cli", "run", str(cfg)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2, out.stderr[-2000:]
    assert "refused the configuration" in out.stderr and "Traceback" not in out.stderr
