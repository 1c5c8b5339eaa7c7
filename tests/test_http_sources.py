"""HTTP sources served locally: an MJPEG camera (multipart/x-mixed-replace) and HLS."""

from __future__ import annotations

import functools
import json
import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import av
import cv2
import pytest

from .daemon import EventLog, start, stop_and_check_clean, write_pipeline
from .groundtruth import score
from .live import LIVE, daemon_log, is_det
from .test_damaged_input import ffmpeg

pytestmark = pytest.mark.e2e
BOUNDARY = "streamdframe"


def jpeg_frames(clip: Path) -> list[bytes]:
    with av.open(str(clip)) as c:
        return [
            cv2.imencode(".jpg", f.to_ndarray(format="bgr24"), [cv2.IMWRITE_JPEG_QUALITY, 85])[
                1
            ].tobytes()
            for f in c.decode(video=0)
        ]


class _MjpegHandler(BaseHTTPRequestHandler):
    """Like an IP camera's /video.mjpg: every client gets the clip from frame 0, paced."""

    frames: ClassVar[list[bytes]] = []
    fps = 4.0

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace;boundary={BOUNDARY}")
        self.end_headers()
        t0 = time.monotonic()
        try:
            for i, jpg in enumerate(self.frames):
                time.sleep(max(0.0, t0 + i / self.fps - time.monotonic()))
                head = (
                    f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                    f"Content-Length: {len(jpg)}\r\n\r\n"
                )
                self.wfile.write(head.encode() + jpg + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            return

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_servers(live_clip: tuple[Path, Path], tmp_path: Path) -> Iterator[dict[str, str]]:
    clip, _ = live_clip
    handler = type("H", (_MjpegHandler,), {"frames": jpeg_frames(clip)})
    mjpeg = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    mjpeg.daemon_threads = True
    hls_dir = tmp_path / "hls"
    hls_dir.mkdir()
    ffmpeg(
        "-i", str(clip), "-c", "copy", "-f", "hls", "-hls_time", "2",
        "-hls_playlist_type", "vod", str(hls_dir / "index.m3u8"),
    )  # fmt: skip
    files = functools.partial(_QuietFiles, directory=str(hls_dir))
    hls = ThreadingHTTPServer(("127.0.0.1", 0), files)
    hls.daemon_threads = True
    for server in (mjpeg, hls):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {
        "mjpeg": f"http://127.0.0.1:{mjpeg.server_address[1]}/video.mjpg",
        "hls": f"http://127.0.0.1:{hls.server_address[1]}/index.m3u8",
    }
    for server in (mjpeg, hls):
        server.shutdown()
        server.server_close()


def test_mjpeg_and_hls_over_http(
    person_model: Path,
    live_clip: tuple[Path, Path],
    http_servers: dict[str, str],
    run_env: dict[str, Any],
) -> None:
    _, truth_path = live_clip
    truth = json.loads(truth_path.read_text())["frames"]
    log: EventLog = run_env["log"]
    cfg = write_pipeline(
        run_env["tmp"],
        person_model,
        run_env["port"],
        [{"id": name, "url": url, **LIVE} for name, url in http_servers.items()],
    )
    run_env["daemon"] = daemon = start(cfg, run_env["tmp"] / "daemon.log")
    assert log.wait_for(is_det("mjpeg"), 120), daemon_log(run_env)[-3000:]
    assert log.wait_for(is_det("hls"), 30), daemon_log(run_env)[-3000:]
    # Until there is enough of each to judge (what the asserts below need), not longer.
    enough = log.wait_for(lambda _t, _e: len(log.payloads("det.mjpeg")) >= 20
                          and len(log.payloads("det.hls")) >= 10, 30)  # fmt: skip
    assert enough, daemon_log(run_env)[-3000:]
    stop_and_check_clean(daemon, signal.SIGTERM, run_env["shm"])

    mjpeg = log.payloads("det.mjpeg")
    s = score(mjpeg, truth)
    print(f"mjpeg: {len(mjpeg)} frames, recall={s.recall:.3f}; hls: {len(log.payloads('det.hls'))}")
    assert len(mjpeg) >= 20 and s.recall >= 0.8
    assert {(d["width"], d["height"]) for d in mjpeg} == {(640, 360)}
    hls = log.payloads("det.hls")
    assert len(hls) >= 10
    assert sum(1 for d in hls if d["objects"]) >= 0.8 * len(hls)
    assert [p["state"] for p in log.payloads("status.mjpeg")][:2] == ["connecting", "streaming"]
