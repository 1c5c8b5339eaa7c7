"""Helpers to run the real daemon as a subprocess and watch what it publishes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from prometheus_client.parser import text_string_to_metric_families

from streamd.client import Event, Subscriber

from .util import free_port, shm_segments


def write_pipeline(
    tmp: Path, weights: Path, port: int, streams: list[dict[str, Any]], **sections: Any
) -> Path:
    """A pipeline file for the tests; ``sections`` replace whole top-level sections."""
    cfg: dict[str, Any] = {
        "model": {"weights": str(weights), "imgsz": 320, "conf": 0.25},
        "batching": {"max_batch": 4, "max_wait_ms": 20},
        "publish": {"endpoint": f"tcp://127.0.0.1:{port}"},
        "http": {"listen": f"127.0.0.1:{free_port()}"},
        "journal": {
            "path": str(tmp / "alerts.sqlite"),
            "endpoint": f"tcp://127.0.0.1:{free_port()}",
        },
        "streams": streams,
    }
    cfg.update(sections)
    path = tmp / "pipeline.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def start(
    cfg: Path, log: Path, env: dict[str, str] | None = None, log_level: str = "INFO"
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "streamd.cli", "run", str(cfg), "--log-level", log_level],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # so a test can play Ctrl-C to the whole group
        env={**os.environ, **(env or {})},
    )


def running(p: psutil.Process) -> bool:
    # An exited worker re-parented to PID 1 may linger as a zombie until reaped: it is not running.
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _stop(
    daemon: subprocess.Popen[bytes], sig: signal.Signals, group: bool
) -> tuple[float, list[psutil.Process]]:
    """Signal the daemon, assert it and all its workers are gone within 5 s."""
    children = psutil.Process(daemon.pid).children(recursive=True)
    assert len(children) >= 2, "expected an inference worker and source workers"
    t0 = time.monotonic()
    if group:
        os.killpg(daemon.pid, sig)
    else:
        daemon.send_signal(sig)
    code = daemon.wait(timeout=10)
    elapsed = time.monotonic() - t0
    assert code == 0
    assert elapsed < 5.0, f"took {elapsed:.1f}s to stop"
    _, alive = psutil.wait_procs(children, timeout=0.5)
    left = [p for p in alive if running(p)]
    assert left == [], f"workers left behind: {left}"
    return elapsed, children


def stop_and_check_clean(
    daemon: subprocess.Popen[bytes], sig: signal.Signals, shm_before: set[str], group: bool = False
) -> float:
    """Signal the daemon, assert it and all its workers are gone within 5 s with no shm left.

    Only this daemon's segments count (the run id in their names starts with its pid in
    hex, 12 random hex digits after it), so daemons of other tests running meanwhile
    cannot fail it; a worker that died earlier in the run is covered too."""
    elapsed, _ = _stop(daemon, sig, group)
    own = re.compile(rf"^streamd_{daemon.pid:x}[0-9a-f]{{12}}_")
    assert {n for n in shm_segments() - shm_before if own.match(n)} == set()
    return elapsed


def stop_and_check_own_clean(daemon: subprocess.Popen[bytes], sig: signal.Signals) -> float:
    """Like :func:`stop_and_check_clean`, but only this daemon's segments (their names
    carry its workers' pids) are checked, so other daemons running meanwhile cannot fail it."""
    elapsed, children = _stop(daemon, sig, group=False)
    pids = {str(p.pid) for p in children}
    assert [n for n in shm_segments() if n.split("_")[3] in pids] == []
    return elapsed


def collect(sub: Subscriber, done: Callable[[list[Event]], bool], timeout_s: float) -> list[Event]:
    events: list[Event] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ev = sub.recv(0.5)
        if ev is not None:
            events.append(ev)
            if done(events):
                break
    return events


