"""The HTTP side under load (issue 14, item 6): idle connections cost no threads, health
answers fast while thousands open and close, MJPEG viewers are capped, HEAD is answered.

Real daemon (null backend, a looping synthetic clip) and real sockets; the connection
cap and idle timeout are checked on an in-process server with small limits.
"""

from __future__ import annotations

import contextlib
import gc
import json
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from streamd.config import ConfigError, parse_config
from streamd.control.board import StatusBoard
from streamd.control.http import ControlServer, Limits

from .daemon import start, write_pipeline
from .util import free_port

CONNECTIONS = 3000
HEALTH = ("/status", "/healthz", "/readyz")
LATENCY_S = 0.1  # the bound for /status, /healthz, /readyz under load
MAX_THREADS = 200
VIEWERS = 2


class Answer:
    def __init__(self, raw: bytes, elapsed_s: float) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1]) if lines[0] else 0
        self.headers = {k.lower(): v for k, _, v in (ln.partition(": ") for ln in lines[1:])}
        self.elapsed_s = elapsed_s


def ask(listen: str, path: str, method: str = "GET", limit_s: float = 10.0) -> Answer:
    """One request on a fresh connection, read to the end (or ``limit_s``: a stream never
    ends); timed from connect."""
    host, port = listen.rsplit(":", 1)
    t0 = time.perf_counter()
    with socket.create_connection((host, int(port)), timeout=limit_s) as s:
        s.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        chunks = []
        while (chunk := s.recv(65536)) and time.perf_counter() - t0 < limit_s:
            chunks.append(chunk)
    return Answer(b"".join(chunks), time.perf_counter() - t0)


def slowest_health(listen: str, rounds: int = 5) -> float:
    """The slowest of ``rounds`` answers of each health path; each must be a 200."""
    worst = 0.0
    for _ in range(rounds):
        for path in HEALTH:
            answer = ask(listen, path)
            assert answer.status == 200, (path, answer.status, answer.body)
            worst = max(worst, answer.elapsed_s)
    return worst


