"""Sharding without a daemon: the rendezvous hash (stable, and moving only what it must
when the count grows), the ``shard`` section's errors, the loader keeping an instance's
streams, ``streamd shards`` / ``validate --shard``, the API refusing another shard's
stream, and the fleet's status table and event order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from streamd.cli import STATUS_COLUMNS, main, status_exit_code, status_row
from streamd.config import ConfigError, load_config, parse_config
from streamd.config.shard import assignment, shard_of
from streamd.control.admin import AdminError
from streamd.control.streams import StreamChanges
from streamd.fleet.events import FleetEvent, FleetOrder
from streamd.fleet.status import InstanceStatus, fleet_exit_code, format_fleet

IDS = [f"camera-{i:04d}" for i in range(600)]


def test_the_hash_is_stable_across_processes_and_versions() -> None:
    # Pinned: a change of hash would move every camera of every fleet at its next start.
    got = assignment(["front-door", "lobby", "gate", "cam-1", "cam-2"], 4)
    assert got == {"front-door": 1, "lobby": 3, "gate": 2, "cam-1": 2, "cam-2": 0}
    assert all(shard_of(s, 1) == 0 for s in IDS[:20])


def test_growing_the_fleet_moves_only_what_rendezvous_hashing_says() -> None:
    old, new = assignment(IDS, 3), assignment(IDS, 4)
    moved = {s for s in IDS if old[s] != new[s]}
    # Only cameras whose new top shard is the new one move; nothing moves among 0..2.
    assert moved == {s for s in IDS if new[s] == 3}
    assert 0.18 < len(moved) / len(IDS) < 0.32  # about a quarter
    # Shrinking back moves the same ones back, and only them.
    assert assignment(IDS, 3) == old
    sizes = [sum(1 for v in old.values() if v == k) for k in range(3)]
    assert min(sizes) > 150  # balanced enough: 200 each on average


def _pipeline(shard: str, env: dict[str, str] | None = None) -> str:
    streams = "\n".join(f"  - {{id: {s}, url: 'rtsp://h/{s}'}}" for s in IDS[:12])
    return f"model: {{backend: 'null'}}\n{shard}\nstreams:\n{streams}\n"


@pytest.mark.parametrize(
    ("shard", "env", "key", "why"),
    [
        ("shard: {index: 3, count: 3}", {}, "shard.index", "not below shard.count 3"),
        ("shard: {index: 0, count: 0}", {}, "shard.count", "greater than or equal to 1"),
        ("shard: {index: web, count: 2}", {}, "shard.index", "StatefulSet pod name"),
        ("shard: {index: 1, count: 2, replicas: 2}", {}, "shard.replicas", "unknown key"),
        ("shard: {count: 2}", {}, "shard.index", "required key is missing"),
        ("shard: {index: '${POD_NAME}', count: 2}", {}, "shard.index", "POD_NAME is not set"),
        ("shard: {index: '${POD_NAME}', count: 2}", {"POD_NAME": "streamd-7"}, "shard.index",
         "7 is not below"),
    ],
)  # fmt: skip
def test_a_bad_shard_section_names_the_key(
    shard: str, env: dict[str, str], key: str, why: str
) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(_pipeline(shard), env=env)
    assert any(k == key and why in reason for k, reason in e.value.problems), e.value.problems


def test_the_index_comes_from_a_pod_name_or_a_number() -> None:
    for value, index in (("streamd-2", 2), ("cams.example-10", 10), ("1", 1)):
        cfg = parse_config(_pipeline("shard: {index: '${P}', count: 11}"), env={"P": value})
        assert cfg.shard is not None and cfg.shard.index == index


def test_an_instance_loads_its_shards_streams_and_refuses_an_empty_one(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(_pipeline("shard: {index: 1, count: 3}"))
    cfg = load_config(path)
    assert [s.id for s in cfg.streams] == [s for s in IDS[:12] if shard_of(s, 3) == 1]
    assert len(load_config(path, all_shards=True).streams) == 12
    empty = [k for k in range(40) if k not in assignment(IDS[:12], 40).values()]
    path.write_text(_pipeline(f"shard: {{index: {empty[0]}, count: 40}}"))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert e.value.problems[0][0] == "shard" and "owns none" in e.value.problems[0][1]


def test_shards_and_validate_show_the_assignment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(_pipeline("shard: {index: 0, count: 3}"))
    assert main(["shards", str(path), "--count", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"count": 4, "streams": assignment(IDS[:12], 4)}
    assert main(["shards", str(path), "--count", "4"]) == 0
    out = capsys.readouterr().out
    moving = sum(1 for s in IDS[:12] if shard_of(s, 3) != shard_of(s, 4))
    assert f"3 -> 4 shards: {moving} of 12 stream(s) move" in out
    assert main(["validate", str(path), "--shard", "2/3"]) == 0
    out = capsys.readouterr().out
    mine = [s for s in IDS[:12] if shard_of(s, 3) == 2]
    assert f"shard 2/3: {len(mine)} of 12 stream(s)" in out
    assert all(f"  {s}" in out for s in mine)
    with pytest.raises(SystemExit):
        main(["validate", str(path), "--shard", "3/3"])
    assert "shard.index: 3 is not below shard.count 3" in capsys.readouterr().err


def test_the_api_refuses_another_shards_stream_naming_it(tmp_path: Path) -> None:
    cfg = parse_config(_pipeline("shard: {index: 0, count: 3}"))
    assert cfg.shard is not None
    changes = StreamChanges(cfg.streams, tmp_path, None, shard=cfg.shard)
    other = next(s for s in IDS if shard_of(s, 3) == 2)
    with pytest.raises(AdminError) as e:
        changes.add_stream({"id": other, "url": "rtsp://h/x"})
    assert e.value.status == 421
    assert "belongs to shard 2 of 3" in str(e.value)
    assert "this instance is shard 0/3" in str(e.value)
    for change in (lambda: changes.update_stream(other, {"url": "rtsp://h/y"}),
                   lambda: changes.remove_stream(other)):  # fmt: skip
        with pytest.raises(AdminError) as e:
            change()
        assert e.value.status == 421 and "belongs to shard 2 of 3" in str(e.value)


def _row(state: str = "streaming") -> dict[str, Any]:
    return {"state": state, "in_state_s": 3.0, "reason": None, "attempt": 0, "restarts": 0,
            "fps": 15.0, "analysed": 100, "dropped": {"stale": 1}, "decode_errors": 0}  # fmt: skip


def _status(*sids: str) -> dict[str, Any]:
    return {"healthy": True, "problems": [], "uptime_s": 5.0, "backend": "null",
            "streams": {s: _row() for s in sids}}  # fmt: skip


def test_the_fleet_table_shows_each_stream_once_with_its_instance() -> None:
    fleet = [
        InstanceStatus("a:1", _status("cam-b", "cam-a")),
        InstanceStatus("b:1", _status("cam-c")),
    ]
    text = format_fleet(fleet, STATUS_COLUMNS, status_row)
    lines = text.splitlines()
    assert lines[0] == "fleet: 2/2 instance(s) answering, 3 stream(s)"
    assert [line.split()[:2] for line in lines[2:]] == [["a:1", "cam-a"], ["a:1", "cam-b"],
                                                         ["b:1", "cam-c"]]  # fmt: skip
    assert fleet_exit_code(fleet, status_exit_code) == 0
    # One away, one camera on two instances: both said, exit 1.
    fleet += [InstanceStatus("c:1", None, "refused"), InstanceStatus("d:1", _status("cam-c"))]
    text = format_fleet(fleet, STATUS_COLUMNS, status_row)
    assert "c:1: no answer (refused)" in text
    assert "cam-c: run by 2 instances (b:1, d:1)" in text
    assert fleet_exit_code(fleet, status_exit_code) == 1


def _ev(cam: str, epoch: int, seq: int, kind: str = "") -> FleetEvent:
    msg_id = f"{cam}.{epoch}.{seq}{kind}"
    return FleetEvent(msg_id, f"streamd.{cam}.alert", 0,
                      {"stream": cam, "epoch": epoch, "seq": seq})  # fmt: skip


def test_the_fleet_order_drops_duplicates_and_sorts_each_camera() -> None:
    order = FleetOrder()
    backlog = [_ev("b", 2, 1), _ev("a", 5, 2), _ev("a", 5, 1), _ev("b", 1, 9), _ev("a", 5, 2)]
    got = order.admit_sorted(backlog)
    assert [(e.camera, e.order) for e in got] == [("a", (5, 1)), ("a", (5, 2)), ("b", (1, 9)),
                                                  ("b", (2, 1))]  # fmt: skip
    assert order.duplicates == 1
    assert order.admit(_ev("a", 5, 3)) and not order.admit(_ev("a", 5, 3))
    assert not order.admit(_ev("a", 5, 0))  # older than what was given out: late
    assert order.admit(_ev("a", 5, 1, ".track"))  # a track event: its own sequence
    assert (order.duplicates, order.late) == (2, 1)


def test_the_runtime_overlay_keeps_only_this_shards_streams(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamd.control.streams import StreamsFile

    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    path = tmp_path / "p.yaml"
    path.write_text(_pipeline("shard: {index: 0, count: 2}"))
    cfg = load_config(path)
    overlay = StreamsFile(path)
    # Written while the fleet had one shard: all twelve; now shard 0 of 2 runs its own.
    overlay.save([{"id": s, "url": f"rtsp://h/{s}"} for s in IDS[:12]])
    loaded, _ = overlay.load(cfg)
    assert [s.id for s in loaded.streams] == [s for s in IDS[:12] if shard_of(s, 2) == 0]
    overlay.save([{"id": s, "url": f"rtsp://h/{s}"} for s in IDS[:12] if shard_of(s, 2) == 1])
    with pytest.raises(ConfigError) as e:
        overlay.load(cfg)
    assert e.value.problems == [("streams", "none is shard 0/2's")]
