"""``streamd validate`` and the schema: malformed URLs, missing files, unknown classes,
'did you mean' for unknown keys, and ``streamd --version``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from streamd.config import ConfigError, parse_config


def _problems(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as e:
        parse_config(json.dumps(data))
    return dict(e.value.problems)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("rtsp//cam.local/live", "no ':' after 'rtsp'"),
        ("http//cam/x.mjpg", "no ':' after 'http'"),
        ("rtsp:/cam.local/live", "needs '//'"),
        ("rtsp://user:secret@/live", "has no host"),
        ("rtps://user:secret@cam/live", "unsupported URL scheme 'rtps'"),
        ("udp://239.0.0.1:5000", "unsupported URL scheme 'udp'"),
        ("rtsp://user:secret@cam:99999/live", "its port cannot be read"),
        ("rtsp://user:secret@cam la/live", "its host has a space or a control character"),
        ("rtsp://user:secret@cam:0/live", "port 0 is no camera's"),
    ],
)
def test_a_malformed_url_is_refused_naming_its_key(url: str, reason: str) -> None:
    problems = _problems({"streams": [{"id": "a", "url": "clip.mp4"}, {"id": "b", "url": url}]})
    assert list(problems) == ["streams.1.url"]
    assert reason in problems["streams.1.url"] and "secret" not in problems["streams.1.url"]


def test_well_formed_urls_pass() -> None:
    urls = [
        "rtsp://u:p@cam:554/x",
        "https://cam/x.mjpg",
        "file:clip.mp4",
        "clips/a.mp4",
        "0",
        "file:///srv/clip.mp4",
        "rtsp://[::1]:8554/x",
        "/dev/video0",
    ]
    parse_config(json.dumps({"streams": [{"id": f"s{i}", "url": u} for i, u in enumerate(urls)]}))


def test_unknown_keys_get_the_closest_known_one() -> None:
    problems = _problems(
        {"modle": {}, "model": {"weigths": "x.pt"}, "streams": [{"id": "a", "urll": "x"}]}
    )
    assert problems["modle"] == "unknown key (did you mean 'model'?)"
    assert problems["model.weigths"] == "unknown key (did you mean 'weights'?)"
    assert "did you mean 'url'?" in problems["streams.0.urll"]
    assert _problems({"zzz": 1, "streams": [{"id": "a", "url": "x"}]})["zzz"] == "unknown key"


def _validate(tmp_path: Path, cfg: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "p.yaml"
    path.write_text(json.dumps(cfg))
    return subprocess.run([sys.executable, "-m", "streamd.cli", "validate", str(path)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_validate_names_missing_files(tmp_path: Path) -> None:
    (tmp_path / "here.mp4").write_bytes(b"")
    cfg = {
        "model": {"weights": "models/none.pt"},
        "streams": [{"id": "a", "url": "here.mp4"}, {"id": "b", "url": "file:gone.mp4"}],
    }
    out = _validate(tmp_path, cfg)
    assert out.returncode == 2
    assert "streams.1.url: no such file" in out.stderr and "gone.mp4" in out.stderr
    assert "model.weights: no such file" in out.stderr
    assert "streams.0" not in out.stderr


def test_validate_checks_model_classes(tmp_path: Path, person_model: Path) -> None:
    (tmp_path / "a.mp4").write_bytes(b"")
    streams = [{"id": "a", "url": "a.mp4"}]
    from streamd.validate import model_class_names

    names = model_class_names(person_model)
    assert names
    good = {"weights": str(person_model), "classes": sorted(names)[:1]}
    assert _validate(tmp_path, {"model": good, "streams": streams}).returncode == 0
    bad = {"weights": str(person_model), "classes": ["unicorn"]}
    out = _validate(tmp_path, {"model": bad, "streams": streams})
    assert out.returncode == 2 and "model.classes: ['unicorn'] not in" in out.stderr


def test_validate_checks_the_classes_zones_and_lines_count(
    tmp_path: Path, person_model: Path
) -> None:
    """A zone or line counting a class the model does not detect, or that model.classes
    leaves out, would never fire: refused naming its key."""
    (tmp_path / "a.mp4").write_bytes(b"")
    square = [[0, 0], [10, 0], [10, 10]]

    def stream(zone_classes: list[str], line_classes: list[str]) -> dict[str, Any]:
        line = {"name": "l", "points": [[0, 5], [10, 5]], "classes": line_classes}
        zone = {"name": "z", "polygon": square, "classes": zone_classes}
        return {"id": "a", "url": "a.mp4", "zones": [zone], "lines": [line]}

    weights = str(person_model)
    ok = _validate(tmp_path, {"model": {"weights": weights}, "streams": [stream(["Fall"], [])]})
    assert ok.returncode == 0, ok.stderr
    out = _validate(tmp_path, {"model": {"weights": weights},
                               "streams": [stream(["person"], ["Normal", "car"])]})  # fmt: skip
    assert out.returncode == 2
    assert "streams.0.zones.0.classes: ['person'] not in the model's classes" in out.stderr
    assert "streams.0.lines.0.classes: ['car'] not in the model's classes" in out.stderr
    only = {"weights": weights, "classes": ["Normal"]}
    out = _validate(tmp_path, {"model": only, "streams": [stream(["Fall"], [])]})
    assert out.returncode == 2
    assert "streams.0.zones.0.classes: ['Fall'] not in model.classes ['Normal']" in out.stderr


def test_version_comes_from_the_package_metadata() -> None:
    from importlib.metadata import version

    out = subprocess.run([sys.executable, "-m", "streamd.cli", "--version"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert out.stdout.strip() == f"streamd {version('streamd')}"


def test_a_malformed_url_is_refused_without_quoting_it() -> None:
    """The reason must not repeat the URL's text: it may hold a password from ${ENV}."""
    from streamd.config.urls import url_problem

    reason = url_problem("rtsp://[s3cret-from-env]/cam")
    assert reason is not None and "malformed URL" in reason and "s3cret" not in reason


