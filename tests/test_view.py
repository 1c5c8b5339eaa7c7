"""The live view through the real daemon: a real Chromium, OpenCV on the MJPEG URL,
nothing encoded while nobody watches, the token."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest
import supervision as sv

from streamd.client import Subscriber

from .daemon import sample, scrape, start, stop_and_check_clean, write_pipeline
from .util import free_port, shm_segments

pytestmark = pytest.mark.e2e
VIEW_FPS = 4.0
FILE_FPS = 10.0  # streamd view --out's frame rate: above the view's
BOX_COLOR = sv.ColorPalette.DEFAULT.by_idx(0).as_bgr()  # class 0 ("Normal")


@pytest.fixture(scope="module")
def still_clip(scene: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scene's first frame held for 4 s: detections are the same in every frame, so a
    screenshot taken at any moment can be checked against any published det event."""
    video, _ = scene
    out = tmp_path_factory.mktemp("still") / "still.mp4"
    hold = "select=eq(n\\,0),loop=59:1:0"
    cmd = ["ffmpeg", "-loglevel", "error", "-i", str(video), "-vf", hold, "-r", "15",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-frames:v", "60", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, timeout=60)
    return out


@pytest.fixture(scope="module")
def viewed(
    person_model: Path, still_clip: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, str, Subscriber]]:
    """One daemon for the tests that only watch it (each leaves no viewer behind); the
    clean stop is checked once, after the last of them."""
    tmp_path = tmp_path_factory.mktemp("viewed")
    port = free_port()
    streams = [{"id": "cam", "url": str(still_clip), "loop": True, "realtime": True,
                "lines": [{"name": "mid", "points": [[320, 0], [320, 360]]}]}]  # fmt: skip
    cfg = write_pipeline(tmp_path, person_model, port, streams,
                         overlay={"max_fps": VIEW_FPS, "jpeg_quality": 90})  # fmt: skip
    listen = json.loads(cfg.read_text())["http"]["listen"]
    shm_before = shm_segments()
    sub = Subscriber(f"tcp://127.0.0.1:{port}", topics=["det.cam"])
    daemon = start(cfg, tmp_path / "daemon.log")
    try:
        assert sub.recv(120) is not None, (tmp_path / "daemon.log").read_text()[-3000:]
        yield cfg, f"http://{listen}", sub
        stop_and_check_clean(daemon, signal.SIGTERM, shm_before)
    finally:
        if daemon.poll() is None:
            daemon.kill()
        sub.close()


def _boxes(sub: Subscriber) -> list[list[float]]:
    event = sub.recv(10)
    assert event is not None
    boxes = [o["bbox"] for o in event.payload["objects"] if o["class_id"] == 0]
    assert len(boxes) == 2, event.payload["objects"]  # the scene's two people
    return boxes


def _edge_share(img: npt.NDArray[np.uint8], box: list[float], scale: float = 1.0,
                offset: tuple[float, float] = (0.0, 0.0)) -> float:  # fmt: skip
    """Share of pixels along the box's left and right edges that have the box colour."""
    x1, y1, x2, y2 = (v * scale for v in box)
    ox, oy = offset
    rows = np.arange(int(oy + y1 + 0.3 * (y2 - y1)), int(oy + y1 + 0.9 * (y2 - y1)))
    hits = 0
    for x in (x1, x2):
        cols = np.arange(int(ox + x) - 2, int(ox + x) + 3)
        patch = img[rows][:, cols].astype(int)
        close = np.abs(patch - np.array(BOX_COLOR)).sum(axis=2) < 90
        hits += int(close.any(axis=1).sum())
    return hits / (2 * len(rows))


# The tests with their own daemon come first: the shared one (``viewed``) runs from the
# first test that asks for it to the end of the module.


def test_token_is_required_when_set(person_model: Path, still_clip: Path, tmp_path: Path) -> None:
    port = free_port()
    cfg = write_pipeline(tmp_path, person_model, port, [{"id": "cam", "url": str(still_clip)}])
    doc = json.loads(cfg.read_text())
    doc["http"]["token"] = "s3cret"
    cfg.write_text(json.dumps(doc))
    base = f"http://{doc['http']['listen']}"
    daemon = start(cfg, tmp_path / "daemon.log")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=2)
            except urllib.error.HTTPError as e:
                assert e.code == 401
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.3)
        for path in ("/", "/status", "/streams/cam.jpg"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"{base}{path}", timeout=5)
            assert refused.value.code == 401
        req = urllib.request.Request(f"{base}/status", headers={"Authorization": "Bearer s3cret"})
        assert urllib.request.urlopen(req, timeout=5).status == 200
        assert urllib.request.urlopen(f"{base}/?token=s3cret", timeout=5).status == 200
    finally:
        daemon.terminate()
        daemon.wait(15)
    assert "s3cret" not in (tmp_path / "daemon.log").read_text()


