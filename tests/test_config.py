"""Pipeline validation: every refusal names the key and the reason."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from streamd.config import ConfigError, load_config, parse_config, source_kind

GOOD = """
model: {weights: yolo11n.pt, imgsz: 320}
streams:
  - {id: a, url: "rtsp://u:p@10.0.0.5/s"}
  - {id: b, url: clips/x.mp4, loop: true}
"""


def problems(text: str, env: dict[str, str] | None = None) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, env=env or {})
    return info.value.problems


def test_good_config_parses_with_defaults() -> None:
    cfg = parse_config(GOOD, env={})
    assert [s.id for s in cfg.streams] == ["a", "b"]
    assert cfg.model.imgsz == 320 and cfg.batching.max_batch == 8
    assert cfg.streams[0].effective_drop_policy == "latest"  # live
    assert cfg.streams[1].effective_drop_policy == "block"  # file read as fast as possible


def test_unknown_key_is_named() -> None:
    assert problems(GOOD + "\nbatching: {max_bach: 4}\n") == [
        ("batching.max_bach", "unknown key (did you mean 'max_batch'?)")
    ]


def test_wrong_type_is_named() -> None:
    ((path, reason),) = problems(GOOD.replace("imgsz: 320", "imgsz: big"))
    assert path == "model.imgsz" and "integer" in reason


def test_missing_field_is_named() -> None:
    assert problems("streams:\n  - {id: a}\n") == [("streams.0.url", "required key is missing")]


def test_no_streams_refused() -> None:
    ((path, _),) = problems("model: {imgsz: 320}\n")
    assert path == "streams"


def test_duplicate_stream_ids_refused() -> None:
    ((path, reason),) = problems("streams:\n  - {id: a, url: x.mp4}\n  - {id: a, url: y.mp4}\n")
    assert path == "streams" and "duplicate stream id 'a'" in reason


def test_duplicate_yaml_keys_refused() -> None:
    ((path, reason),) = problems("streams: []\nstreams:\n  - {id: a, url: x}\n")
    assert path == "line 2" and "duplicate key 'streams'" in reason


@pytest.mark.parametrize(
    "tag", ["!!python/object/apply:os.system ['echo pwned']", "!!python/name:os.system"]
)
def test_non_data_yaml_tags_refused(tag: str) -> None:
    ((_, reason),) = problems(f"streams:\n  - id: a\n    url: {tag}\n")
    assert "YAML tags that are not plain data" in reason


def test_bad_stream_id_and_ranges() -> None:
    got = dict(problems("batching: {max_batch: 0}\nstreams:\n  - {id: 'a b', url: x}\n"))
    assert set(got) == {"batching.max_batch", "streams.0.id"}


def test_env_substitution_and_missing_variable() -> None:
    text = 'streams:\n  - {id: a, url: "rtsp://${CAM_USER}:${CAM_PASS}@h/s"}\n'
    cfg = parse_config(text, env={"CAM_USER": "bob", "CAM_PASS": "p@ss/w:rd"})
    assert cfg.streams[0].url == "rtsp://bob:p@ss/w:rd@h/s"
    assert problems(text, env={"CAM_USER": "bob"}) == [
        ("streams.0.url", "environment variable CAM_PASS is not set")
    ]
    assert (
        parse_config('streams: [{id: a, url: "${NOPE:-x.mp4}"}]', env={}).streams[0].url == "x.mp4"
    )


def test_error_messages_do_not_echo_passwords() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config('streams: [{id: a, url: "rtsp://u:s3cr3t@h/s", loop: maybe}]', env={})
    assert "s3cr3t" not in str(info.value)


def test_relative_paths_resolve_against_the_file(tmp_path: Path) -> None:
    (tmp_path / "w.pt").write_bytes(b"x")
    f = tmp_path / "p.yaml"
    f.write_text("model: {weights: w.pt}\nstreams: [{id: a, url: file:clips/x.mp4}]\n")
    cfg = load_config(f)
    assert cfg.model.weights == str(tmp_path / "w.pt")
    assert cfg.streams[0].url == str(tmp_path / "clips" / "x.mp4")


def run_validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamd.cli", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_validate_command_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "x.mp4").write_bytes(b"")  # validate checks that files exist
    ok = run_validate(good)
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD + "\npublish: {hwm: -1, endpont: x}\n")
    res = run_validate(bad)
    assert res.returncode == 2
    assert "publish.hwm" in res.stderr and "publish.endpont: unknown key" in res.stderr
    missing = run_validate(tmp_path / "nope.yaml")
    assert missing.returncode == 2 and "cannot read file" in missing.stderr


def test_demo_pipeline_is_valid() -> None:
    cfg = load_config(Path(__file__).resolve().parents[1] / "pipelines" / "demo.yaml")
    assert {s.id for s in cfg.streams} == {"lobby", "street"}


@pytest.mark.parametrize(
    ("stream", "key", "reason"),
    [
        ("{id: a, url: x.mp4, transport: udp}", "streams.0.transport", "rtsp sources only"),
        ("{id: a, url: rtsp://cam/s, loop: true}", "streams.0.loop", "file sources only"),
        ("{id: a, url: rtsp://cam/s, width: 640}", "streams.0.width", "webcam sources only"),
        ('{id: a, url: "0", width: 640}', "streams.0", "width and height go together"),
        ("{id: a, url: x.mp4, stall_timeout_s: 0}", "streams.0.stall_timeout_s", "greater than 0"),
        (
            "{id: a, url: rtsp://c/s, reconnect: {initial_s: 5, max_s: 1}}",
            "streams.0.reconnect",
            "max_s must be >= initial_s",
        ),
        (
            "{id: a, url: rtsp://c/s, reconnect: {max_attempts: -2}}",
            "streams.0.reconnect.max_attempts",
            "greater than or equal to -1",
        ),
    ],
)
def test_source_options_are_checked_per_kind(stream: str, key: str, reason: str) -> None:
    ((path, why),) = problems(f"streams:\n  - {stream}\n")
    assert path == key and reason in why


def test_source_options_accepted_where_they_apply() -> None:
    cfg = parse_config(
        """
