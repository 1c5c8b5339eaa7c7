"""Pipeline files are read within bounds (issue 13): size, alias expansion, nesting.

The time bounds here are correctness bounds (before the limits an alias bomb
ran past 120 s and 2 GB), not benchmarks: they are generous on purpose.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamd.config import ConfigError, load_config, parse_config
from streamd.config.loader import MAX_CONFIG_BYTES, MAX_VALUES

# 9 levels of 9 aliases: 342 bytes that expand to 9^9 (387 million) strings.
BOMB = "streams: [{id: a, url: x.mp4}]\n" + "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9 if prev else ['lol'] * 9)}]\n"
    for prev, name in zip(["", *"abcdefgh"], "abcdefghi", strict=True)
)


def refused(text: str) -> tuple[ConfigError, float]:
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as e:
        parse_config(text, env={})
    return e.value, time.monotonic() - t0


def test_an_alias_bomb_is_refused_at_once_and_ordinary_aliases_still_load(
    tmp_path: Path,
) -> None:
    assert len(BOMB) < 500
    err, took = refused(BOMB)
    assert took < 5.0, f"took {took:.1f}s"
    assert f"more than {MAX_VALUES} values" in str(err) and "alias" in str(err)
    path = tmp_path / "pipeline.yaml"
    # Anchors sit inside the streams: the schema has no spare top-level key for them.
    path.write_text(
        """
streams:
  - id: a
    url: a.mp4
    zones: [{name: door, polygon: &door [[0, 0], [100, 0], [100, 100], [0, 100]],
             <<: &region {debounce_s: 0.5, min_conf: 0.3}}]
  - id: b
    url: b.mp4
    zones: [{name: door, polygon: *door, <<: *region, alert_on: [enter]}]
"""
    )
    cfg = load_config(path)
    a, b = cfg.streams
    assert a.zones[0].polygon == b.zones[0].polygon and len(b.zones[0].polygon) == 4
    assert a.zones[0].debounce_s == b.zones[0].debounce_s == 0.5


def test_a_recursive_alias_is_refused() -> None:
    err, _ = refused("streams: [{id: a, url: x.mp4}]\nloop: &loop [*loop]\n")
    assert "recursive alias" in str(err)


def test_deep_nesting_is_refused_not_a_traceback() -> None:
    err, took = refused("x: " + "[" * 5000 + "]" * 5000 + "\n")
    assert took < 5.0 and "nested too deeply" in str(err)


def test_a_flat_file_of_many_values_stops_early() -> None:
    text = "x: [" + ",".join(["0"] * (MAX_CONFIG_BYTES // 2 - 8)) + "]\n"
    assert len(text) <= MAX_CONFIG_BYTES
    err, took = refused(text)
    assert took < 10.0 and f"more than {MAX_VALUES} values" in str(err)


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with big.open("wb") as f:
        f.write(b"streams: [{id: a, url: x.mp4}]\n")
        f.truncate(50 * 1024 * 1024)  # 50 MB (sparse): reading it all would show in the time
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as e:
        load_config(big)
    assert time.monotonic() - t0 < 1.0
    assert f"{50 * 1024 * 1024} bytes" in str(e.value)
    assert f"limit for a pipeline file is {MAX_CONFIG_BYTES} bytes" in str(e.value)


def test_a_file_that_is_not_utf8_is_refused_with_a_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"streams: [{id: a, url: \xff.mp4}]\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(bad)


def test_validate_refuses_the_bomb_with_the_message(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    t0 = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "streamd.cli", "validate", str(bomb)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert time.monotonic() - t0 < 20.0
    assert done.returncode == 2
    assert f"{bomb}: <root>: more than {MAX_VALUES} values" in done.stderr