def test_boxes_sit_on_their_own_frame_while_people_move_and_frames_drop(
    person_model: Path, scene: tuple[Path, Path], tmp_path: Path
) -> None:
    """Walking people, 2 of every 3 frames sampled out: each JPEG's boxes are that frame's."""
    video, _ = scene
    port = free_port()
    streams = [{"id": "cam", "url": str(video), "loop": True, "realtime": True, "max_fps": 5}]
    cfg = write_pipeline(tmp_path, person_model, port, streams)
    listen = json.loads(cfg.read_text())["http"]["listen"]
    sub = Subscriber(f"tcp://127.0.0.1:{port}", topics=["det.cam"])
    daemon = start(cfg, tmp_path / "daemon.log")
    dets: dict[int, list[list[float]]] = {}
    try:
        assert sub.recv(120) is not None
        checked = 0
        for _ in range(6):
            with urllib.request.urlopen(f"http://{listen}/streams/cam.jpg", timeout=10) as r:
                frame_no = int(r.headers["X-Streamd-Frame"])
                jpeg = cv2.imdecode(np.frombuffer(r.read(), np.uint8), cv2.IMREAD_COLOR)
            deadline = time.monotonic() + 10
            while frame_no not in dets and time.monotonic() < deadline:
                ev = sub.recv(1.0)  # the det event went out before its view frame
                if ev is not None:
                    dets[ev.payload["frame"]] = [o["bbox"] for o in ev.payload["objects"]]
            boxes = dets.get(frame_no)
            assert boxes, f"frame {frame_no} was never published as a det event"
            for box in boxes:
                assert _edge_share(jpeg, box) > 0.8, f"frame {frame_no}: box {box} not drawn"
            checked += 1
            time.sleep(0.7)
        m = scrape(cfg)
        assert sample(m, "streamd_frames_dropped_total", stream="cam", cause="sampled") > 20
    finally:
        daemon.terminate()
        daemon.wait(15)
        sub.close()
    assert checked == 6


def test_nothing_is_encoded_until_someone_watches(
    viewed: tuple[Path, str, Subscriber],
) -> None:
    cfg, base, sub = viewed
    # The daemon is shared: what counts is that nothing is encoded while nobody watches.
    m = scrape(cfg)
    assert sample(m, "streamd_view_viewers", stream="cam") == 0
    analysed = sample(m, "streamd_frames_analysed_total", stream="cam")
    encoded = sample(m, "streamd_view_jpegs_encoded_total", stream="cam")
    time.sleep(3)  # frames are being analysed all along
    m = scrape(cfg)
    assert sample(m, "streamd_frames_analysed_total", stream="cam") > analysed + 10
    assert sample(m, "streamd_view_jpegs_encoded_total", stream="cam") == encoded
    cap = cv2.VideoCapture(f"{base}/streams/cam.mjpg")
    try:
        frames, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < 6:
            ok, frame = cap.read()
            assert ok and frame.shape == (360, 640, 3)
            frames += 1
    finally:
        cap.release()
    rate = frames / 6
    assert VIEW_FPS * 0.6 <= rate <= VIEW_FPS * 1.2, f"{rate:.1f} frames/s at max_fps {VIEW_FPS}"
    share = min(_edge_share(frame, box) for box in _boxes(sub))
    assert share > 0.8, f"box edges found on {share:.0%} of rows"  # drawn where detected
    time.sleep(2)  # the viewer is gone: encoding stops
    before = sample(scrape(cfg), "streamd_view_jpegs_encoded_total", stream="cam")
    time.sleep(3)
    m = scrape(cfg)
    assert sample(m, "streamd_view_jpegs_encoded_total", stream="cam") == before >= encoded + frames
    assert sample(m, "streamd_view_viewers", stream="cam") == 0


