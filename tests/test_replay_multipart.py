"""A multipart request to the replay socket is refused without being held whole (issue 13).

``MAXMSGSIZE`` bounds each frame, not the message: 60 frames of 1 MiB are one
60 MiB request. The server reads them frame by frame and keeps only the first,
so what Python holds for the request stays near one frame. Real REQ socket.
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from streamd.client import AlertClient
from streamd.publish.journal import AlertJournal
from streamd.publish.replay import MAX_MESSAGE_BYTES, ReplayServer

from .util import free_port

FRAMES = 60


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[str]:
    AlertJournal(tmp_path / "j.sqlite", "full", 30.0, 512.0).close()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    srv = ReplayServer(endpoint, tmp_path / "j.sqlite", epoch=7, state=dict)
    srv.start()
    yield endpoint
    assert srv.alive()
    srv.close()


def test_many_large_frames_get_an_error_and_are_never_copied_whole(endpoint: str) -> None:
    chunk = b" " * MAX_MESSAGE_BYTES  # each frame at the per-frame cap: libzmq lets it in
    frames = [b'{"op": "state"}'] + [chunk] * (FRAMES - 1)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    tracemalloc.start()
    try:
        with ctx.socket(zmq.REQ) as sock:
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            tracemalloc.reset_peak()
            sock.send_multipart(frames, copy=False)  # the sender's frames are not copied
            assert sock.poll(20_000), "no reply to a multipart request"
            reply = sock.recv_multipart()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(reply) == 1
    assert json.loads(reply[0]) == {
        "error": f"bad request: a request is one frame of JSON, got {FRAMES} frames"
    }
    # recv_multipart would have copied all 60 MiB into bytes objects in this process.
    assert peak < 8 * MAX_MESSAGE_BYTES, f"{peak / 2**20:.0f} MiB held for one request"
    with AlertClient(endpoint) as client:  # and the next request is served
        assert client.state()["epoch"] == 7


def test_a_long_single_frame_is_refused_without_a_copy(endpoint: str) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    with ctx.socket(zmq.REQ) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        sock.send(b"[" * MAX_MESSAGE_BYTES)
        assert sock.poll(10_000)
        assert "limit" in json.loads(sock.recv())["error"]
