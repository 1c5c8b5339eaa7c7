"""The real daemon as a subprocess: real detector, real ZeroMQ, a scene with ground truth."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import psutil
import pytest

from streamd.client import Event, Subscriber
from streamd.publish import load_schema

from .conftest import free_port, shm_segments
from .groundtruth import score

pytestmark = pytest.mark.e2e
VALIDATOR = jsonschema.Draft202012Validator(load_schema())


def write_pipeline(tmp: Path, model: Path, port: int, streams: list[dict[str, Any]]) -> Path:
    cfg = {
        "model": {"weights": str(model), "imgsz": 320, "conf": 0.25},
        "batching": {"max_batch": 4, "max_wait_ms": 20},
        "publish": {"endpoint": f"tcp://127.0.0.1:{port}"},
        "streams": streams,
    }
    path = tmp / "pipeline.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def start(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "streamd.cli", "run", str(cfg)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # so a test can play Ctrl-C to the whole group
    )


def stop_and_check_clean(
    daemon: subprocess.Popen[bytes], sig: signal.Signals, shm_before: set[str], group: bool = False
) -> float:
    """Signal the daemon, assert it and all its workers are gone within 5 s with no shm left."""
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
    # An exited worker re-parented to PID 1 may linger as a zombie until reaped: it is not running.
    running = [p for p in alive if _running(p)]
    assert running == [], f"workers left behind: {running}"
    assert shm_segments() - shm_before == set()
    return elapsed


def _running(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def daemon_env(tmp_path: Path) -> Iterator[tuple[Path, int, set[str]]]:
    yield tmp_path, free_port(), shm_segments()


def collect(sub: Subscriber, done: Any, timeout_s: float) -> list[Event]:
    events: list[Event] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ev = sub.recv(0.5)
        if ev is not None:
            events.append(ev)
            if done(events):
                break
    return events


def test_daemon_end_to_end(
    person_model: Path, scene: tuple[Path, Path], daemon_env: tuple[Path, int, set[str]]
) -> None:
    tmp, port, shm_before = daemon_env
    video, truth_path = scene
    truth = json.loads(truth_path.read_text())["frames"]
    cfg = write_pipeline(
        tmp,
        person_model,
        port,
        [
            {"id": "walk", "url": str(video)},  # file: block policy, every frame analysed
            {"id": "missing", "url": str(tmp / "no-such-file.mp4")},
            {"id": "live", "url": str(video), "loop": True, "realtime": True},  # paced, never ends
        ],
    )
    endpoint = f"tcp://127.0.0.1:{port}"
    sub = Subscriber(endpoint)  # connect before the daemon binds: nothing is missed
    cli = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamd.cli",
            "subscribe",
            endpoint,
            "--topic",
            "det.walk",
            "--count",
            "5",
            "--timeout",
            "240",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    daemon = start(cfg, tmp / "daemon.log")
    try:

        def done(evs: list[Event]) -> bool:
            walk = sum(1 for e in evs if e.topic == "det.walk")
            live_states = {e.payload["state"] for e in evs if e.topic == "status.live"}
            return walk >= len(truth) and "streaming" in live_states

        events = collect(sub, done, timeout_s=240)
        assert daemon.poll() is None, (tmp / "daemon.log").read_text()[-3000:]
        stop_and_check_clean(daemon, signal.SIGTERM, shm_before)
    finally:
        if daemon.poll() is None:
            daemon.kill()
        sub.close()
    log_text = (tmp / "daemon.log").read_text()

    # Every message validates against the published schema.
    for ev in events:
        VALIDATOR.validate(ev.payload)

    # A subscriber that keeps up sees no gap, on any topic.
    assert sub.gaps == []
    walk = [e.payload for e in events if e.topic == "det.walk"]
    assert [d["seq"] for d in walk] == list(range(len(walk)))
    # block policy on a file: every frame analysed once, in order, none dropped.
    assert [d["frame"] for d in walk] == list(range(len(truth)))
    assert walk[-1]["dropped"] == {"queue_full": 0}

    # Detection and tracking quality against ground truth.
    s = score(walk, truth)
    consistency = s.id_consistency()
    print(f"recall={s.recall:.3f} ({s.matched}/{s.truths}) id_consistency={consistency}")
    assert s.recall >= 0.9, f"recall {s.recall:.3f}"
    assert set(consistency) == {0, 1}
    assert min(consistency.values()) >= 0.9, consistency

    # The dead file reports an error state; the other streams keep publishing after it.
    failed = [
        e.payload for e in events if e.topic == "status.missing" and e.payload["state"] == "failed"
    ]
    assert len(failed) == 1 and failed[0]["reason"] == "open_failed"
    assert "No such file" in failed[0]["detail"]
    assert sum(1 for d in walk if d["ts"] > failed[0]["ts"]) >= len(truth) // 2
    walk_states = [e.payload["state"] for e in events if e.topic == "status.walk"]
    assert walk_states == ["connecting", "streaming", "ended"]

    # Per-stage latency is present and adds up to no more than the total.
    for d in walk:
        lat = d["latency_ms"]
        assert lat["infer"] > 0 and lat["total"] >= lat["queue"] + lat["infer"] - 1.0

    beats = [e.payload for e in events if e.topic == "heartbeat"]
    assert beats and beats[-1]["backend"] == "torch-cpu"
    assert beats[-1]["streams"]["missing"]["state"] == "failed"

    # The CLI subscriber got exactly its filtered count and exited 0.
    out, _ = cli.communicate(timeout=30)
    lines = [json.loads(line) for line in out.splitlines()]
    assert cli.returncode == 0 and len(lines) == 5
    assert all(p["type"] == "det" and p["stream"] == "walk" for p in lines)
    assert "Traceback" not in log_text


def test_ctrl_c_stops_everything_while_streaming(
    person_model: Path, scene: tuple[Path, Path], daemon_env: tuple[Path, int, set[str]]
) -> None:
    tmp, port, shm_before = daemon_env
    video, _ = scene
    cfg = write_pipeline(
        tmp,
        person_model,
        port,
        [
            {"id": "a", "url": str(video), "loop": True, "realtime": True},
            {"id": "b", "url": str(video), "loop": True},  # unpaced, blocking on the detector
        ],
    )
    sub = Subscriber(f"tcp://127.0.0.1:{port}", topics=["det."])
    daemon = start(cfg, tmp / "daemon.log")
    try:
        events = collect(sub, lambda evs: {e.stream for e in evs} == {"a", "b"}, timeout_s=120)
        assert {e.stream for e in events} == {"a", "b"}, (tmp / "daemon.log").read_text()[-3000:]
        # Ctrl-C in a terminal signals the whole foreground process group.
        stop_and_check_clean(daemon, signal.SIGINT, shm_before, group=True)
    finally:
        if daemon.poll() is None:
            daemon.kill()
        sub.close()