def test_a_real_browser_shows_boxes_where_they_were_detected(
    viewed: tuple[Path, str, Subscriber], tmp_path: Path
) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver_bin, "make system-deps installs chromium and chromium-driver"
    _, base, sub = viewed
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=900,700",
                "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(arg)
    browser = webdriver.Chrome(service=Service(driver_bin), options=options)
    try:
        deadline = time.monotonic() + 10
        while True:  # the latency comes with the next heartbeat (1 s)
            browser.get(f"{base}/")
            page = browser.page_source
            if re.search(r"<td>\d+ ms</td>", page) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert "cam" in page and "streaming" in page
        assert re.search(r"<td>\d+ ms</td>", page), "the index shows the stream's latency"
        browser.find_element("link text", "cam").click()
        deadline = time.monotonic() + 20
        while browser.execute_script("return document.getElementById('live').naturalWidth") == 0:
            assert time.monotonic() < deadline, "the MJPEG never showed"
            time.sleep(0.2)
        time.sleep(1.0)
        rect: dict[str, Any] = browser.execute_script(
            "const r = document.getElementById('live').getBoundingClientRect();"
            "return {x: r.x, y: r.y, w: r.width};"
        )
        png = browser.get_screenshot_as_png()
    finally:
        browser.quit()
    (tmp_path / "browser.png").write_bytes(png)
    shot = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    scale = rect["w"] / 640
    for box in _boxes(sub):
        share = _edge_share(shot, box, scale, (rect["x"], rect["y"]))
        assert share > 0.8, f"box {box}: edges on {share:.0%} of rows in the screenshot"


def test_streamd_view_records_the_annotated_stream(
    viewed: tuple[Path, str, Subscriber], tmp_path: Path
) -> None:
    import sys

    cfg, _, sub = viewed
    out = tmp_path / "view.mp4"
    done = subprocess.run(
        [sys.executable, "-m", "streamd.cli", "view", "cam", str(cfg), "--out", str(out),
         "--seconds", "3", "--fps", str(FILE_FPS)],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    cap = cv2.VideoCapture(str(out))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    # Pictures come at the view's 4 a second; the 10 frames/s file still plays 3 s (each
    # picture written until the next is due), not 1.2 s fast-forwarded.
    assert 3 * 0.7 <= len(frames) / FILE_FPS <= 3 * 1.2, f"{len(frames)} frames"
    assert frames[0].shape == (360, 640, 3)
    share = min(_edge_share(frames[-1], box) for box in _boxes(sub))
    assert share > 0.7, f"box edges on {share:.0%} of rows in the recording"
    no_display = subprocess.run([sys.executable, "-m", "streamd.cli", "view", "cam", str(cfg)],
                                capture_output=True, text=True, timeout=60,
                                env={"PATH": "/usr/bin:/bin"})  # fmt: skip
    assert no_display.returncode == 2 and "--out" in no_display.stderr
    unknown = subprocess.run(
        [sys.executable, "-m", "streamd.cli", "view", "nope", str(cfg), "--out",
         str(tmp_path / "nope.mp4"), "--seconds", "1"],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert unknown.returncode == 1 and "no such stream" in unknown.stderr, unknown.stderr


def test_a_stalled_viewer_slows_nobody_and_buffers_nothing(
    viewed: tuple[Path, str, Subscriber],
) -> None:
    import socket

    import psutil

    cfg, base, _ = viewed
    host, port = base.removeprefix("http://").split(":")
    supervisor = next(p for p in psutil.process_iter(["cmdline"])
                      if str(cfg) in " ".join(p.info["cmdline"] or []))  # fmt: skip
    stalled = socket.create_connection((host, int(port)))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(b"GET /streams/cam.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # and never reads
    try:
        time.sleep(2)
        rss_before = supervisor.memory_info().rss
        cap = cv2.VideoCapture(f"{base}/streams/cam.mjpg")
        frames, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < 8:
            ok, _ = cap.read()
            assert ok
            frames += 1
        cap.release()
        growth = supervisor.memory_info().rss - rss_before
    finally:
        stalled.close()
    assert frames / 8 >= VIEW_FPS * 0.6, f"the reading viewer got {frames / 8:.1f}/s"
    assert growth < 20 * 2**20, f"supervisor grew {growth / 2**20:.1f} MiB"
    m = scrape(cfg)
    assert sample(m, "streamd_frames_analysed_total", stream="cam") > 0
