"""Honest health against a real daemon: a camera that is down makes ``/readyz`` 503,
``streamd status`` exit 3, ``streamd_stream_up`` 0 and the index page show why, while
``/healthz`` (the daemon itself is alive) stays 200. The pure parts (readiness share,
exit codes, the page) are checked without a daemon.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from streamd.cli import EXIT_STREAMS_DOWN, status_exit_code
from streamd.control.health import mark_streams, not_ready
from streamd.view import pages

from .daemon import sample, scrape, start, stop_and_check_own_clean, write_pipeline
from .util import free_port

NULL_MODEL = {"backend": "null", "null_boxes": 2, "imgsz": 320}


def _clip(path: Path, seconds: int) -> Path:
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc=size=320x240:rate=15", "-t", str(seconds), "-pix_fmt", "yuv420p",
                    str(path)], check=True)  # fmt: skip
    return path


def _get(listen: str, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://{listen}{path}", timeout=5) as r:
            body = r.read()
            code = r.status
    except urllib.error.HTTPError as e:
        body, code = e.read(), e.code
    except urllib.error.URLError:  # not listening yet
        return 0, None
    return code, json.loads(body) if body.startswith(b"{") else body.decode()


def _until(what: str, check: Callable[[], Any], timeout_s: float, log: Path) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no {what} after {timeout_s}s:\n{log.read_text()[-3000:]}")


def _status_cli(listen: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streamd.cli", "status", listen],
                          capture_output=True, text=True, timeout=30)  # fmt: skip


def test_a_camera_that_ended_is_down_everywhere_but_the_daemon_stays_live(tmp_path: Path) -> None:
    loop = _clip(tmp_path / "loop.mp4", 3)
    short = _clip(tmp_path / "short.mp4", 6)
    cfg = write_pipeline(
        tmp_path, Path("unused.pt"), free_port(),
        [{"id": "loop", "url": str(loop), "loop": True, "realtime": True},
         {"id": "short", "url": str(short), "realtime": True}],
        model=NULL_MODEL,
    )  # fmt: skip
    listen = json.loads(cfg.read_text())["http"]["listen"]
    log = tmp_path / "daemon.log"
    daemon = start(cfg, log)
    try:
        # Both cameras streaming: ready, exit 0, up 1.
        _until("ready", lambda: _get(listen, "/readyz")[0] == 200, 60, log)
        code, body = _get(listen, "/readyz")
        assert code == 200 and body["ready"] is True and body["problems"] == []
        assert body["streams"]["short"] == {"up": True, "problem": None}
        up = _status_cli(listen)
        assert up.returncode == 0, up.stdout + up.stderr
        m = scrape(cfg)
        assert sample(m, "streamd_stream_up", stream="short") == 1.0

        # The short file ends: not ready, exit 3, up 0, its reason on the page.
        _until("not ready", lambda: _get(listen, "/readyz")[0] == 503, 30, log)
        code, body = _get(listen, "/readyz")
        assert code == 503 and body["ready"] is False
        assert body["streams"]["short"]["up"] is False
        assert body["streams"]["short"]["problem"].startswith("ended: end_of_stream")
        assert body["streams"]["loop"] == {"up": True, "problem": None}
        assert "1/2 streams streaming" in body["problems"][0]
        assert _get(listen, "/healthz")[0] == 200  # alive: restarting it would not help
        _, status = _get(listen, "/status")
        assert status["ready"] is False and status["healthy"] is True
        assert status["streams"]["short"]["up"] is False
        down = _status_cli(listen)
        assert down.returncode == EXIT_STREAMS_DOWN, down.stdout + down.stderr
        assert "short: DOWN, ended: end_of_stream" in down.stdout
        m = scrape(cfg)
        assert sample(m, "streamd_stream_up", stream="short") == 0.0
        assert sample(m, "streamd_stream_up", stream="loop") == 1.0
        _, page = _get(listen, "/")
        assert "<div class='down'>no picture: ended</div>" in page
        assert page.count("<img class='thumb'") == 1  # the live camera keeps its thumbnail
        stop_and_check_own_clean(daemon, signal.SIGTERM)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait(10)


def test_status_exit_code_is_1_when_nothing_answers() -> None:
    gone = _status_cli(f"127.0.0.1:{free_port()}")
    assert gone.returncode == 1
    assert "no daemon answering" in gone.stderr


def _rows(*states: str | None) -> dict[str, dict[str, Any]]:
    return {f"cam{i}": {"state": s, "reason": "r", "detail": "", "retry_in_s": None}
            for i, s in enumerate(states)}  # fmt: skip


@pytest.mark.parametrize(
    ("share", "states", "ready"),
    [
        (1.0, ("streaming", "streaming"), True),
        (1.0, ("streaming", "reconnecting"), False),
        (0.5, ("streaming", "reconnecting"), True),
        (0.75, ("streaming", "streaming", "streaming", "failed"), True),  # 3 of 4 needed
        (0.75, ("streaming", "streaming", "stalled", "failed"), False),
        (0.01, ("connecting", "failed"), False),  # any share above 0 needs one stream
        (0.0, ("connecting", None), True),  # the model alone
    ],
)
def test_readiness_needs_the_configured_share_of_streams(
    share: float, states: tuple[str | None, ...], ready: bool
) -> None:
    assert (not_ready(_rows(*states), True, share) == []) is ready


def test_readiness_needs_the_model_whatever_the_streams() -> None:
    assert not_ready(_rows("streaming"), False, 1.0) == ["model not loaded: no detector heartbeat"]


def test_each_row_says_why_it_is_down() -> None:
    rows = _rows("streaming", None, "reconnecting")
    rows["cam2"].update(reason="open_failed", detail="Connection refused", retry_in_s=2.0)
    mark_streams(rows)
    assert [(r["up"], r["problem"]) for r in rows.values()] == [
        (True, None),
        (False, "not started yet"),
        (False, "reconnecting: open_failed (Connection refused), retry in 2.0s"),
    ]


def test_status_exit_codes() -> None:
    rows = _rows("streaming", "failed")
    mark_streams(rows)
    assert status_exit_code({"healthy": True, "streams": rows}) == EXIT_STREAMS_DOWN
    assert status_exit_code({"healthy": False, "streams": rows}) == 1
    del rows["cam1"]
    assert status_exit_code({"healthy": True, "streams": rows}) == 0


def test_the_index_escapes_a_failing_cameras_reason() -> None:
    rows = _rows("failed")
    rows["cam0"]["detail"] = "<script>alert(1)</script>"
    mark_streams(rows)
    page = pages.index({"backend": "null", "streams": rows}, None)
    assert "<script>alert(1)" not in page
    assert "failed: r (&lt;script&gt;alert(1)&lt;/script&gt;)" in page
    assert "<img class='thumb'" not in page