http: {listen: "[::1]:9000"}
supervisor: {max_restarts: 3, restart_window_s: 30}
streams:
  - {id: cam, url: "rtsps://u:p@cam/s", transport: udp, stall_timeout_s: 3,
     reconnect: {initial_s: 0.5, max_s: 10, max_attempts: -1}}
  - {id: desk, url: "0", width: 1280, height: 720, fps: 30}
  - {id: mjpeg, url: "http://cam/video.mjpg", on_corrupt: conceal}
""",
        env={},
    )
    cam, desk, mjpeg = cfg.streams
    assert (source_kind(cam.url), cam.transport, cam.reconnect.max_s) == ("rtsp", "udp", 10)
    assert (source_kind(desk.url), desk.width, desk.fps) == ("webcam", 1280, 30)
    assert (source_kind(mjpeg.url), mjpeg.on_corrupt, mjpeg.effective_drop_policy) == (
        "http",
        "conceal",
        "latest",
    )
    assert cfg.http.listen == "[::1]:9000" and cfg.supervisor.max_restarts == 3


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("http: {listen: localhost}", "http.listen"),
        ("publish: {endpoint: 'inproc://events'}", "publish.endpoint"),
        ("supervisor: {max_restarts: -1}", "supervisor.max_restarts"),
    ],
)
def test_global_sections_are_checked(section: str, key: str) -> None:
    assert [p for p, _ in problems(GOOD + section + "\n")] == [key]


def test_daemon_refuses_a_taken_http_port_before_starting_anything(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = tmp_path / "p.yaml"
        cfg.write_text(
            f"http: {{listen: '127.0.0.1:{port}'}}\n"
            f"model: {{weights: {tmp_path / 'never-loaded.pt'}}}\n"
            "streams: [{id: a, url: x.mp4}]\n"
        )
        out = subprocess.run(
            [sys.executable, "-m", "streamd.cli", "run", str(cfg)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 2
    assert f"http.listen 127.0.0.1:{port}" in out.stderr and "in use" in out.stderr
    assert "inference" not in out.stderr  # refused before the model was touched
