"""Source-side pure logic: credential escaping for ffmpeg, the media clock, pacing."""

from __future__ import annotations

import itertools
from urllib.parse import urlsplit

import pytest

from streamd.sources.reader import MediaClock, escape_credentials


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
