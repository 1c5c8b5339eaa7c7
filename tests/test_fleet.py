"""A fleet on one machine: nats-server with JetStream and three daemons (shards 0..2 of
3) reading one pipeline file of six cameras, each instance's ports, journal and shard
from its environment as a StatefulSet's pods would have them.

Each camera is analysed by exactly one instance, the one rendezvous hashing names;
`streamd status A B C` shows the six once; JetStream holds alerts from all six; one
instance SIGKILLed and started again (what Kubernetes does) resumes its cameras and
loses or duplicates no alert in JetStream, while the others' det seq have no gap; a
stream added through the API of the wrong instance is refused naming its shard; the
fleet reader gives every alert once, in (epoch, seq) order per camera."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import nats
import psutil
import pytest

from streamd.client import Subscriber
from streamd.config.shard import assignment
from streamd.fleet.events import FleetReader

from .brokers import NatsServer
from .daemon import running, start
from .outputs_common import NULL_MODEL, camera, make_clip
from .util import free_port

pytestmark = pytest.mark.e2e

COUNT = 3


def six_cameras() -> list[str]:
    """Six camera ids, two per shard of three (the hash decides; these are picked so
    every instance has work and one's death is visible)."""
    per: dict[int, list[str]] = {k: [] for k in range(COUNT)}
    for k, shard in assignment([f"cam-{i}" for i in range(40)], COUNT).items():
        if len(per[shard]) < 2:
            per[shard].append(k)
    return sorted(sid for ids in per.values() for sid in ids)


def fleet_pipeline(tmp: Path, clip: Path, nats_port: int, cams: list[str]) -> Path:
    """One file for the whole fleet: what differs per instance comes from the environment."""
    cfg = {
        "model": NULL_MODEL,
        "batching": {"max_batch": 4, "max_wait_ms": 20},
        "shard": {"index": "${POD_NAME}", "count": COUNT},
        "publish": {"endpoint": "tcp://127.0.0.1:${PUB_PORT}"},
        "http": {"listen": "127.0.0.1:${HTTP_PORT}"},
        "journal": {"path": "${STATE}/alerts.sqlite", "endpoint": "tcp://127.0.0.1:${JPORT}"},
        "outputs": {"nats": {"servers": [f"nats://127.0.0.1:{nats_port}"],
                             "subjects": {"alert": "streamd.{stream}.alert",
                                          "track": "streamd.{stream}.track"}}},
        "streams": [camera(sid, clip) for sid in cams],
    }  # fmt: skip
    path = tmp / "fleet.yaml"
    path.write_text(json.dumps(cfg))
    return path


class Instance:
    def __init__(self, tmp: Path, index: int) -> None:
        self.index = index
        self.state = tmp / f"streamd-{index}"
        self.state.mkdir()
        self.pub, self.http = free_port(), free_port()
        self.env = {
            "POD_NAME": f"streamd-{index}",
            "PUB_PORT": str(self.pub),
            "HTTP_PORT": str(self.http),
            "JPORT": str(free_port()),
            "STATE": str(self.state),
            "STATE_DIRECTORY": str(self.state),  # the runtime overlay: per instance
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self, cfg: Path) -> None:
        self.runs += 1
        self.proc = start(cfg, self.state / f"run{self.runs}.log", self.env)

    def status(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/status", timeout=5) as r:
                data: dict[str, Any] = json.load(r)
                return data
        except (urllib.error.URLError, OSError):
            return None

    def journal(self) -> list[dict[str, Any]]:
        db = sqlite3.connect(f"file:{self.state / 'alerts.sqlite'}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT payload FROM alerts ORDER BY id").fetchall()
        finally:
            db.close()
        return [json.loads(p) for (p,) in rows]


async def _alert_counts(port: int) -> dict[str, int]:
    nc = await nats.connect(f"nats://127.0.0.1:{port}")
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info("STREAMD", subjects_filter="streamd.*.alert")
        except nats.js.errors.NotFoundError:
            return {}
        return {s.split(".")[1]: n for s, n in (info.state.subjects or {}).items()}
    finally:
        await nc.close()


async def _stored_alerts(port: int) -> list[tuple[str, dict[str, Any]]]:
    """(message id, alert) of every stored alert, in stored order."""
    nc = await nats.connect(f"nats://127.0.0.1:{port}")
    try:
        js = nc.jetstream()
        info = await js.stream_info("STREAMD")
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg("STREAMD", seq)
            if msg.subject.endswith(".alert"):
                out.append(((msg.headers or {})["Nats-Msg-Id"], json.loads(msg.data or b"")))
        return out
    finally:
        await nc.close()


def _wait(what: str, ok: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout_s}s: {what}")


class DetWatch(threading.Thread):
    """Every det event of one instance, with the gaps its subscriber saw."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.sub = Subscriber(endpoint, topics=["det."])
        self.stop = threading.Event()
        self.counts: dict[str, int] = {}
        self.epochs: set[int] = set()

    def run(self) -> None:
        while not self.stop.is_set():
            ev = self.sub.recv(0.2)
            if ev is not None and ev.stream is not None:
                self.counts[ev.stream] = self.counts.get(ev.stream, 0) + 1
                self.epochs.add(ev.epoch)
        self.sub.close()


def _stop_fleet(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to every instance at once; each exits 0 and leaves no worker. The 5 s stop
    bound is tests/test_small_things.py's to hold: three daemons stopping on two shared
    cores here may take a little longer, and that is not what this test is about."""
    workers = [psutil.Process(p.pid).children(recursive=True) for p in procs]
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p, children in zip(procs, workers, strict=True):
        assert p.wait(timeout=30) == 0
        _, alive = psutil.wait_procs(children, timeout=5)
        assert [c for c in alive if running(c)] == []


def _post_stream(inst: Instance, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{inst.http}/api/streams", data=json.dumps(body).encode(),
        method="POST", headers={"Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_three_instances_share_six_cameras_and_survive_a_killed_one(tmp_path: Path) -> None:
    cams = six_cameras()
    owner = assignment(cams, COUNT)
    server = NatsServer(tmp_path)
    server.start()
    cfg = fleet_pipeline(tmp_path, make_clip(tmp_path), server.port, cams)
    fleet = [Instance(tmp_path, i) for i in range(COUNT)]
    watches: list[DetWatch] = []
    try:
        for inst in fleet:
            inst.start(cfg)
        _wait("every instance answering", lambda: all(i.status() for i in fleet), 60)
        # Each camera is analysed by exactly one instance: the one its hash names.
        for inst in fleet:
            status = inst.status()
            assert status is not None
            assert sorted(status["streams"]) == sorted(c for c in cams if owner[c] == inst.index)
        _wait("alerts from all six cameras in JetStream",
              lambda: set(asyncio.run(_alert_counts(server.port))) == set(cams), 60)  # fmt: skip
        # The fleet in one table, each camera once.
        addresses = [f"127.0.0.1:{i.http}" for i in fleet]
        table = subprocess.run([sys.executable, "-m", "streamd.cli", "status", *addresses],
                               capture_output=True, text=True, timeout=30)  # fmt: skip
        rows = [line.split() for line in table.stdout.splitlines()[2:] if line.startswith("127.")]
        assert sorted(r[1] for r in rows) == cams, table.stdout + table.stderr
        assert all(r[0] == f"127.0.0.1:{fleet[owner[r[1]]].http}" for r in rows)
        assert table.stdout.startswith(f"fleet: 3/3 instance(s) answering, {len(cams)} stream(s)")
        # The container and Kubernetes probe, as a kubelet would run it in the pod.
        for path in ("/healthz", "/readyz"):
            probe = subprocess.run([sys.executable, "-m", "streamd.probe", path],
                                   env={**os.environ, "STREAMD_HTTP_PORT": str(fleet[0].http)},
                                   capture_output=True, text=True, timeout=30)  # fmt: skip
            assert probe.returncode == 0, probe.stderr
        # A camera the hash gives to shard 1, added on shard 0: refused, naming shard 1.
        stray = next(f"cam-{i}" for i in range(40, 99) if assignment([f"cam-{i}"], 3)
                     [f"cam-{i}"] == 1)  # fmt: skip
        code, body = _post_stream(fleet[0], camera(stray, make_clip(tmp_path)))
        assert code == 421 and "shard 1 of 3" in body["error"], body

        survivors = fleet[:2]
        watches = [DetWatch(f"tcp://127.0.0.1:{i.pub}") for i in survivors]
        for w in watches:
            w.start()
        time.sleep(2.0)
        victim = fleet[2]
        assert victim.proc is not None
        first_epoch = victim.status()["epoch"]  # type: ignore[index]
        os.killpg(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait(10)
        before_kill = victim.journal()
        assert before_kill, "the killed instance had journaled alerts"
        victim.start(cfg)  # as Kubernetes would: same pod name, same volume
        mine = [c for c in cams if owner[c] == 2]

        def resumed() -> bool:
            stored = asyncio.run(_stored_alerts(server.port))
            fresh = {a["stream"] for _, a in stored if a["epoch"] != first_epoch}
            return set(mine) <= fresh

        _wait("the restarted instance's cameras alerting again", resumed, 60)
        status = victim.status()
        assert status is not None and sorted(status["streams"]) == mine
        assert status["epoch"] != first_epoch
        time.sleep(1.0)  # the survivors' det go on meanwhile
        for w in watches:
            w.stop.set()
            w.join(5)
        _stop_fleet([inst.proc for inst in fleet if inst.proc is not None])
        stored = asyncio.run(_stored_alerts(server.port))
        events = FleetReader([f"nats://127.0.0.1:{server.port}"], kinds=("alert",)).read_now(0.5)
        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "streamd.cli",
                "subscribe",
                "--nats",
                f"nats://127.0.0.1:{server.port}",
                "--kind",
                "alert",
                "--timeout",
                "0.5",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        tracks = FleetReader([f"nats://127.0.0.1:{server.port}"], kinds=("track",)).read_now(0.5)
    finally:
        for w in watches:
            w.stop.set()
        for inst in fleet:
            if inst.proc is not None and inst.proc.poll() is None:
                os.killpg(inst.proc.pid, signal.SIGKILL)
        server.stop()

    per_cam = {c: sum(1 for _, a in stored if a["stream"] == c) for c in cams}
    print(
        f"fleet: {len(stored)} alerts in JetStream {per_cam}; the killed instance had "
        f"journaled {len(before_kill)}; survivors' det events {[w.counts for w in watches]}"
    )
    # Survivors: det seq without a gap, one epoch each, both their cameras seen.
    for inst, w in zip(survivors, watches, strict=True):
        assert w.sub.gaps == [], w.sub.gaps
        assert len(w.epochs) == 1
        assert sorted(w.counts) == sorted(c for c in cams if owner[c] == inst.index)
    # JetStream: each alert once, from all six; every alert the victim journaled before
    # it was killed is there (re-sent from its cursor after the restart, stored once).
    ids = [msg_id for msg_id, _ in stored]
    assert len(ids) == len(set(ids))
    assert {a["stream"] for _, a in stored} == set(cams)
    assert all(msg_id == f"{a['stream']}.{a['epoch']}.{a['seq']}" for msg_id, a in stored)
    kept = {msg_id for msg_id, _ in stored}
    lost = [a for a in before_kill if f"{a['stream']}.{a['epoch']}.{a['seq']}" not in kept]
    assert lost == []
    # Per instance: what JetStream holds is its journal (the stop may cut the tail short).
    for inst in fleet:
        journal = [f"{a['stream']}.{a['epoch']}.{a['seq']}" for a in inst.journal()]
        theirs = [i for i in ids if owner[i.split(".")[0]] == inst.index]
        assert sorted(theirs) == sorted(set(theirs) & set(journal))
        assert len(theirs) >= len(journal) - 3 * 2
    # The fleet reader: everything once, in (epoch, seq) order per camera.
    assert sorted(e.msg_id for e in events) == sorted(ids)
    for cam in cams:
        order = [e.order for e in events if e.camera == cam]
        assert order == sorted(order) and len(set(order)) == len(order)
    assert {e.order[0] for e in events if owner[e.camera] == 2} >= {first_epoch}
    # The same from the command line: JSON lines, the counts on stderr.
    printed = [json.loads(line) for line in cli.stdout.splitlines()]
    assert [f"{a['stream']}.{a['epoch']}.{a['seq']}" for a in printed] == [e.msg_id for e in events]
    assert "0 duplicate(s), 0 out of order" in cli.stderr, cli.stderr
    # Track events of all six cameras, each camera's in order too.
    assert {e.camera for e in tracks} == set(cams)
    assert all(e.msg_id.endswith(".track") for e in tracks)
