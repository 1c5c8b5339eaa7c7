"""``realtime: true`` plays a file at its own rate, also across a pts reset or leap.

A looped or spliced MPEG-TS restarts its clock (a resolution change made by
re-encoding one part is the usual cause): pacing by the distance to the first
frame's pts would release the frames after a reset at once (a camera at 38 fps
instead of 15), or hold a leap ahead back for its whole length.
"""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import pytest

from streamd.sources.reader import Pacer

from .daemon import EventLog, start, write_pipeline
from .util import free_port

FPS = 15
DECODE_S = 0.004  # what decoding one frame costs the caller between two delays


def released_at(pts: list[float]) -> list[float]:
    """When each frame goes out, for a caller that sleeps as long as the pacer says."""
    now = 100.0
    pacer = Pacer(clock=lambda: now)
    out = []
    for p in pts:
        now += pacer.delay(p)
        out.append(now)
        now += DECODE_S
    return out


def steps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def run_of(start: float, n: int) -> list[float]:
    return [start + k / FPS for k in range(n)]


# A second MPEG-TS part starts at 1.4 s again; a clock leaps ahead; one restarts at 0.
@pytest.mark.parametrize("restart_at", [1.4, 100.0, 0.0], ids=["ts-part", "leap", "zero"])
def test_pacing_keeps_the_rate_across_a_pts_jump(restart_at: float) -> None:
    times = released_at(run_of(1.4, 30) + run_of(restart_at, 30))
    assert steps(times) == pytest.approx([1 / FPS] * 59, abs=1e-6)


def test_a_short_pause_in_the_stream_is_kept() -> None:
    """A gap within a second (frames the source never sent) is the stream's own time."""
    times = released_at(run_of(0.0, 10) + run_of(10 / FPS + 0.5, 10))
    expected = [1 / FPS] * 9 + [1 / FPS + 0.5] + [1 / FPS] * 9
    assert steps(times) == pytest.approx(expected, abs=1e-6)


def test_a_caller_behind_schedule_is_not_held_back() -> None:
    now = 0.0
    pacer = Pacer(clock=lambda: now)
    assert pacer.delay(0.0) == 0.0
    now = 1.0  # decoding took a second: frame 2 is late, not waited for
    assert pacer.delay(1 / FPS) == 0.0
    assert pacer.delay(None) == 0.0  # no pts: nothing to pace by


def _ts_part(path: Path, size: str, seconds: float) -> None:
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i",
                    f"testsrc=size={size}:rate={FPS}", "-t", str(seconds), "-c:v", "libx264",
                    "-g", str(FPS), "-pix_fmt", "yuv420p", "-f", "mpegts", str(path)],
                   check=True)  # fmt: skip


def test_a_spliced_transport_stream_plays_at_its_rate(tmp_path: Path) -> None:
    """Two MPEG-TS parts of different sizes, one after the other in one file (the pts
    restarts where the second begins): every frame is published, at 15 fps."""
    a, b, spliced = tmp_path / "a.ts", tmp_path / "b.ts", tmp_path / "spliced.ts"
    _ts_part(a, "320x240", 2.0)
    _ts_part(b, "240x160", 3.0)
    spliced.write_bytes(a.read_bytes() + b.read_bytes())
    port = free_port()
    cfg = write_pipeline(tmp_path, Path("unused.pt"), port,
                         [{"id": "cam", "url": str(spliced), "realtime": True}],
                         model={"backend": "null", "null_boxes": 1, "imgsz": 320})  # fmt: skip
    events = EventLog(f"tcp://127.0.0.1:{port}")
    daemon = start(cfg, tmp_path / "daemon.log")
    try:
        ended = events.wait_state("cam", {"ended", "failed"}, 60)
        log = (tmp_path / "daemon.log").read_text()
        assert ended is not None and ended[1]["state"] == "ended", log
    finally:
        daemon.terminate()
        daemon.wait(15)
        events.close()
    dets = [(t, e.payload) for t, e in events.snapshot() if e.topic == "det.cam"]
    (t0, first), (t1, last) = dets[0], dets[-1]
    # Frames read per second of wall time across the splice, dropped ones included.
    assert (last["frame"] - first["frame"]) / (t1 - t0) == pytest.approx(FPS, rel=0.1)
    second = [p["frame"] for _, p in dets if (p["width"], p["height"]) == (240, 160)]
    assert len(second) >= 2 * FPS  # most of the second part was analysed
