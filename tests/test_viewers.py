"""Live-view clients of cameras that send nothing: MJPEG viewers that leave free their
slot though nothing is written to them, a removed stream ends its viewers' responses, and
``.jpg`` requests waiting on a stalled camera cannot take the workers health needs.

Real daemon (null backend), real sockets. The stalled camera is a short file that ended:
the view gets no new frame of it, as with an RTSP camera that stopped sending.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamd.control.http import JPEG_WAITERS

from .daemon import start, write_pipeline
from .test_http_load import ask, wait_until
from .util import free_port

VIEWERS = 2  # http.max_viewers
FREED_WITHIN_S = 5.0  # a closed viewer's slot is free again within this


def _clip(path: Path, seconds: float) -> Path:
    from streamd.synth import SceneSpec, write_scene

    write_scene(path, SceneSpec(width=320, height=180, fps=15, seconds=seconds, people=1))
    return path


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    tmp = tmp_path_factory.mktemp("viewers")
    loop, short = _clip(tmp / "loop.mp4", 2.0), _clip(tmp / "short.mp4", 1.0)
    streams = [{"id": "short", "url": str(short), "realtime": True},  # ends: stalled
               {"id": "gone", "url": str(loop), "loop": True, "realtime": True}]  # fmt: skip
    listen = f"127.0.0.1:{free_port()}"
    cfg = write_pipeline(tmp, Path("unused.pt"), free_port(), streams,
                         model={"backend": "null", "null_boxes": 1, "imgsz": 320},
                         http={"listen": listen, "max_viewers": VIEWERS})  # fmt: skip
    log = tmp / "daemon.log"
    proc = start(cfg, log)
    try:
        ended = wait_until(lambda: _state(listen, "short") == "ended", 60)
        assert ended, log.read_text()[-3000:]
        yield listen, log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _state(listen: str, sid: str) -> str | None:
    try:
        with urllib.request.urlopen(f"http://{listen}/status", timeout=5) as r:
            state: str | None = json.load(r)["streams"][sid]["state"]
            return state
    except (OSError, KeyError):
        return None


def _open_viewer(listen: str, sid: str) -> tuple[socket.socket, int]:
    """An MJPEG request; the socket and the status of the answer (its head read)."""
    host, port = listen.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(f"GET /streams/{sid}.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    got = b""
    while b"\r\n\r\n" not in got and (chunk := s.recv(4096)):
        got += chunk
    return s, int(got.split(b" ", 2)[1]) if got else 0


def test_viewers_of_a_stalled_camera_that_close_free_their_slots(
    daemon: tuple[str, Path],
) -> None:
    listen, _ = daemon
    viewers = [_open_viewer(listen, "short") for _ in range(VIEWERS)]
    assert [code for _, code in viewers] == [200] * VIEWERS
    third, code = _open_viewer(listen, "short")
    third.close()
    assert code == 503  # the cap holds while they watch
    for s, _ in viewers:
        s.close()  # a closed tab: nothing is written to them, the camera sends nothing
    t0 = time.monotonic()
    while True:
        third, code = _open_viewer(listen, "short")
        if code == 200 or time.monotonic() - t0 > FREED_WITHIN_S + 5:
            break
        third.close()
        time.sleep(0.2)
    freed_s = time.monotonic() - t0
    third.close()
    print(f"\nslot free again after {freed_s:.1f}s")
    assert code == 200 and freed_s < FREED_WITHIN_S, f"{code} after {freed_s:.1f}s"


def _get_jpeg(listen: str, answers: list[tuple[int, str]]) -> None:
    answer = ask(listen, "/streams/short.jpg", limit_s=20)
    answers.append((answer.status, answer.headers.get("retry-after", "")))


def test_jpeg_waiters_are_capped_so_health_keeps_answering(daemon: tuple[str, Path]) -> None:
    listen, log = daemon
    answers: list[tuple[int, str]] = []
    many = [threading.Thread(target=_get_jpeg, args=(listen, answers)) for _ in range(40)]
    for t in many:
        t.start()
    time.sleep(0.5)  # they are all in: the first ones wait 5 s for a picture
    health = ask(listen, "/healthz", limit_s=10)
    for t in many:
        t.join(30)
    print(f"\n/healthz in {health.elapsed_s:.3f}s beside 40 waiting .jpg requests")
    assert health.status in (200, 503) and health.elapsed_s < 1.0, health.elapsed_s
    codes = sorted(code for code, _ in answers)
    assert len(codes) == 40 and set(codes) == {503}  # no picture ever: 503 after 5 s, or at once
    refused_at_once = [a for a in answers if a[1] == "2"]
    assert len(refused_at_once) >= 40 - JPEG_WAITERS
    assert "Traceback" not in log.read_text()


def test_a_removed_stream_ends_its_viewers_responses(daemon: tuple[str, Path]) -> None:
    listen, _ = daemon
    s, code = _open_viewer(listen, "gone")
    with s:
        assert code == 200
        got = b""
        while b"image/jpeg" not in got and (chunk := s.recv(65536)):
            got += chunk  # it plays
        req = urllib.request.Request(f"http://{listen}/api/streams/gone", method="DELETE")
        with urllib.request.urlopen(req, timeout=40) as r:
            assert r.status == 200
        t0 = time.monotonic()
        s.settimeout(1.0)
        ended = False
        while not ended and time.monotonic() - t0 < 10:
            with contextlib.suppress(TimeoutError):
                ended = s.recv(65536) == b""
        ended_s = time.monotonic() - t0
    print(f"\nresponse ended {ended_s:.1f}s after the stream was removed")
    assert ended and ended_s < 3.0, ended_s
    with pytest.raises(urllib.error.HTTPError) as gone:
        urllib.request.urlopen(f"http://{listen}/streams/gone.mjpg", timeout=5)
    assert gone.value.code == 404
