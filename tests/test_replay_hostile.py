"""The replay/state request socket under hostile requests (issue 13, bug 1).

Every malformed request gets a ``{"error": ...}`` reply and the server goes on
answering; a dead replay thread makes ``/healthz`` fail. Real REQ sockets, a
real journal file, the real HTTP server; one real daemon for the wiring.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from streamd.client import AlertClient, Event
from streamd.control.board import StatusBoard
from streamd.control.http import ControlServer
from streamd.publish.journal import AlertJournal, Entry
from streamd.publish.replay import MAX_AFTER_STREAMS, MAX_LIMIT, MAX_REQUEST_BYTES, ReplayServer

from .daemon import start, write_pipeline
from .util import free_port

# (request frames, a word the error must contain)
HOSTILE: list[tuple[list[bytes], str]] = [
    ([b"null"], "object"),
    ([b"[1,2]"], "object"),
    ([b'"x"'], "object"),
    ([b"42"], "object"),
    ([b"not json"], "JSON"),
    ([b'{"op": "replay", "after": [1, 2]}'], "after"),
    ([b'{"op": "replay", "limit": 1e999}'], "limit"),
    ([b'{"op": "replay", "limit": 0}'], "limit"),
    ([b'{"op": "replay", "after": {"a": 9223372036854775808}}'], "after.a"),
    ([b'{"op": "replay", "after": {"a": 1e300}}'], "after.a"),
    ([b'{"op": "replay", "after": {"a": "1"}}'], "after.a"),
    ([b'{"op": "replay", "stream": 5}'], "stream"),
    ([b'{"op": "replay", "after": {"../x": 1}}'], "after"),
    ([json.dumps({"op": "replay", "after": {f"s{i}": 0 for i in range(1200)}}).encode()], "after"),
    ([b'{"op": "state"}', b"second frame"], "one frame"),
    ([b"[" * 100_000], "bytes"),  # over the size limit: refused before parsing
    ([b"[" * 20_000], "JSON"),  # under it, but nested beyond any parser's patience
    ([b'{"op": "state"}' + b" " * MAX_REQUEST_BYTES], "bytes"),
    ([b'{"op": "drop tables"}'], "op"),
    ([b'{"op": "state", "extra": 1}'], "extra"),
]


def alert(stream: str, seq: int) -> Entry:
    payload = {"type": "alert", "stream": stream, "seq": seq, "epoch": 1, "ts": 1.0 + seq}
    return Entry(payload, b"\xff\xd8jpeg" if seq == 1 else None)


def request(endpoint: str, frames: list[bytes], timeout_s: float = 5.0) -> list[bytes] | None:
    """One request on a fresh REQ socket; the reply's frames, or None if none came."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    with ctx.socket(zmq.REQ) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        sock.send_multipart(frames)
        if not sock.poll(int(timeout_s * 1000)):
            return None
        reply: list[bytes] = sock.recv_multipart()
        return reply


def assert_error_reply(endpoint: str, frames: list[bytes], word: str) -> None:
    reply = request(endpoint, frames)
    shown = frames[0][:60]
    assert reply is not None, f"no reply to {shown!r}"
    assert len(reply) == 1
    body = json.loads(reply[0])
    assert word.lower() in body["error"].lower(), f"{shown!r}: {body}"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, ReplayServer]]:
    j = AlertJournal(tmp_path / "j.sqlite", "full", 30.0, 512.0)
    j.append([alert("a", 0), alert("b", 0), alert("a", 1)])
    j.close()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    srv = ReplayServer(endpoint, tmp_path / "j.sqlite", epoch=7, state=lambda: {"a": {}})
    srv.start()
    yield endpoint, srv
    srv.close()


def test_every_hostile_request_gets_an_error_and_replay_keeps_answering(
    server: tuple[str, ReplayServer],
) -> None:
    endpoint, srv = server
    for frames, word in HOSTILE:
        assert_error_reply(endpoint, frames, word)
    assert srv.alive()
    with AlertClient(endpoint) as client:
        events, more = client.replay({"a": 0})
        assert [(e.stream, e.seq) for e in events] == [("b", 0), ("a", 1)] and not more
        assert events[1].attachment == b"\xff\xd8jpeg"
        state = client.state()
    assert state == {"epoch": 7, "streams": {"a": {}}, "alert_seq": {"a": 1, "b": 0}}
    # The bounds refuse attacks, not clients: many streams, seq -1, int64's top, a big limit.
    after = {f"s{i}": 5 for i in range(MAX_AFTER_STREAMS - 2)} | {"a": -1, "b": 2**63 - 1}
    with AlertClient(endpoint) as client:
        events, _ = client.replay(after, limit=MAX_LIMIT)
    assert [(e.stream, e.seq) for e in events] == [("a", 0), ("a", 1)]


