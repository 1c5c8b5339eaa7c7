"""systemd's notify protocol against a real daemon: the test binds the datagram socket
systemd would (``$NOTIFY_SOCKET``) and reads what the supervisor says. READY=1 comes
once the first heartbeat is seen; WATCHDOG=1 comes only while the detector beats, so
a stopped (hung) inference worker gets the unit restarted. The unit file passes
``systemd-analyze verify`` where that command exists.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from streamd.runtime.systemd import Notifier, watchdog_interval

from .daemon import http_status, start, stop_and_check_own_clean, write_pipeline
from .util import free_port

NULL_MODEL = {"backend": "null", "null_boxes": 2, "imgsz": 320}
UNIT = Path(__file__).parent.parent / "systemd" / "streamd@.service"


@pytest.fixture
def notify_socket() -> Iterator[tuple[str, socket.socket]]:
    """An abstract-namespace datagram socket, as systemd hands out: '@name'."""
    name = f"streamd-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        yield "@" + name, sock


def _read(sock: socket.socket, seconds: float) -> list[tuple[float, str]]:
    """Every datagram that arrives within ``seconds``: (arrival, text)."""
    out = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            out.append((time.monotonic(), sock.recv(4096).decode()))
        except TimeoutError:
            break
    return out


def _until(sock: socket.socket, field: str, timeout_s: float, log: Path) -> str:
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        for _, msg in _read(sock, min(left, 0.5)):
            if field in msg.split("\n"):
                return msg
    raise AssertionError(f"no {field} after {timeout_s}s:\n{log.read_text()[-3000:]}")


def _inference(daemon: subprocess.Popen[bytes]) -> psutil.Process:
    for child in psutil.Process(daemon.pid).children():
        if " ".join(child.cmdline()).startswith("streamd: inference"):
            return child
    raise AssertionError("no child process titled 'streamd: inference'")


def test_ready_status_and_a_watchdog_fed_only_while_the_detector_beats(
    tmp_path: Path, notify_socket: tuple[str, socket.socket]
) -> None:
    address, sock = notify_socket
    clip = tmp_path / "clip.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc=size=320x240:rate=15", "-t", "3", "-pix_fmt", "yuv420p",
                    str(clip)], check=True)  # fmt: skip
    cfg = write_pipeline(tmp_path, Path("unused.pt"), free_port(),
                         [{"id": "cam", "url": str(clip), "loop": True, "realtime": True}],
                         model=NULL_MODEL)  # fmt: skip
    log = tmp_path / "daemon.log"
    # A 2 s watchdog: fed every second while healthy.
    daemon = start(cfg, log, env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000"})
    try:
        ready = _until(sock, "READY=1", 60, log)
        assert http_status(cfg)["backend"] == "null"  # the heartbeat came before READY=1
        assert any(line.startswith("STATUS=") and "streams streaming" in line
                   for line in ready.split("\n"))  # fmt: skip
        worker = _inference(daemon)
        # Workers do not inherit the socket: only the supervisor speaks for the unit.
        assert not any(k.startswith(("NOTIFY_SOCKET", "WATCHDOG_")) for k in worker.environ())

        healthy = [m for _, m in _read(sock, 6.0)]  # STATUS= comes every 5 s
        assert healthy.count("WATCHDOG=1") >= 3, healthy
        statuses = [m for m in healthy if m.startswith("STATUS=")]
        assert statuses and "1/1 streams streaming" in statuses[-1], healthy

        worker.suspend()  # SIGSTOP: a hung detector
        try:
            # The supervisor stops its heartbeat 3 intervals after the detector's last
            # beat; the board calls it stale 3 intervals + 1 s after that.
            _read(sock, 8.0)
            hung = [m for _, m in _read(sock, 4.0)]
            assert "WATCHDOG=1" not in hung, hung
        finally:
            worker.resume()  # SIGCONT
        _until(sock, "WATCHDOG=1", 15, log)  # beats again: fed again
        stop_and_check_own_clean(daemon, signal.SIGTERM)
        assert "STOPPING=1" in [line for _, m in _read(sock, 1.0) for line in m.split("\n")]
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)


def test_notifier_sends_to_a_path_socket_and_is_quiet_without_one(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        n = Notifier(path)
        assert n.send("READY=1", "STATUS=up")
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"
        n.close()
    assert not Notifier(None).send("READY=1")
    assert not Notifier(path + "-gone").send("READY=1")  # systemd gone: logged, not raised


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}) == 2.0
    assert watchdog_interval({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_the_unit_file_verifies(tmp_path: Path) -> None:
    """``systemd-analyze verify`` checks keys, values and that ExecStart= exists: the
    unit is checked with its /opt/streamd paths pointed at this checkout's venv."""
    venv = Path(__file__).parent.parent / ".venv"
    unit = tmp_path / "streamd@.service"
    unit.write_text(UNIT.read_text().replace("/opt/streamd/.venv", str(venv.absolute())))
    instance = tmp_path / "streamd@demo.service"
    instance.symlink_to(unit)
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(instance)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    # Lines about other units on this host (a container's own) are not ours to judge.
    ours = [line for line in done.stderr.splitlines() if "streamd@" in line]
    assert done.returncode == 0 and ours == [], done.stderr
    keys = set(UNIT.read_text().splitlines())
    assert {"Type=notify", "NotifyAccess=main", "ExecReload=/bin/kill -HUP $MAINPID"} <= keys