def test_validate_checks_the_streams_as_changed_at_runtime(tmp_path: Path) -> None:
    """`run` starts the overlay's streams (``<name>.streams.yaml``, saved by the stream
    API); `validate` (the systemd unit's ExecStartPre) checks those, not only the file's."""
    (tmp_path / "a.mp4").write_bytes(b"")
    cfg = {"streams": [{"id": "a", "url": "a.mp4"}]}
    overlay = tmp_path / "p.streams.yaml"
    overlay.write_text("streams: [{id: a, url: a.mp4}, {id: b, urll: a.mp4}]")
    out = _validate(tmp_path, cfg)
    assert out.returncode == 2, out.stdout
    assert "p.streams.yaml" in out.stderr and "streams.1.urll" in out.stderr
    overlay.write_text("streams: [{id: a, url: a.mp4}, {id: b, url: gone.mp4}]")
    out = _validate(tmp_path, cfg)
    assert out.returncode == 2 and "streams.1.url: no such file" in out.stderr
    assert "p.streams.yaml" in out.stderr  # its streams.1, not the file's
    overlay.write_text("streams: [{id: a, url: a.mp4}, {id: b, url: a.mp4}]")
    out = _validate(tmp_path, cfg)
    assert out.returncode == 0, out.stderr
    assert "ok (2 stream(s), as changed at runtime in" in out.stdout


def test_nan_and_every_bad_rule_are_named_as_what_they_are() -> None:
    zone = {
        "name": "z",
        "polygon": [[0, 0], [9, 0], [0, 9]],
        "alert_on": ["entr", "exit", "dwel>=3"],
    }
    stream = {"id": "a", "url": "x.mp4", "max_fps": float("nan"), "zones": [zone]}
    problems = _problems({"streams": [stream]})
    assert problems["streams.0.max_fps"] == "Input should be a finite number"
    assert "unknown rules 'entr', 'dwel>=3'" in problems["streams.0.zones.0.alert_on"]


def test_subscribe_count_must_be_positive() -> None:
    out = subprocess.run([sys.executable, "-m", "streamd.cli", "subscribe", "--count", "0"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2 and "must be 1 or more, not 0" in out.stderr