def test_a_request_past_the_hard_cap_is_dropped_and_others_are_served(
    server: tuple[str, ReplayServer],
) -> None:
    """Beyond MAXMSGSIZE libzmq drops the sender without buffering it all: no reply to it."""
    endpoint, srv = server
    assert request(endpoint, [b" " * (2 * 1024 * 1024)], timeout_s=1.0) is None
    assert srv.alive()
    with AlertClient(endpoint) as client:
        assert client.state()["alert_seq"] == {"a": 1, "b": 0}


def heartbeat() -> Event:
    return Event("heartbeat", {"type": "heartbeat", "epoch": 1, "backend": "null", "streams": {}})


def healthz(listen: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://{listen}/healthz", timeout=5) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_healthz_fails_while_the_replay_thread_is_dead(tmp_path: Path) -> None:
    board = StatusBoard(f"tcp://127.0.0.1:{free_port()}", [], heartbeat_s=1.0)
    listen = f"127.0.0.1:{free_port()}"
    http = ControlServer(listen, board)
    http.start()
    # No journal file: the replay thread's read-only connection fails and the thread ends.
    dead = ReplayServer(f"tcp://127.0.0.1:{free_port()}", tmp_path / "gone.sqlite", 1, dict)
    try:
        board.apply(heartbeat())  # the detector is alive
        assert healthz(listen) == (200, {"healthy": True, "problems": [], "dead": []})
        board.watch("replay", dead.alive)
        dead.start()
        deadline = time.monotonic() + 5
        while dead.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        board.apply(heartbeat())
        assert healthz(listen) == (
            503,
            {"healthy": False, "problems": ["replay thread dead"], "dead": ["replay"]},
        )
        assert board.snapshot()["healthy"] is False  # /status and `streamd status` agree
    finally:
        dead.close()
        http.close()
        board.close()


def test_the_daemon_watches_its_replay_thread(tmp_path: Path) -> None:
    """Composition: the daemon's board counts the replay thread it started."""
    from streamd.app import Daemon
    from streamd.config import load_config

    cfg = write_pipeline(tmp_path, Path("unused.pt"), free_port(), [{"id": "a", "url": "a.mp4"}])
    daemon = Daemon(load_config(cfg))
    daemon._tmp = str(tmp_path / "run")  # the ipc folder run() makes
    Path(daemon._tmp).mkdir()
    try:
        daemon._start_journal()
        daemon.board.apply(heartbeat())
        assert daemon.board.dead() == []
        assert daemon._replay is not None
        daemon._replay.close()  # as good as dead: it answers nobody now
        assert daemon.board.dead() == ["replay"] and not daemon.board.healthy()
    finally:
        daemon._shutdown()


def test_the_running_daemon_survives_hostile_requests(tmp_path: Path) -> None:
    """One real daemon: every hostile request answered with an error, then a normal
    state and replay request answered, and /healthz still healthy."""
    clip = tmp_path / "still.mp4"
    from streamd.synth import SceneSpec, write_scene

    write_scene(clip, SceneSpec(width=320, height=180, fps=5, seconds=2.0, people=1))
    streams = [{"id": "cam", "url": str(clip), "loop": True}]
    model = {"backend": "null", "null_boxes": 1, "imgsz": 320}
    cfg = write_pipeline(tmp_path, Path("unused.pt"), free_port(), streams, model=model)
    doc = json.loads(cfg.read_text())
    endpoint, listen = doc["journal"]["endpoint"], doc["http"]["listen"]
    daemon = start(cfg, tmp_path / "daemon.log")
    try:
        with AlertClient(endpoint, timeout_s=60) as client:
            assert client.state()["streams"] is not None  # up and answering
        for frames, word in HOSTILE:
            assert_error_reply(endpoint, frames, word)
        with AlertClient(endpoint) as client:
            deadline = time.monotonic() + 30
            while "cam" not in client.state()["streams"] and time.monotonic() < deadline:
                time.sleep(0.3)  # the camera's first row
            assert "cam" in client.state()["streams"]
            events, more = client.replay({"cam": -1})
        assert events == [] and not more
        deadline = time.monotonic() + 30
        while healthz(listen)[0] != 200 and time.monotonic() < deadline:
            time.sleep(0.3)
        assert healthz(listen) == (200, {"healthy": True, "problems": [], "dead": []})
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            code = daemon.wait(15)
        finally:
            if daemon.poll() is None:
                daemon.kill()
    assert code == 0
