"""/metrics after streams change at runtime: a removed stream's series go (its dead
worker's counter files stay on disk), the other streams' stay, and a stream added again
under the same id shows again. Real daemon (null backend), the stream API, real scrapes."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .daemon import scrape, start, write_pipeline
from .util import free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from streamd.synth import SceneSpec, write_scene

    video = tmp_path_factory.mktemp("metrics") / "small.mp4"
    write_scene(video, SceneSpec(width=320, height=180, fps=15, seconds=2.0, people=1))
    return video


def _live(sid: str, clip: Path) -> dict[str, Any]:
    return {"id": sid, "url": str(clip), "loop": True, "realtime": True}


def _api(listen: str, method: str, path: str, body: Any = None) -> int:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://{listen}{path}", data=data, method=method)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=40) as r:
        return int(r.status)


def _series(m: Samples, stream: str) -> set[str]:
    """Names of the samples labelled with ``stream``."""
    return {name for name, labels in m if ("stream", stream) in labels}


def _scrape_until(cfg: Path, check: Any, timeout_s: float) -> Samples:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            m = scrape(cfg)
        except OSError:  # not listening yet
            m = {}
        if check(m) or time.monotonic() > deadline:
            return m
        time.sleep(0.3)


def test_a_removed_streams_series_leave_metrics_and_come_back_with_it(
    clip: Path, tmp_path: Path
) -> None:
    cfg = write_pipeline(tmp_path, Path("unused.pt"), free_port(), [_live("a", clip)],
                         model={"backend": "null", "null_boxes": 1, "imgsz": 320})  # fmt: skip
    listen = json.loads(cfg.read_text())["http"]["listen"]
    log = tmp_path / "daemon.log"
    daemon = start(cfg, log)
    analysed = "streamd_frames_analysed_total"
    try:
        m = _scrape_until(cfg, lambda m: analysed in _series(m, "a"), 60)
        assert analysed in _series(m, "a"), log.read_text()[-3000:]

        assert _api(listen, "POST", "/api/streams", _live("b", clip)) == 201
        m = _scrape_until(cfg, lambda m: analysed in _series(m, "b"), 30)
        before = _series(m, "b")
        assert {analysed, "streamd_frames_decoded_total", "streamd_stream_up"} <= before

        assert _api(listen, "DELETE", "/api/streams/b") == 200
        m = scrape(cfg)
        assert _series(m, "b") == set(), f"left on /metrics: {sorted(_series(m, 'b'))}"
        assert analysed in _series(m, "a") and "streamd_stream_up" in _series(m, "a")

        assert _api(listen, "POST", "/api/streams", _live("b", clip)) == 201
        m = _scrape_until(cfg, lambda m: analysed in _series(m, "b"), 30)
        assert {analysed, "streamd_stream_up"} <= _series(m, "b")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(10)
