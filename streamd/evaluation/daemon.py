"""Run the real daemon (``streamd run``) on a clip and gather its ``det`` events."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamd.client import Subscriber
from streamd.evaluation.metrics import TrackedFrame

STREAM = "eval"


@dataclass(frozen=True, slots=True)
class DaemonRun:
    frames: list[TrackedFrame]  # every det event, in frame order
    dropped: dict[str, int]  # the last event's counters
    wall_s: float


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_pipeline(
    folder: Path, video: Path, model: dict[str, Any], tracker: dict[str, Any],
    load: dict[str, Any],
) -> tuple[Path, str]:  # fmt: skip
    """A pipeline file with one stream of ``video`` read as ``load`` says; its endpoint."""
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    cfg = {
        "model": model,
        "tracker": tracker,
        "batching": {"max_batch": 4, "max_wait_ms": 20},
        "publish": {"endpoint": endpoint, "hwm": 100_000},
        "http": {"listen": None},
        "journal": {"path": str(folder / "alerts.sqlite"),
                    "endpoint": f"tcp://127.0.0.1:{_free_port()}"},
        "log": {"summary_s": 0},
        "streams": [{"id": STREAM, "url": str(video), **load}],
    }  # fmt: skip
    path = folder / "pipeline.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path, endpoint


def run_daemon(pipeline: Path, endpoint: str, log: Path, timeout_s: float) -> DaemonRun:
    """Start ``streamd run``, take every det event until the stream has ``ended``, stop it."""
    t0 = time.monotonic()
    events: dict[int, dict[str, Any]] = {}
    with Subscriber(endpoint, topics=(f"det.{STREAM}", f"status.{STREAM}")) as sub:
        # Subscribed before the daemon binds: nothing it publishes is missed.
        cmd = [sys.executable, "-m", "streamd.cli", "run", str(pipeline), "--log-level", "WARNING"]
        with log.open("wb") as out:
            daemon = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=os.environ)
        try:
            _gather(sub, daemon, events, log, t0 + timeout_s)
        finally:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(15)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait(5)
        if sub.gaps:
            raise RuntimeError(f"det events were lost on the way ({sub.gaps}): scores would lie")
    frames = [TrackedFrame.from_event(events[k]) for k in sorted(events)]
    dropped = dict(events[max(events)]["dropped"]) if events else {}
    return DaemonRun(frames, dropped, time.monotonic() - t0)


def _gather(
    sub: Subscriber, daemon: subprocess.Popen[bytes], events: dict[int, dict[str, Any]],
    log: Path, deadline: float,
) -> None:  # fmt: skip
    while time.monotonic() < deadline:
        ev = sub.recv(0.5)
        if ev is None:
            if daemon.poll() is not None:
                raise RuntimeError(f"streamd run exited ({daemon.returncode}): see {log}")
            continue
        if ev.topic.startswith("det."):
            events[int(ev.payload["frame"])] = ev.payload
        elif ev.payload["state"] == "ended":  # after the stream's last det event
            return
        elif ev.payload["state"] == "failed":
            raise RuntimeError(f"the stream failed: {ev.payload.get('reason')}; see {log}")
    raise TimeoutError(f"the daemon did not finish the clip in time; see {log}")
