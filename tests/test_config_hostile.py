"""Pipeline files under attack, part two (issue 13): ``${ENV}`` through aliases, the
value bound's cost with either YAML parser, key paths for library callers, loopback.

Time and memory bounds here are correctness bounds, generous on purpose.
"""

from __future__ import annotations

import os
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamd.config import ConfigError, load_config, parse_config
from streamd.config import loader as yaml_loader
from streamd.config.loader import MAX_CONFIG_BYTES, MAX_VALUES

STREAMS = "streams: [{id: a, url: x.mp4}]\n"
# 4.8 kB: an anchor holding 1000 ${X}, aliased 200 times (223 MB with X of 1.1 kB).
ENV_BOMB = STREAMS + 'x: &a "' + "${X}" * 1000 + '"\ny: [' + ", ".join(["*a"] * 200) + "]\n"


def test_env_substitution_through_aliases_is_refused_quickly_in_little_memory() -> None:
    assert len(ENV_BOMB) < 5000
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(ConfigError) as e:
            parse_config(ENV_BOMB, env={"X": "x" * 1100})
        took = time.monotonic() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "substitution builds more than" in str(e.value)
    assert took < 5.0, f"took {took:.1f}s"
    assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MiB"


def test_aliases_of_a_substituted_value_share_it_and_load() -> None:
    """The bound counts each distinct value once: aliases cost nothing more."""
    url = "rtsp://${HOST}/" + "p" * 5000
    text = f'streams:\n  - {{id: s0, url: &u "{url}"}}\n' + "".join(
        f"  - {{id: s{i}, url: *u}}\n" for i in range(1, 300)
    )  # 300 x 5 kB substituted is past the budget if every alias built its own copy
    cfg = parse_config(text, env={"HOST": "cam.local"})
    assert len(cfg.streams) == 300
    assert cfg.streams[-1].url == "rtsp://cam.local/" + "p" * 5000


@pytest.fixture(params=["libyaml", "python"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The value bound holds with libyaml's parser and with PyYAML's own (its fallback)."""
    if request.param == "python":
        monkeypatch.setattr(yaml_loader, "_Loader", yaml_loader._PyLoader)
    elif not yaml_loader.yaml.__with_libyaml__:
        pytest.skip("PyYAML without libyaml")
    yield request.param


def test_a_flat_file_just_past_the_value_bound_is_refused_quickly(parser: str) -> None:
    text = "x: [" + ",".join(["0"] * MAX_VALUES) + "]\n"
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=f"more than {MAX_VALUES} values"):
        parse_config(text, env={})
    took = time.monotonic() - t0
    # Measured: 0.3 s with libyaml (1.4 s before, with PyYAML's parser, still the fallback).
    assert took < (3.0 if parser == "libyaml" else 10.0), f"{parser}: {took:.2f}s"


def test_a_large_realistic_pipeline_loads(parser: str) -> None:
    """100 cameras with 4 zones of 20-point polygons each: far inside the bound."""
    poly = ", ".join(f"[{i * 10}, {(i * 37) % 200}]" for i in range(20))
    zones = ", ".join(f"{{name: z{z}, polygon: [{poly}]}}" for z in range(4))
    text = "streams:\n" + "".join(
        f"  - {{id: cam{c}, url: rtsp://10.0.0.{c}/s, zones: [{zones}]}}\n" for c in range(100)
    )
    assert len(text) < MAX_CONFIG_BYTES
    cfg = parse_config(text, env={})
    assert len(cfg.streams) == 100 and len(cfg.streams[99].zones[3].polygon) == 20


def test_libyaml_nesting_bound_reads_as_nested_too_deeply() -> None:
    with pytest.raises(ConfigError, match="nested too deeply"):
        parse_config("x: " + "[" * 5000 + "]" * 5000 + "\n", env={})


def test_load_config_resolves_key_paths_against_the_file_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A library caller gets what the CLI gets: key paths relative to the pipeline file."""
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "pipeline.yaml").write_text(
        STREAMS + "security: {curve: {server_secret: keys/server.key_secret, "
        "authorized_clients: keys/clients}}\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    curve = load_config(folder / "pipeline.yaml").security.curve
    assert curve is not None
    assert curve.server_secret == str(folder / "keys" / "server.key_secret")
    assert curve.authorized_clients == str(folder / "keys" / "clients")


def test_key_paths_expand_the_home_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "pipeline.yaml").write_text(
        STREAMS + "security: {curve: {server_secret: ~/k/server.key_secret, "
        "authorized_clients: ~/k/clients}}\n"
    )
    curve = load_config(tmp_path / "pipeline.yaml").security.curve
    assert curve is not None
    home = os.path.expanduser("~")
    assert curve.server_secret == f"{home}/k/server.key_secret"
    assert curve.authorized_clients == f"{home}/k/clients"