def wait_until(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from streamd.synth import SceneSpec, write_scene

    video = tmp_path_factory.mktemp("load") / "small.mp4"
    write_scene(video, SceneSpec(width=320, height=180, fps=15, seconds=2, people=1))
    return video


@pytest.fixture(scope="module")
def descriptors() -> Iterator[None]:
    """Room for 3,000 sockets in this process and (inherited) in the daemon."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < CONNECTIONS + 512:
        pytest.skip(f"the open-files hard limit is {hard}; {CONNECTIONS + 512} are needed")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(scope="module")
def daemon(
    clip: Path, descriptors: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    tmp = tmp_path_factory.mktemp("load-daemon")
    listen = f"127.0.0.1:{free_port()}"
    streams = [{"id": "cam", "url": str(clip), "loop": True, "realtime": True}]
    http = {"listen": listen, "max_viewers": VIEWERS, "idle_timeout_s": 60}  # idle: held
    cfg = write_pipeline(tmp, Path("unused.pt"), free_port(), streams,
                         model={"backend": "null", "null_boxes": 2, "imgsz": 320},
                         http=http)  # fmt: skip
    log = tmp / "daemon.log"
    proc = start(cfg, log)
    try:
        ready = wait_until(lambda: _ready(listen), 60)
        assert ready, log.read_text()[-3000:]
        yield listen, proc, log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _ready(listen: str) -> bool:
    try:
        return ask(listen, "/readyz").status == 200
    except OSError:
        return False


def test_3000_idle_connections_cost_no_threads_and_health_stays_under_100ms(
    daemon: tuple[str, subprocess.Popen[bytes], Path],
) -> None:
    listen, proc, log = daemon
    supervisor = psutil.Process(proc.pid)
    host, port = listen.rsplit(":", 1)
    quiet = slowest_health(listen)
    # The fewest of a few samples: a descriptor open for a moment (a log rotation, a
    # health probe's socket) must not raise the bar the 3,000 have to clear.
    fds_before = min(_sampled(supervisor.num_fds, 5, 0.1))
    idle: list[socket.socket] = []
    slowest_connect, retried = 0.0, 0
    # This process's own garbage collection must not be timed as the daemon's accept: a
    # full collection here (the test process holds the suite's objects) took 0.1 s at
    # the same connection every run, whatever the server code.
    gc.disable()
    try:
        for _ in range(CONNECTIONS):
            t0 = time.perf_counter()
            idle.append(socket.create_connection((host, int(port)), timeout=10))
            took = time.perf_counter() - t0
            slowest_connect, retried = max(slowest_connect, took), retried + (took >= 0.9)
        gc.enable()
        # Accepting 3,000 queued connections on a busy 2-core machine takes a while; what
        # is asserted is that they are all held, not how fast.
        held = wait_until(lambda: supervisor.num_fds() >= fds_before + CONNECTIONS, 30)
        fds_open = supervisor.num_fds()
        threads = supervisor.num_threads()
        while_open = slowest_health(listen)
    finally:
        gc.enable()
        for s in idle:  # all at once
            s.close()
    after_close = slowest_health(listen)
    figures = {"quiet_s": quiet, "open_s": while_open, "closing_s": after_close,
               "threads": threads, "slowest_connect_s": slowest_connect,
               "syn_retries": retried}  # fmt: skip
    print(f"\nhttp load figures: {json.dumps(figures)}")
    assert held, f"{CONNECTIONS} open: the daemon held {fds_open} descriptors ({fds_before} before)"
    assert threads < MAX_THREADS, figures
    # A connect that found the backlog full waits out a 1 s SYN retry. This client
    # connects faster than the daemon's one accepting thread on 2 cores, so one now and
    # then does, with the old code too; a small backlog (the default 5) makes hundreds.
    assert retried <= CONNECTIONS // 100, figures
    assert while_open < LATENCY_S and after_close < LATENCY_S, figures
    time.sleep(0.5)
    text = log.read_text()
    assert "Traceback" not in text and "BrokenPipeError" not in text, text[-3000:]


def _sampled(read: Callable[[], int], n: int, every_s: float) -> list[int]:
    out = []
    for _ in range(n):
        out.append(read())
        time.sleep(every_s)
    return out


def _viewer(listen: str) -> tuple[socket.socket, bytes]:
    """An MJPEG request and what came back first: a 200 and a frame, or a whole refusal."""
    host, port = listen.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(b"GET /streams/cam.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    got = b""
    while b"image/jpeg" not in got.partition(b"\r\n\r\n")[2] and (chunk := s.recv(65536)):
        got += chunk
    return s, got


def test_mjpeg_viewers_beyond_the_cap_get_a_503_naming_it(
    daemon: tuple[str, subprocess.Popen[bytes], Path],
) -> None:
    listen, _, _ = daemon
    viewers = [_viewer(listen) for _ in range(VIEWERS)]
    try:
        for _, first in viewers:
            assert first.startswith(b"HTTP/1.0 200") and b"image/jpeg" in first
        refused = ask(listen, "/streams/cam.mjpg")
        assert refused.status == 503
        assert f"http.max_viewers={VIEWERS}" in json.loads(refused.body)["error"]
        assert ask(listen, "/status").status == 200  # the other workers still answer
        viewers.pop()[0].close()  # one leaves: its slot frees on the next frame written
        deadline = time.monotonic() + 10
        while True:
            s, first = _viewer(listen)
            viewers.append((s, first))
            if first.startswith(b"HTTP/1.0 200") or time.monotonic() > deadline:
                break
            viewers.pop()[0].close()
            time.sleep(0.2)
        assert first.startswith(b"HTTP/1.0 200") and b"image/jpeg" in first, first[:300]
    finally:
        for s, _ in viewers:
            s.close()


@pytest.mark.parametrize("path", ["/status", "/healthz", "/readyz", "/metrics", "/"])
def test_head_answers_like_get_without_a_body(
    daemon: tuple[str, subprocess.Popen[bytes], Path], path: str
) -> None:
    listen, _, _ = daemon
    head, get = ask(listen, path, "HEAD"), ask(listen, path)
    assert (head.status, head.body) == (200, b"")
    assert head.headers["content-type"] == get.headers["content-type"]
    assert int(head.headers["content-length"]) > 0


@pytest.fixture
def small_server() -> Iterator[str]:
    board = StatusBoard(f"tcp://127.0.0.1:{free_port()}", ["a"], heartbeat_s=1.0)
    listen = f"127.0.0.1:{free_port()}"
    http = ControlServer(listen, board, limits=Limits(max_connections=8, idle_timeout_s=0.5))
    http.start()
    yield listen
    http.close()
    board.close()


def test_a_silent_connection_is_closed_after_the_idle_timeout(small_server: str) -> None:
    host, port = small_server.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        t0 = time.monotonic()
        assert s.recv(1) == b""  # closed by the server, nothing sent
        assert 0.4 < time.monotonic() - t0 < 2.0
    assert ask(small_server, "/status").status == 200


def test_beyond_max_connections_a_503_names_the_limit(small_server: str) -> None:
    host, port = small_server.rsplit(":", 1)
    idle = [socket.create_connection((host, int(port)), timeout=5) for _ in range(8)]
    try:
        time.sleep(0.1)  # accepted
        refused = ask(small_server, "/status")
        assert refused.status == 503
        assert "http.max_connections=8" in json.loads(refused.body)["error"]
    finally:
        for s in idle:
            s.close()
    assert wait_until(lambda: ask(small_server, "/status").status == 200, 2.0)


@pytest.fixture
def token_server() -> Iterator[str]:
    """Off the daemon: 1 viewer slot, so few workers (the default has 48), a token, and
    the default idle timeout."""
    board = StatusBoard(f"tcp://127.0.0.1:{free_port()}", ["a"], heartbeat_s=1.0)
    listen = f"127.0.0.1:{free_port()}"
    limits = Limits(max_connections=400, max_viewers=1, idle_timeout_s=2.0)
    http = ControlServer(listen, board, token="0123456789abcdef-token", limits=limits)
    http.start()
    yield listen
    http.close()
    board.close()


def test_clients_trickling_a_request_hold_no_worker(token_server: str) -> None:
    """Slowloris without the token: 60 clients send a request a byte at a time (every
    0.3 s, each byte progress); /healthz is still answered at once (401 here: the probe
    has no token, the point is that a worker reads it), and each trickler is closed
    when its head is not whole within the idle timeout of its accept."""
    host, port = token_server.rsplit(":", 1)
    slow = [socket.create_connection((host, int(port)), timeout=5) for _ in range(60)]
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 100
    try:
        worst = 0.0
        for k in range(8):  # 2.4 s: beyond the 2 s idle timeout
            for c in slow:
                with contextlib.suppress(OSError):
                    c.send(request[k : k + 1])
            answer = ask(token_server, "/healthz", limit_s=5.0)
            assert answer.status == 401, answer.status
            worst = max(worst, answer.elapsed_s)
            time.sleep(0.3)
        assert worst < 1.0, f"/healthz took {worst:.2f} s behind the tricklers"
        for c in slow:  # closed by the server: the end, or a reset
            c.settimeout(3.0)
            with contextlib.suppress(ConnectionResetError):
                assert c.recv(1024) == b""
    finally:
        for c in slow:
            c.close()


def test_a_request_head_over_the_cap_gets_a_431(token_server: str) -> None:
    host, port = token_server.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as s:
        head = b"GET /healthz HTTP/1.1\r\n" + b"".join(
            b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(99)
        )
        with contextlib.suppress(OSError):
            s.sendall(head)
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.0 431 "), answer[:60]
    assert b"request head over 32768 bytes" in answer
    assert ask(token_server, "/healthz").status == 401  # and it goes on serving


@pytest.mark.parametrize(
    ("key", "value"), [("max_viewers", 0), ("max_connections", 2), ("idle_timeout_s", 0)]
)
def test_http_limits_are_validated(key: str, value: Any) -> None:
    text = f"http: {{listen: '127.0.0.1:8090', {key}: {value}}}\nstreams: [{{id: a, url: x.mp4}}]"
    with pytest.raises(ConfigError) as refused:
        parse_config(text)
    assert refused.value.problems[0][0] == f"http.{key}"
