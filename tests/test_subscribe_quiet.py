"""``streamd subscribe`` without ``--timeout`` against an endpoint nobody binds: it says so
on stderr once and keeps waiting; when a publisher appears it says events arrive and
prints only what was asked for. The CLI as a subprocess, a real ZeroMQ PUB."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO

import zmq

from streamd.publish.wire import encode

from .util import free_port


def _lines(stream: IO[str] | None, into: list[str]) -> threading.Thread:
    assert stream is not None

    def read() -> None:
        for line in stream:
            into.append(line)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    return t


def _wait(check: Callable[[], bool], timeout_s: float, tick: Callable[[], None]) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        tick()
        time.sleep(0.1)
    return True


def test_subscribe_says_nothing_came_then_that_events_arrive() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    cmd = [sys.executable, "-m", "streamd.cli", "subscribe", endpoint, "--topic", "det.",
           "--count", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out: list[str] = []
    err: list[str] = []
    readers = [_lines(proc.stdout, out), _lines(proc.stderr, err)]
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    try:
        t0 = time.monotonic()
        said = _wait(lambda: any("no events from" in e for e in err), 15, lambda: None)
        said_s = time.monotonic() - t0
        assert said, err
        assert proc.poll() is None, "it keeps waiting"
        assert f"no events from {endpoint} after 5 s: is the daemon running" in err[0]
        assert out == []
        time.sleep(1.5)
        assert len(err) == 1, "said once"

        pub.bind(endpoint)
        seq = iter(range(10_000))

        def send(topic: str) -> Callable[[], None]:
            kind, _, stream = topic.partition(".")
            payload = {"type": kind, "stream": stream or None, "epoch": 1}

            def one() -> None:
                pub.send_multipart(encode(topic, {**payload, "seq": next(seq)}))

            return one

        heard = _wait(lambda: any("arriving" in e for e in err), 10, send("heartbeat"))
        assert heard, err
        assert out == []  # heartbeats were not asked for
        done = _wait(lambda: proc.poll() is not None, 10, send("det.x"))
        assert done and proc.returncode == 0, err
        for r in readers:
            r.join(5)
        assert [json.loads(line)["type"] for line in out] == ["det"]
        print(f"\nsaid after {said_s:.1f}s: {err[0].strip()}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        pub.close()
        ctx.term()
