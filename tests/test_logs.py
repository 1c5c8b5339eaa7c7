"""Logs people can ship: the ``log`` section's JSON lines from every process, the
supervisor's summary and totals, and third-party output kept inside the log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .daemon import start, stop_and_check_clean, write_pipeline
from .util import free_port, shm_segments

FIELDS = {"time", "level", "process", "logger", "message"}


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from streamd.synth import SceneSpec, write_scene

    video = tmp_path_factory.mktemp("logs") / "clip.mp4"
    write_scene(video, SceneSpec(width=320, height=180, fps=15, seconds=2.0, people=1))
    return video


def _lines(log: Path) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text().splitlines():
        record = json.loads(line)  # fails the test on any line that is not JSON
        assert isinstance(record, dict) and record.keys() >= FIELDS, line
        out.append(record)
    return out


def _has_figures(row: dict[str, Any]) -> bool:
    return bool(row["state"] == "streaming" and row["fps"] > 0 and row["analysed"] > 0
                and row["latency_ms"]["p50"] is not None)  # fmt: skip


def _wait_for_summary(log: Path, timeout_s: float) -> None:
    """Until a summary line shows both cameras analysing (start-up takes seconds)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text()
        for line in text[: text.rfind("\n") + 1].splitlines():  # whole lines only
            streams = json.loads(line).get("summary", {}).get("streams", {})
            if streams and all(_has_figures(s) for s in streams.values()):
                return
        time.sleep(0.5)
    raise AssertionError(f"no summary line with figures within {timeout_s}s:\n{log.read_text()}")


def test_json_logs_from_every_process_with_summary_and_totals(clip: Path, tmp_path: Path) -> None:
    streams = [{"id": f"cam{i}", "url": str(clip), "loop": True, "realtime": True}
               for i in range(2)]  # fmt: skip
    cfg = write_pipeline(tmp_path, Path("unused.pt"), free_port(), streams,
                         model={"backend": None, "null_boxes": 3, "imgsz": 320},
                         log={"format": "json", "summary_s": 1})  # fmt: skip
    shm_before = shm_segments()
    log = tmp_path / "daemon.log"
    daemon = start(cfg, log)
    try:
        _wait_for_summary(log, 30.0)
        stop_and_check_clean(daemon, signal.SIGTERM, shm_before)
    finally:
        daemon.kill()
    records = _lines(log)
    names = {r["process"]["name"] for r in records}
    assert {"supervisor", "inference", "source cam0", "source cam1"} <= names
    for r in records:
        assert isinstance(r["process"]["pid"], int)
        if r["process"]["name"].startswith("source "):
            assert r["stream"] == r["process"]["name"].removeprefix("source ")
    summaries = [r["summary"]["streams"] for r in records if "summary" in r]
    assert all(set(s) == {"cam0", "cam1"} for s in summaries)
    # A line with every figure (a later one may cover a second with no frame, under load).
    assert any(_has_figures(s["cam0"]) and _has_figures(s["cam1"]) for s in summaries)
    totals = [r["totals"] for r in records if "totals" in r]
    assert len(totals) == 1
    assert totals[0]["cam1"]["analysed"] > 0 and totals[0]["cam1"]["restarts"] == 0
    assert set(totals[0]["cam1"]) == {"analysed", "dropped", "alerts", "restarts"}


def test_exceptions_are_a_field_and_credentials_are_redacted() -> None:
    code = (
        "import logging\n"
        "from streamd.runtime.logs import configure_logging\n"
        "configure_logging('INFO', 'test', 'json', 'cam9')\n"
        "try:\n"
        "    raise ValueError('rtsp://user:pw@host/x')\n"
        "except ValueError:\n"
        "    logging.getLogger('t').exception('open failed for rtsp://user:pw@host/x')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    record = json.loads(out.stderr)
    assert record["stream"] == "cam9" and record["level"] == "ERROR"
    assert "ValueError" in record["exception"] and "Traceback" in record["exception"]
    assert "pw" not in out.stderr


def test_third_party_output_goes_through_the_log() -> None:
    code = (
        "import logging, os, warnings\n"
        "from streamd.runtime.logs import adopt_ultralytics, configure_logging, logged_output\n"
        "configure_logging('INFO', 'test', 'json')\n"
        "from ultralytics.utils import LOGGER\n"
        "adopt_ultralytics()\n"
        "LOGGER.warning('ultra says hi')\n"
        "warnings.warn('careful')\n"
        "with logged_output(logging.getLogger('export')):\n"
        "    print('python print')\n"
        "    os.write(1, b'c level out\\n')\n"
        "    os.write(2, b'c level err\\n')\n"
    )
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout == ""
    records = [json.loads(line) for line in out.stderr.splitlines()]
    messages = {r["message"] for r in records}
    assert {"ultra says hi", "python print", "c level out", "c level err"} <= messages
    assert any("careful" in m for m in messages)
