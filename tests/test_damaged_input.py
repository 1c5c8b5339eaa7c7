"""Damaged and changing input: corrupt H.264, a truncated file, a resolution change.

Corrupt data is skipped and counted (``decode_errors``), never fatal; every
good frame is still analysed; a new resolution gets a new frame ring.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .daemon import EventLog, start, stop_and_check_clean, write_pipeline
from .live import daemon_log

pytestmark = pytest.mark.e2e


def ffmpeg(*args: str) -> None:
    exe = shutil.which("ffmpeg")
    assert exe, "ffmpeg missing: `make test` installs it (make system-deps)"
    subprocess.run([exe, "-v", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory, scene: tuple[Path, Path]) -> dict[str, Path]:
    from streamd.synth import SceneSpec, write_scene

    video, _ = scene  # 60 frames, 640x360
    out = tmp_path_factory.mktemp("damaged")
    # Random bytes flipped (about 1 in 300) in every 6th packet, key frames spared:
    # damage that a lossy link does, which leaves good frames to find.
    noise = r"noise=amount=if(key\,0\,if(eq(mod(n\,6)\,3)\,300\,0))"
    ffmpeg("-i", str(video), "-c", "copy", "-bsf:v", noise, str(out / "noisy.mp4"))
    # Index first (faststart), then cut the file at 60%: a download that died.
    ffmpeg("-i", str(video), "-c", "copy", "-movflags", "+faststart", str(out / "full.mp4"))
    data = (out / "full.mp4").read_bytes()
    (out / "truncated.mp4").write_bytes(data[: int(len(data) * 0.6)])
    # 640x360 then 480x270 in one transport stream, as when a camera is reconfigured.
    write_scene(out / "small.mp4", SceneSpec(width=480, height=270, fps=15, seconds=2.0))
    ffmpeg("-i", str(video), "-c", "copy", "-f", "mpegts", str(out / "a.ts"))
    ffmpeg("-i", str(out / "small.mp4"), "-c", "copy", "-f", "mpegts", str(out / "b.ts"))
    (out / "resized.ts").write_bytes((out / "a.ts").read_bytes() + (out / "b.ts").read_bytes())
    return {
        "noisy": out / "noisy.mp4",
        "truncated": out / "truncated.mp4",
        "resized": out / "resized.ts",
    }


def ended(log: EventLog, stream: str) -> dict[str, Any]:
    hit = log.wait_state(stream, {"ended", "failed"}, 120)
    assert hit is not None, f"{stream} never finished"
    return hit[1]


def test_corrupt_truncated_and_resized_input_is_survived(
    person_model: Path, damaged: dict[str, Path], run_env: dict[str, Any]
) -> None:
    log: EventLog = run_env["log"]
    cfg = write_pipeline(
        run_env["tmp"],
        person_model,
        run_env["port"],
        [{"id": name, "url": str(path)} for name, path in damaged.items()],  # block: no drops
    )
    run_env["daemon"] = daemon = start(cfg, run_env["tmp"] / "daemon.log")
    done = {name: ended(log, name) for name in damaged}
    assert log.wait_for(lambda _t, e: e.topic == "heartbeat", 5, since=0)
    stop_and_check_clean(daemon, signal.SIGTERM, run_env["shm"])
    assert "Traceback" not in daemon_log(run_env)

    for name, status in done.items():
        dets = log.payloads(f"det.{name}")
        counters = status["counters"]
        print(f"{name}: {status['state']} {counters} analysed={len(dets)}")
        assert status["state"] == "ended", (name, status)
        # block policy: every frame that decoded was analysed, in order.
        assert len(dets) == counters["decoded"] > 0
        assert [d["frame"] for d in dets] == list(range(len(dets)))
        # People are still found in the frames that survived.
        with_people = sum(1 for d in dets if d["objects"])
        assert with_people >= 0.8 * len(dets), f"{name}: {with_people}/{len(dets)}"

    noisy = done["noisy"]["counters"]
    assert noisy["decode_errors"] >= 3 and noisy["decoded"] >= 30
    truncated = done["truncated"]["counters"]
    assert truncated["decode_errors"] >= 1 and 20 <= truncated["decoded"] < 60

    sizes = [(d["width"], d["height"]) for d in log.payloads("det.resized")]
    assert sizes.count((640, 360)) == 60 and sizes.count((480, 270)) == 30
    assert sizes == sorted(sizes, reverse=True)  # all of the first size, then the second
    # At most the splice itself (a cut packet where the two streams meet) counts as damaged.
    assert done["resized"]["counters"]["decode_errors"] <= 1
