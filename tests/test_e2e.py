"""The real daemon as a subprocess: real detector, real ZeroMQ, a scene with ground truth."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from streamd.client import Event, Subscriber
from streamd.publish import load_schema

from .daemon import collect, start, stop_and_check_clean, write_pipeline
from .groundtruth import score
from .util import free_port, shm_segments

pytestmark = pytest.mark.e2e
VALIDATOR = jsonschema.Draft202012Validator(load_schema())


@pytest.fixture
def daemon_env(tmp_path: Path) -> Iterator[tuple[Path, int, set[str]]]:
    yield tmp_path, free_port(), shm_segments()


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
            # `ended` comes after the stream's last det event (its frames analysed first).
            ended = any(e.topic == "status.walk" and e.payload["state"] == "ended" for e in evs)
            return walk >= len(truth) and "streaming" in live_states and ended

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
    assert walk[-1]["dropped"] == {"queue_full": 0, "stale": 0, "sampled": 0}

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
    # No CUDA here and onnxruntime installed: auto takes the ONNX export.
    assert beats and beats[-1]["backend"] == "onnx-cpu"
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
        # The torch backend, asked for by name (auto would take onnx here).
        model={"weights": str(person_model), "imgsz": 320, "backend": "cpu"},
    )
    sub = Subscriber(f"tcp://127.0.0.1:{port}", topics=["det.", "heartbeat"])
    daemon = start(cfg, tmp / "daemon.log")
    try:
        events = collect(sub, lambda evs: {e.stream for e in evs} >= {"a", "b"}, timeout_s=120)
        assert {e.stream for e in events} >= {"a", "b"}, (tmp / "daemon.log").read_text()[-3000:]
        beat = collect(sub, lambda evs: evs[-1].topic == "heartbeat", timeout_s=10)[-1]
        assert beat.payload["backend"] == "torch-cpu"
        # Ctrl-C in a terminal signals the whole foreground process group.
        stop_and_check_clean(daemon, signal.SIGINT, shm_before, group=True)
    finally:
        if daemon.poll() is None:
            daemon.kill()
        sub.close()
