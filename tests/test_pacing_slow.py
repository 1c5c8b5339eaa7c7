"""``realtime: true`` plays a slow stream at its own rate (issue 13).

The pacer used to count any step over 1/30 s + 1 s as a jump, so a 0.5 fps file
(pts 0, 2, 4, ...) was released at 0, 0.033, 0.067 s. It now learns the usual
step from the stream (its nominal rate when known, else the median of its recent
steps); only a step back, or a leap of many usual steps and over a second, is a jump.
"""

from __future__ import annotations

import pytest

from streamd.sources.reader import Pacer

from .test_pacing import released_at, steps

DECODE_S = 0.004


def released_with(pacer_dt: float | None, pts: list[float]) -> list[float]:
    now = 100.0
    pacer = Pacer(clock=lambda: now, nominal_dt=pacer_dt)
    out = []
    for p in pts:
        now += pacer.delay(p)
        out.append(now)
        now += DECODE_S
    return out


@pytest.mark.parametrize("nominal_dt", [None, 2.0, 1 / 30], ids=["unknown", "known", "wrong"])
def test_a_half_fps_stream_is_paced_at_two_seconds_a_frame(nominal_dt: float | None) -> None:
    times = released_with(nominal_dt, [2.0 * k for k in range(12)])
    got = steps(times)
    if nominal_dt == 1 / 30:  # a rate the container got wrong: one step to learn it
        got = got[1:]
    assert got == pytest.approx([2.0] * len(got), abs=1e-6)


def test_a_pts_reset_in_a_slow_stream_still_re_anchors() -> None:
    pts = [2.0 * k for k in range(10)] + [2.0 * k for k in range(10)]  # back to 0
    assert steps(released_at(pts)) == pytest.approx([2.0] * 19, abs=1e-6)


def test_a_leap_of_many_steps_is_a_jump_and_the_rate_goes_on() -> None:
    pts = [2.0 * k for k in range(10)] + [500.0 + 2.0 * k for k in range(10)]
    assert steps(released_at(pts)) == pytest.approx([2.0] * 19, abs=1e-6)


def test_a_pause_of_a_few_steps_in_a_fast_stream_is_kept() -> None:
    pts = [k / 15 for k in range(10)] + [10 / 15 + 0.5 + k / 15 for k in range(5)]
    expected = [1 / 15] * 9 + [1 / 15 + 0.5] + [1 / 15] * 4
    assert steps(released_at(pts)) == pytest.approx(expected, abs=1e-6)
