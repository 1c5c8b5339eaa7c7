"""Settings and checks shared by the live-source tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .daemon import EventLog

STALL_S = 2.0
OPEN_S = 3.0
MAX_BACKOFF_S = 2.0
LIVE: dict[str, Any] = {
    "stall_timeout_s": STALL_S,
    "open_timeout_s": OPEN_S,
    "reconnect": {"initial_s": 0.5, "max_s": MAX_BACKOFF_S},
}
PASSWORD = "p@ss/w:rd"


def is_det(stream: str, since: float = 0.0) -> Any:
    return lambda t, e: e.topic == f"det.{stream}" and t >= since


def reference_stream(clip: Path) -> dict[str, Any]:
    # A paced file at the clip's 4 fps: its analysed rate is the yardstick.
    return {"id": "other", "url": str(clip), "loop": True, "realtime": True}


def daemon_log(env: dict[str, Any]) -> str:
    return str((env["tmp"] / "daemon.log").read_text(errors="replace"))


def assert_rate_steady(
    log: EventLog, base: tuple[float, float], windows: list[tuple[float, float]]
) -> None:
    ref = log.rate("det.other", *base)
    assert ref > 2.0, f"reference stream too slow to compare: {ref:.2f}/s"
    rates = [log.rate("det.other", t0, t1) for t0, t1 in windows]
    print(f"reference stream: {ref:.2f}/s baseline, then " + ", ".join(f"{r:.2f}" for r in rates))
    for r in rates:
        assert abs(r - ref) <= 0.2 * ref, f"reference rate {r:.2f}/s vs {ref:.2f}/s baseline"
