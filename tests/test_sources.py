"""Source-side logic: credential escaping, ffmpeg options per kind, backoff, the media clock."""

from __future__ import annotations

import itertools
import random
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import av
import pytest

from streamd.analysis.loop import AnalysisSpec
from streamd.config import ConfigError, parse_config
from streamd.control import connect_endpoint
from streamd.sources.reader import (
    MediaClock,
    OpenOptions,
    auto_decode_threads,
    escape_credentials,
    ffmpeg_input,
    open_source,
)
from streamd.sources.worker import Backoff, Sampler, source_spec


@pytest.mark.parametrize(
    ("url", "user", "password", "host", "path"),
    [
        (
            "rtsp://admin:p@ss/w:rd@10.0.0.5:554/stream1",
            "admin",
            "p@ss/w:rd",
            "10.0.0.5",
            "/stream1",
        ),
        ("rtsp://admin:plain@cam/s?x=1", "admin", "plain", "cam", "/s"),
        ("rtsp://admin:p%40ss@cam/s", "admin", "p@ss", "cam", "/s"),  # already encoded: unchanged
        ("http://u@host/video.mjpg", "u", None, "host", "/video.mjpg"),
    ],
)
def test_escape_credentials_makes_urls_ffmpeg_can_split(
    url: str, user: str, password: str | None, host: str, path: str
) -> None:
    from urllib.parse import unquote

    parts = urlsplit(escape_credentials(url))
    assert parts.hostname == host and parts.path == path
    assert unquote(parts.username or "") == user
    assert (unquote(parts.password) if parts.password is not None else None) == password


def test_escape_credentials_leaves_urls_without_userinfo() -> None:
    assert escape_credentials("rtsp://cam:554/s") == "rtsp://cam:554/s"
    assert escape_credentials("/clips/a.mp4") == "/clips/a.mp4"


def test_media_clock_is_strictly_increasing_across_loops() -> None:
    clock = MediaClock()
    pts = [0.0, 1 / 15, 2 / 15, 0.0, 1 / 15]  # the file looped
    stamps = [clock.stamp(p, wall=1000.0) for p in pts]
    assert all(b > a for a, b in itertools.pairwise(stamps))
    # After the loop the clock keeps the file's frame interval.
    assert stamps[3] - stamps[2] == pytest.approx(1 / 15)
    assert stamps[4] - stamps[3] == pytest.approx(1 / 15)


@pytest.mark.parametrize("failures", range(1, 12))
def test_backoff_is_exponential_capped_and_jittered(failures: int) -> None:
    backoff = Backoff(0.5, 8.0, random.Random(failures))
    base = min(8.0, 0.5 * 2 ** (failures - 1))
    delays = [backoff.delay(failures) for _ in range(50)]
    assert all(0.5 * base <= d <= base for d in delays)
    assert max(delays) <= 8.0
    assert len(set(delays)) > 1  # jittered: many cameras do not retry in lockstep


def test_ffmpeg_input_per_source_kind() -> None:
    target, fmt, opts = ffmpeg_input(OpenOptions("rtsp://u:p@ss@cam/s", transport="udp"))
    assert (target, fmt) == ("rtsp://u:p%40ss@cam/s", None)
    assert opts == {"rtsp_transport": "udp", "analyzeduration": "1000000"}
    # A short open timeout leaves room for the probe to finish inside it.
    short = ffmpeg_input(OpenOptions("rtsps://cam/s", open_timeout_s=1.5))[2]
    assert short == {"rtsp_transport": "tcp", "analyzeduration": "500000"}
    target, fmt, opts = ffmpeg_input(OpenOptions("0", width=1280, height=720, fps=30))
    assert (target, fmt) == ("/dev/video0", "v4l2")
    assert opts == {"video_size": "1280x720", "framerate": "30"}
    assert ffmpeg_input(OpenOptions("/dev/video2"))[:2] == ("/dev/video2", "v4l2")
    assert ffmpeg_input(OpenOptions("http://cam/video.mjpg"))[:2] == ("http://cam/video.mjpg", None)


def test_a_missing_webcam_is_an_open_error_not_a_crash() -> None:
    # No V4L2 device exists on CI machines: opening one must raise what the worker catches.
    with pytest.raises((av.FFmpegError, OSError)):
        open_source(OpenOptions("/dev/video99", open_timeout_s=2.0))


@pytest.mark.parametrize(
    ("bind", "connect"),
    [
        ("tcp://0.0.0.0:5556", "tcp://127.0.0.1:5556"),
        ("tcp://*:5556", "tcp://127.0.0.1:5556"),
        ("tcp://[::]:5556", "tcp://[::1]:5556"),
        ("tcp://10.1.2.3:5556", "tcp://10.1.2.3:5556"),
        ("ipc:///run/streamd/events", "ipc:///run/streamd/events"),
    ],
)
def test_status_board_connects_to_its_own_publisher(bind: str, connect: str) -> None:
    assert connect_endpoint(bind) == connect


def test_watchdog_ends_a_process_stuck_past_its_deadline() -> None:
    code = (
        "import time\n"
        "from streamd.runtime.watchdog import Watchdog\n"
        "dog = Watchdog(exit_code=4, poll_s=0.05)\n"
        "with dog.armed(0.3, 'read'):\n"
        "    pass  # finished in time: nothing happens\n"
        "with dog.armed(0.3, 'read'):\n"
        "    time.sleep(30)  # stands in for a native call that never returns\n"
    )
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert out.returncode == 4
    assert time.monotonic() - t0 < 10
    assert "read hung past its deadline" in out.stderr


