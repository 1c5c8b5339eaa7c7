"""Fault isolation: dead and late cameras, SIGKILLed source workers, the restart limit.

The reference stream ``other`` (a paced 4 fps file) must keep its analysed
rate within 20% through all of it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .daemon import EventLog, http_status, start, stop_and_check_clean, write_pipeline
from .live import LIVE, MAX_BACKOFF_S, assert_rate_steady, daemon_log, is_det, reference_stream
from .rtsp import RtspServer
from .util import free_port, shm_segments

pytestmark = pytest.mark.e2e


def states(log: EventLog, stream: str) -> list[tuple[str, str, int]]:
    return [(p["state"], p["reason"], p["attempt"]) for p in log.payloads(f"status.{stream}")]


def test_dead_camera_does_not_block_start_and_a_late_one_is_picked_up(
    person_model: Path, live_clip: tuple[Path, Path], run_env: dict[str, Any]
) -> None:
    clip, _ = live_clip
    late = RtspServer(clip)  # its port is chosen, nothing listens yet
    run_env["servers"].append(late)
    log: EventLog = run_env["log"]
    cfg = write_pipeline(
        run_env["tmp"],
        person_model,
        run_env["port"],
        [
            {
                "id": "dead",
                "url": f"rtsp://127.0.0.1:{free_port()}/cam",
                **LIVE,
                "reconnect": {"initial_s": 0.2, "max_s": 0.5, "max_attempts": 3},
            },
            {"id": "late", "url": late.url(), **LIVE},
            reference_stream(clip),
        ],
    )
    run_env["daemon"] = daemon = start(cfg, run_env["tmp"] / "daemon.log")
    assert log.wait_for(is_det("other"), 120), daemon_log(run_env)[-3000:]

    failed = log.wait_state("dead", {"failed"}, 30)
    assert failed is not None
    # Three retries after the first failure, then it gives up and says why.
    assert states(log, "dead") == [
        ("connecting", "start", 1),
        ("reconnecting", "open_failed", 2),
        ("connecting", "retry", 2),
        ("reconnecting", "open_failed", 3),
        ("connecting", "retry", 3),
        ("reconnecting", "open_failed", 4),
        ("connecting", "retry", 4),
        ("failed", "max_attempts", 4),
    ]
    assert "Connection refused" in failed[1]["detail"]

    # The late camera keeps retrying (forever by default) and streams once it appears.
    time.sleep(3.0)
    assert {p["state"] for p in log.payloads("status.late")} == {"connecting", "reconnecting"}
    t_up = time.time()
    late.start()
    back = log.wait_for(is_det("late", t_up), MAX_BACKOFF_S + 5.0 + 3.0)
    assert back is not None and back[0] - t_up <= MAX_BACKOFF_S + 5.0
    status = http_status(cfg)["streams"]
    assert status["dead"]["state"] == "failed" and status["late"]["state"] == "streaming"
    # The same, for people, without subscribing: `streamd status PIPELINE`.
    out = subprocess.run(
        [sys.executable, "-m", "streamd.cli", "status", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 3, out.stderr  # healthy, but a camera is down
    assert "dead: DOWN, failed: max_attempts" in out.stdout
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines()[2:5]}
    assert set(rows) == {"dead", "late", "other"}
    assert rows["dead"][1:5:2] == ["failed", "max_attempts"]
    assert rows["late"][1] == "streaming" and rows["other"][1] == "streaming"
    stop_and_check_clean(daemon, signal.SIGTERM, run_env["shm"])


def test_killed_source_worker_is_restarted_then_rate_limited(
    person_model: Path, live_clip: tuple[Path, Path], run_env: dict[str, Any]
) -> None:
    clip, _ = live_clip
    log: EventLog = run_env["log"]
    cfg = write_pipeline(
        run_env["tmp"],
        person_model,
        run_env["port"],
        [
            {"id": "victim", "url": str(clip), "loop": True, "realtime": True},
            reference_stream(clip),
        ],
        supervisor={"max_restarts": 2, "restart_window_s": 60},
    )
    run_env["daemon"] = daemon = start(cfg, run_env["tmp"] / "daemon.log")
    assert log.wait_for(is_det("victim"), 120), daemon_log(run_env)[-3000:]
    assert log.wait_for(is_det("other"), 30)
    t_base = time.time()
    time.sleep(5.0)
    t_first_kill = time.time()

    for attempt in (1, 2):
        pid = http_status(cfg)["streams"]["victim"]["pid"]
        assert any(f"_{pid}_" in name for name in shm_segments()), "victim has no ring?"
        t_kill = time.time()
        os.kill(pid, signal.SIGKILL)
        said = log.wait_state("victim", {"reconnecting"}, 5, since=t_kill)
        assert said is not None
        assert said[1]["reason"] == "worker_crashed" and said[1]["attempt"] == attempt
        assert said[1]["detail"] == "killed by SIGKILL"
        again = log.wait_state("victim", {"connecting"}, 10, since=t_kill)
        assert again is not None and again[0] - t_kill <= 5.0, "not restarted within 5 s"
        print(f"kill {attempt}: worker connecting again after {again[0] - t_kill:.2f}s")
        assert again[1]["reason"] == "restart" and again[1]["prev_state"] == "reconnecting"
        assert log.wait_for(is_det("victim", again[0]), 30), "restarted worker sends no frames"
        assert not any(f"_{pid}_" in name for name in shm_segments()), "dead worker's ring leaked"
        assert http_status(cfg)["streams"]["victim"]["pid"] not in (None, pid)
        time.sleep(3.0)

    # The third death within the window exceeds max_restarts: failed, and no more restarts.
    pid = http_status(cfg)["streams"]["victim"]["pid"]
    t_kill = time.time()
    os.kill(pid, signal.SIGKILL)
    failed = log.wait_state("victim", {"failed"}, 5, since=t_kill)
    assert failed is not None and failed[1]["reason"] == "restart_limit"
    assert "2 restart(s) within 60s" in failed[1]["detail"]
    time.sleep(4.0)
    assert log.wait_state("victim", {"connecting"}, 0, since=t_kill) is None
    status = http_status(cfg)["streams"]["victim"]
    assert status["state"] == "failed" and status["pid"] is None and status["restarts"] == 2
    assert not any(f"_{pid}_" in name for name in shm_segments())

    assert_rate_steady(log, (t_base, t_first_kill), [(t_first_kill, time.time())])
    stop_and_check_clean(daemon, signal.SIGTERM, run_env["shm"])
