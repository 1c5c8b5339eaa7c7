"""Streams changed while the daemon runs: the REST API and SIGHUP reloads.

Real daemon, real sockets, the ``null`` backend (instant boxes, so tracks are
stable) and small looping clips read in real time, so cameras keep streaming
while the test changes the others.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import psutil
import pytest

from .daemon import EventLog, running_daemon, write_pipeline
from .util import free_port, shm_segments

NULL_MODEL = {"backend": "null", "null_boxes": 3, "imgsz": 320}
WHOLE_FRAME = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from streamd.synth import SceneSpec, write_scene

    video = tmp_path_factory.mktemp("runtime") / "small.mp4"
    write_scene(video, SceneSpec(width=320, height=180, fps=15, seconds=2.0, people=1))
    return video


def _live(sid: str, url: Path, **extra: Any) -> dict[str, Any]:
    return {"id": sid, "url": str(url), "loop": True, "realtime": True, **extra}


@functools.cache
def _listen(cfg: Path) -> str:
    """Read once: a test may break the file later (SIGHUP)."""
    return str(json.loads(cfg.read_text())["http"]["listen"])


def _api(cfg: Path, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    listen = _listen(cfg)
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://{listen}{path}", data=data, method=method)
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=40) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def _pids(cfg: Path) -> dict[str, int | None]:
    with urllib.request.urlopen(f"http://{_listen(cfg)}/status", timeout=5) as r:
        return {sid: row["pid"] for sid, row in json.load(r)["streams"].items()}


def _wait_streaming(log: EventLog, sid: str, since: float = 0.0) -> None:
    assert log.wait_state(sid, {"streaming"}, 30, since) is not None, f"{sid} never streamed"


def _det(log: EventLog, sid: str, since: float = 0.0) -> list[dict[str, Any]]:
    return log.payloads(f"det.{sid}", since)


def _assert_no_det_gaps(log: EventLog, sid: str) -> None:
    by_epoch: dict[int, list[int]] = defaultdict(list)
    for p in _det(log, sid):
        by_epoch[p["epoch"]].append(p["seq"])
    for seqs in by_epoch.values():
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"{sid}: a gap in det seq"


def _track_ids(payloads: list[dict[str, Any]]) -> set[int]:
    return {o["track_id"] for p in payloads for o in p["objects"] if o["track_id"] is not None}


def test_api_adds_updates_rezones_and_removes_one_stream_and_a_restart_keeps_it(
    clip: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.mp4"
    shutil.copy(clip, other)
    streams = [_live("a", clip), _live("b", clip)]
    cfg = write_pipeline(tmp_path, Path("unused.pt"), free_port(), streams, model=NULL_MODEL)
    with running_daemon(cfg, ("a", "b")) as d:
        log = d.log

        # Add: the others go on, the new one streams.
        code, body = _api(cfg, "POST", "/api/streams", _live("c", clip))
        assert code == 201 and body["id"] == "c"
        _wait_streaming(log, "c")
        assert _api(cfg, "POST", "/api/streams", _live("c", clip))[0] == 409
        # What a web page can make a browser send cross-origin unasked: refused.
        forged = urllib.request.Request(
            f"http://{_listen(cfg)}/api/streams", method="POST",
            data=json.dumps(_live("d", clip)).encode(), headers={"Content-Type": "text/plain"},
        )  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(forged, timeout=10)
        assert refused.value.code == 415
        # A page same-origin by DNS rebinding: its own name as Host (421), or, via a
        # loopback name, its Origin on a change (403); neither adds the stream.
        for headers, code in (({"Host": "rebind.attacker.example"}, 421),
                              ({"Origin": "http://rebind.attacker.example"}, 403)):  # fmt: skip
            rebound = urllib.request.Request(
                f"http://{_listen(cfg)}/api/streams", method="POST",
                data=json.dumps(_live("d", clip)).encode(),
                headers={"Content-Type": "application/json", **headers},
            )  # fmt: skip
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(rebound, timeout=10)
            assert refused.value.code == code
        peek = urllib.request.Request(f"http://{_listen(cfg)}/status",
                                      headers={"Host": "rebind.attacker.example:8090"})  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(peek, timeout=10)
        assert refused.value.code == 421
        assert "d" not in {s["id"] for s in _api(cfg, "GET", "/api/streams")[1]["streams"]}
        assert "d" not in _pids(cfg)

        # A bad body: 422 naming the key, nothing changes.
        code, body = _api(cfg, "POST", "/api/streams", {"id": "d", "buffer": 1})
        assert code == 422
        assert {k for k, _ in body["problems"]} == {"url", "buffer"}
        code, body = _api(cfg, "PUT", "/api/streams/a", _live("a", clip, drop_policy="nope"))
        assert code == 422 and body["problems"][0][0] == "drop_policy"
        # As the file's checks: a missing file is refused, a typo gets its hint; and
        # clips.dir (a folder the daemon makes private and prunes) only from the file.
        code, body = _api(cfg, "POST", "/api/streams", _live("d", tmp_path / "nope.mp4"))
        assert code == 422 and body["problems"][0][0] == "url"
        assert "no such file" in body["problems"][0][1]
        code, body = _api(cfg, "POST", "/api/streams", _live("d", clip, max_fsp=5))
        assert code == 422 and "did you mean 'max_fps'?" in body["problems"][0][1]
        elsewhere = {"enabled": True, "dir": str(tmp_path / "any-folder")}
        code, body = _api(cfg, "POST", "/api/streams", _live("d", clip, clips=elsewhere))
        assert code == 422 and body["problems"] == [
            ["clips.dir", "set in the pipeline file only, not from a request"]
        ]
        assert not (tmp_path / "any-folder").exists()
        listed = _api(cfg, "GET", "/api/streams")[1]["streams"]
        assert [s["id"] for s in listed] == ["a", "b", "c"]
        assert _api(cfg, "DELETE", "/api/streams/zz")[0] == 404

        # A new URL: only that stream's process restarts.
        pids = _pids(cfg)
        epoch_a = _det(log, "a")[-1]["epoch"]
        t_put = time.time()
        code, body = _api(cfg, "PUT", "/api/streams/b", _live("b", other))
        assert code == 200 and body["url"] == str(other)
        _wait_streaming(log, "b", t_put)
        after = _pids(cfg)
        assert after["b"] != pids["b"] and after["a"] == pids["a"] and after["c"] == pids["c"]
        assert _det(log, "a")[-1]["epoch"] == epoch_a

        # A zone moved in: same process, same tracks, the zone counts.
        ids_before = _track_ids(_det(log, "a")[-10:])
        t_zone = time.time()
        zone = {"name": "all", "normalized": True, "polygon": WHOLE_FRAME, "debounce_s": 0.0}
        code, _ = _api(cfg, "PUT", "/api/streams/a", _live("a", clip, zones=[zone]))
        assert code == 200
        time.sleep(2.5)  # two heartbeats
        assert _pids(cfg)["a"] == pids["a"]
        assert _track_ids(_det(log, "a", t_zone + 0.5)) & ids_before
        ends = [p for p in log.payloads("track.a", t_zone) if p["event"] == "end"]
        assert ends == [], "moving a zone ended tracks"
        beats = log.payloads("heartbeat", t_zone + 1.0)
        assert beats and "all" in beats[-1]["streams"]["a"]["zones"]
        assert [p["epoch"] for p in _det(log, "a", t_zone)][-1] == epoch_a

        # Remove: its process and its shared memory go, the stream is said ended/removed.
        pid_c = _pids(cfg)["c"]
        assert pid_c is not None
        t_del = time.time()
        assert _api(cfg, "DELETE", "/api/streams/c") == (200, {"removed": "c"})
        assert not psutil.pid_exists(pid_c) or psutil.Process(pid_c).status() == "zombie"
        assert not [n for n in shm_segments() if f"_{pid_c}_" in n]
        hit = log.wait_state("c", {"ended"}, 5, t_del)
        assert hit is not None and hit[1]["reason"] == "removed"
        assert "c" not in _pids(cfg)
        for sid in ("a", "b"):
            _assert_no_det_gaps(log, sid)
    assert log.gaps == 0

    # A restart comes back as the API left it.
    assert cfg.with_name("pipeline.streams.yaml").exists()
    with running_daemon(cfg, ("a", "b"), log_file=tmp_path / "daemon2.log"):
        listed = _api(cfg, "GET", "/api/streams")[1]["streams"]
        by_id = {s["id"]: s for s in listed}
        assert list(by_id) == ["a", "b"]
        assert by_id["b"]["url"] == str(other)
        assert [z["name"] for z in by_id["a"]["zones"]] == ["all"]
        assert _api(cfg, "GET", "/api/streams/a")[1]["zones"][0]["name"] == "all"
        spec = _api(cfg, "GET", "/api/openapi.json")[1]
        assert "/api/streams/{id}" in spec["paths"]
        assert "url" in spec["components"]["schemas"]["StreamConfig"]["properties"]


def test_sighup_applies_the_file_difference_and_refuses_a_broken_file(
    clip: Path, tmp_path: Path
) -> None:
    cfg = write_pipeline(tmp_path, Path("unused.pt"), free_port(),
                         [_live("a", clip), _live("b", clip)], model=NULL_MODEL)  # fmt: skip
    with running_daemon(cfg, ("a", "b")) as d:
        log, daemon = d.log, d.proc
        pids = _pids(cfg)
        data = json.loads(cfg.read_text())
        data["streams"] = [_live("a", clip), _live("c", clip)]
        data["batching"] = {"max_batch": 2, "max_wait_ms": 20}  # needs a restart
        cfg.write_text(json.dumps(data))
        t_hup = time.time()
        daemon.send_signal(signal.SIGHUP)
        _wait_streaming(log, "c", t_hup)
        hit = log.wait_state("b", {"ended"}, 10, t_hup)
        assert hit is not None and hit[1]["reason"] == "removed"
        assert _pids(cfg)["a"] == pids["a"]
        assert [s["id"] for s in _api(cfg, "GET", "/api/streams")[1]["streams"]] == ["a", "c"]

        cfg.write_text("streams: [{id: a, url: }")  # broken
        daemon.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert daemon.poll() is None
        assert [s["id"] for s in _api(cfg, "GET", "/api/streams")[1]["streams"]] == ["a", "c"]
        assert _pids(cfg)["a"] == pids["a"]
        # A hangup to the whole group (a closed terminal): only the supervisor reloads
        # (the broken file again: refused); no worker dies of it.
        before = _pids(cfg)
        os.killpg(daemon.pid, signal.SIGHUP)
        time.sleep(1.5)
        assert daemon.poll() is None and _pids(cfg) == before
        _assert_no_det_gaps(log, "a")
    text = (tmp_path / "daemon.log").read_text()
    assert "batching changed: needs a restart" in text
    assert "reload refused" in text


def test_diff_restarts_on_source_options_and_rezones_in_place(tmp_path: Path) -> None:
    from streamd.config import StreamConfig
    from streamd.control.streams import diff_streams

    zone = {"name": "z", "polygon": [[0, 0], [10, 0], [10, 10]]}
    old = [StreamConfig(id="a", url="rtsp://h/a"), StreamConfig(id="b", url="rtsp://h/b"),
           StreamConfig(id="c", url="rtsp://h/c")]  # fmt: skip
    new = [
        StreamConfig.model_validate({"id": "a", "url": "rtsp://h/a", "zones": [zone]}),
        StreamConfig(id="b", url="rtsp://h/b2"),
        StreamConfig(id="d", url="rtsp://h/d"),
    ]
    diff = diff_streams(old, new)
    assert [s.id for s in diff.regions] == ["a"]
    assert [s.id for s in diff.restarted] == ["b"]
    assert [s.id for s in diff.added] == ["d"] and diff.removed == ("c",)
    assert not diff_streams(new, new)


def test_overlay_file_round_trips_and_a_bad_one_names_its_key(clip: Path, tmp_path: Path) -> None:
    from streamd.config import ConfigError, StreamConfig, load_config
    from streamd.control.streams import StreamsFile

    cfg_path = write_pipeline(tmp_path, Path("unused.pt"), free_port(), [_live("a", clip)])
    cfg = load_config(cfg_path)
    overlay = StreamsFile(cfg_path)
    assert overlay.apply(cfg) == cfg  # no overlay yet
    streams = [*cfg.streams, StreamConfig(id="b", url="rtsp://user:pw@h/b")]
    overlay.save([s.model_dump(mode="json", exclude_defaults=True) for s in streams])
    assert overlay.path == tmp_path / "pipeline.streams.yaml"
    assert overlay.path.stat().st_mode & 0o077 == 0  # URLs may hold passwords
    assert overlay.apply(cfg).streams == streams
    assert not list(tmp_path.glob("*.tmp"))
    overlay.path.write_text("streams: [{id: a, url: x.mp4, buffer: 1}]")
    with pytest.raises(ConfigError) as err:
        overlay.apply(cfg)
    assert err.value.problems[0][0] == "streams.0.buffer"
    overlay.remove()
    assert not overlay.path.exists()


def test_under_systemd_the_overlay_lives_in_the_state_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/etc is read-only under the shipped unit (ProtectSystem=strict): runtime changes
    are kept in $STATE_DIRECTORY instead."""
    from streamd.control.streams import StreamsFile

    state = tmp_path / "state"
    monkeypatch.setenv("STATE_DIRECTORY", f"{state}:{tmp_path / 'other'}")
    assert StreamsFile(tmp_path / "etc" / "front.yaml").path == state / "front.streams.yaml"
    monkeypatch.delenv("STATE_DIRECTORY")
    assert (
        StreamsFile(tmp_path / "etc" / "front.yaml").path == tmp_path / "etc" / "front.streams.yaml"
    )