class EventLog:
    """Records every event with its arrival time on a background thread.

    Lets a test act (kill a server, a worker) while events keep flowing, then
    ask what arrived when.
    """

    def __init__(self, endpoint: str) -> None:
        self.items: list[tuple[float, Event]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._endpoint = endpoint
        self.gaps = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def _run(self) -> None:
        with Subscriber(self._endpoint) as sub:
            self._ready.set()
            while not self._stop.is_set():
                ev = sub.recv(0.1)
                if ev is not None:
                    with self._lock:
                        self.items.append((time.time(), ev))
            self.gaps = len(sub.gaps)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def snapshot(self) -> list[tuple[float, Event]]:
        with self._lock:
            return list(self.items)

    def payloads(self, topic: str, since: float = 0.0) -> list[dict[str, Any]]:
        return [e.payload for t, e in self.snapshot() if e.topic == topic and t >= since]

    def wait_for(
        self, pred: Callable[[float, Event], bool], timeout_s: float, since: float = 0.0
    ) -> tuple[float, Event] | None:
        """The first recorded (arrival time, event) at/after ``since`` matching ``pred``."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        while True:
            items = self.snapshot()
            for t, ev in items[seen:]:
                if t >= since and pred(t, ev):
                    return t, ev
            seen = len(items)
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)

    def wait_state(
        self, stream: str, states: set[str], timeout_s: float, since: float = 0.0
    ) -> tuple[float, dict[str, Any]] | None:
        hit = self.wait_for(
            lambda _t, e: e.topic == f"status.{stream}" and e.payload["state"] in states,
            timeout_s,
            since,
        )
        return None if hit is None else (hit[0], hit[1].payload)

    def rate(self, topic: str, t0: float, t1: float) -> float:
        """Events per second on ``topic`` that arrived in [t0, t1)."""
        n = sum(1 for t, e in self.snapshot() if e.topic == topic and t0 <= t < t1)
        return n / (t1 - t0)


@dataclass(frozen=True)
class Running:
    """A daemon started by :func:`running_daemon`: its process, pipeline file and events."""

    proc: subprocess.Popen[bytes]
    cfg: Path
    log: EventLog


@contextlib.contextmanager
def running_daemon(
    cfg: Path,
    streaming: Sequence[str] = (),
    *,
    log_file: Path | None = None,
    env: dict[str, str] | None = None,
    log_level: str = "INFO",
) -> Iterator[Running]:
    """Run the daemon of ``cfg`` with an :class:`EventLog` on its publish endpoint.

    The log subscribes before the daemon starts (no early event is missed); the block
    runs once each stream in ``streaming`` is streaming. When the block ends the log is
    closed (then ``log.gaps`` holds the subscriber's gaps; a subscriber still connected
    would make the daemon's stop flush to it); a block that ended normally with the
    daemon still up then stops it with SIGTERM and checks it left nothing behind
    (:func:`stop_and_check_own_clean`); one that raised kills the whole process group."""
    endpoint = json.loads(cfg.read_text())["publish"]["endpoint"]
    log = EventLog(endpoint)
    daemon = start(cfg, log_file or cfg.with_name("daemon.log"), env, log_level)
    ended_normally = False
    try:
        for sid in streaming:
            assert log.wait_state(sid, {"streaming"}, 60) is not None, f"{sid} never streamed"
        yield Running(daemon, cfg, log)
        ended_normally = True
    finally:
        log.close()
        try:
            if ended_normally and daemon.poll() is None:
                stop_and_check_own_clean(daemon, signal.SIGTERM)
        finally:
            if daemon.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait(10)


def http_status(cfg: Path) -> dict[str, Any]:
    listen = json.loads(cfg.read_text())["http"]["listen"]
    with urllib.request.urlopen(f"http://{listen}/status", timeout=5) as r:
        data: dict[str, Any] = json.load(r)
    return data


def scrape(cfg: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample on /metrics, keyed by (name, sorted labels)."""
    listen = json.loads(cfg.read_text())["http"]["listen"]
    with urllib.request.urlopen(f"http://{listen}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(
    m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)