def test_a_crashing_worker_body_is_logged_redacted_and_exits_1() -> None:
    code = (
        "from streamd.runtime.logs import configure_logging\n"
        "from streamd.runtime.process import run_logged\n"
        "configure_logging('INFO', 'test')\n"
        "def body():\n"
        "    raise ValueError('cannot open rtsp://admin:p@ss/w:rd@cam/s')\n"
        "run_logged(body)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert out.returncode == 1
    assert "worker crashed" in out.stderr and "ValueError" in out.stderr
    assert "rtsp://***@cam/s" in out.stderr and "w:rd" not in out.stderr


@pytest.mark.parametrize(
    ("source_fps", "max_fps"), [(30, 10), (25, 10), (15, 4), (12, 10), (5, 10)]
)
def test_sampler_keeps_at_most_max_fps(source_fps: float, max_fps: float) -> None:
    sampler = Sampler(max_fps)
    rng = random.Random(0)
    times = [i / source_fps + rng.uniform(-0.002, 0.002) for i in range(int(20 * source_fps))]
    kept = [t for t in times if sampler.keep(t)]
    rate = len(kept) / 20.0
    assert rate <= max_fps * 1.02
    assert rate >= min(source_fps, max_fps) * 0.8  # and not far below it either


def test_sampler_restarts_its_grid_after_a_pause() -> None:
    sampler = Sampler(2.0)
    assert [sampler.keep(t) for t in (0.0, 0.25, 0.5)] == [True, False, True]
    # 100 s of silence, then frames again: one kept, no burst to catch up.
    assert [sampler.keep(t) for t in (100.0, 100.1, 100.2, 100.5)] == [True, False, False, True]


@pytest.mark.parametrize(
    ("streams", "cores", "threads"),
    [(1, 16, 4), (4, 16, 4), (8, 16, 2), (25, 16, 1), (100, 16, 1), (1, 2, 2), (12, 2, 1)],
)
def test_decoder_threads_share_the_cores_among_the_streams(
    streams: int, cores: int, threads: int
) -> None:
    assert auto_decode_threads(streams, cores) == threads


@pytest.mark.parametrize(
    ("cpu_max", "cores"), [("max 100000\n", None), ("400000 100000\n", 4), ("50000 100000", 1)]
)
def test_a_containers_cpu_quota_bounds_the_cores(
    tmp_path: Path, cpu_max: str, cores: int | None
) -> None:
    import os

    from streamd.sources.reader import usable_cores

    f = tmp_path / "cpu.max"
    f.write_text(cpu_max)
    affinity = len(os.sched_getaffinity(0))
    assert usable_cores(str(f)) == (affinity if cores is None else min(affinity, cores))
    assert usable_cores(str(tmp_path / "none")) == affinity  # no cgroup v2 file


def _packets_before_first_picture(clip: str, threads: int) -> int:
    with open_source(OpenOptions(clip, threads=threads)) as container:
        stream = container.streams.video[0]
        for fed, packet in enumerate(container.demux(stream), 1):
            if packet.decode():
                return fed
    raise AssertionError("no picture")


def test_the_thread_count_reaches_the_decoder(tmp_path: Path) -> None:
    """ffmpeg's frame threads hold a picture back per extra thread (a camera's delay): 4
    threads give the first picture 3 packets later than 1 thread (B-frame reordering
    holds both back alike)."""
    from streamd.synth import SceneSpec, write_scene

    clip = tmp_path / "c.mp4"
    write_scene(clip, SceneSpec(width=320, height=180, fps=10, seconds=2.0, people=1))
    one = _packets_before_first_picture(str(clip), 1)
    assert _packets_before_first_picture(str(clip), 4) == one + 3


def test_each_camera_process_gets_its_share_of_decoder_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import streamd.sources.reader as reader

    monkeypatch.setattr(reader, "usable_cores", lambda: 16)  # any machine: 16 // 8 = 2
    urls = [f"{{id: s{i}, url: s{i}.mp4}}" for i in range(9)]
    cfg = parse_config(f"streams: [{', '.join(urls[:8])}, {{id: big, url: b.mp4, "
                       "decode_threads: 6}]", env={})  # fmt: skip
    # One decoded in the detector process (as with NVDEC there): not among the CPU decoders.
    on_gpu = cfg.streams[0].model_copy(update={"decode_in": "detector"})
    cfg = cfg.model_copy(update={"streams": [on_gpu, *cfg.streams[1:]]})
    analysis = AnalysisSpec(pipeline=cfg, results="inproc://r", bus="inproc://b",
                            control="inproc://c", view=None, names={0: "x"}, epoch=0)  # fmt: skip
    threads = [source_spec(s, i, "run", "inproc://i", analysis, "INFO").open.threads
               for i, s in enumerate(cfg.streams)]  # fmt: skip
    assert threads[1:] == [2] * 7 + [6]  # 16 cores among 8 camera-decoded streams
    with pytest.raises(ConfigError, match=r"streams\.0\.decode_threads"):
        parse_config("streams: [{id: a, url: a.mp4, decode_threads: 33}]", env={})
