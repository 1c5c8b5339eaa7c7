"""NATS JetStream output against a real nats-server: the daemon killed mid-stream and
started again re-sends what its cursor did not cover, and JetStream keeps each alert
once (de-duplicated by its message id <stream>.<epoch>.<seq>)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import nats
import pytest

from .brokers import NatsServer
from .daemon import running_daemon, sample, scrape
from .outputs_common import journal_alerts, make_clip, pipeline, strip

pytestmark = pytest.mark.e2e


async def _read_stream(port: int, name: str) -> list[tuple[str, dict[str, str], dict[str, Any]]]:
    """Every message of the JetStream stream: (subject, headers, JSON body)."""
    nc = await nats.connect(f"nats://127.0.0.1:{port}")
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            return []
        out: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        if not info.state.messages:
            return out
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(name, seq)
            out.append((msg.subject, dict(msg.headers or {}), json.loads(msg.data or b"{}")))
        return out
    finally:
        await nc.close()


def read_stream(port: int) -> list[tuple[str, dict[str, str], dict[str, Any]]]:
    return asyncio.run(_read_stream(port, "STREAMD"))


def _alerts(msgs: list[tuple[str, dict[str, str], dict[str, Any]]]) -> list[dict[str, Any]]:
    return [body for subject, _, body in msgs if subject == "streamd.cam.alert"]


async def _count(port: int, epoch: int | None) -> int:
    nc = await nats.connect(f"nats://127.0.0.1:{port}")
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info("STREAMD", subjects_filter="streamd.cam.alert")
        except nats.js.errors.NotFoundError:
            return 0
        n = (info.state.subjects or {}).get("streamd.cam.alert", 0)
        if epoch is None or not n:
            return n
        last = await js.get_last_msg("STREAMD", "streamd.cam.alert")
        return n if json.loads(last.data or b"{}")["epoch"] != epoch else 0
    finally:
        await nc.close()


def _wait_alerts(port: int, n: int, timeout_s: float, epoch: int | None = None) -> None:
    """At least ``n`` alerts stored (with ``epoch``: the newest one of another epoch)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if asyncio.run(_count(port, epoch)) >= n:
            return
        time.sleep(0.3)
    raise AssertionError(f"fewer than {n} alerts in JetStream after {timeout_s}s")


def test_nats_jetstream_holds_each_alert_once_across_a_killed_daemon(tmp_path: Path) -> None:
    server = NatsServer(tmp_path)
    server.start()
    outputs = {"nats": {"servers": [f"nats://127.0.0.1:{server.port}"],
                        "subjects": {"alert": "streamd.{stream}.alert",
                                     "track": "streamd.{stream}.track",
                                     "det": "streamd.{stream}.det"},
                        "det_every_s": 1.0}}  # fmt: skip
    cfg = pipeline(tmp_path, make_clip(tmp_path), outputs)
    cursor_file = tmp_path / "alerts.sqlite.outputs" / "nats.json"
    try:
        with running_daemon(cfg) as first:
            _wait_alerts(server.port, 3, 40)
            first_epoch = _alerts(read_stream(server.port))[0]["epoch"]
            # Killed outright (no cursor saved at stop), and the cursor set back to the
            # start, as after a crash right before a save: every alert so far is sent again.
            os.killpg(first.proc.pid, signal.SIGKILL)
            first.proc.wait(10)
        sent_before = len(journal_alerts(cfg))
        cursor_file.write_text(json.dumps({"after": {}, "id": 0}))
        with running_daemon(cfg, log_file=tmp_path / "daemon2.log"):
            # The new run's alerts arrive after the re-sent ones.
            _wait_alerts(server.port, sent_before + 2, 40, epoch=first_epoch)
            metrics = scrape(cfg)
        msgs = read_stream(server.port)
    finally:
        server.stop()
    journal = [strip(a) for a in journal_alerts(cfg)]
    stored = _alerts(msgs)
    ids = [h["Nats-Msg-Id"] for s, h, _ in msgs if s == "streamd.cam.alert"]
    assert len(ids) == len(set(ids))  # each alert once
    assert ids == [f"cam.{a['epoch']}.{a['seq']}" for a in stored]
    # Everything journaled is in JetStream once, in order, with the event's own fields,
    # except what the stop may have cut short at the very end.
    assert stored == journal[: len(stored)]
    assert len(stored) >= len(journal) - 3
    assert len({a["epoch"] for a in stored}) == 2  # both runs
    # The re-sent alerts were acknowledged as duplicates (the first run's, at least).
    dup = sample(metrics, "streamd_output_sent_total", output="nats", type="duplicate")
    assert dup >= min(sent_before, 3)
    # det events sampled: one a second per stream (15 analysed), with their own ids.
    dets = [(h, b) for s, h, b in msgs if s == "streamd.cam.det"]
    assert dets and all(h["Nats-Msg-Id"] == f"cam.{b['epoch']}.{b['seq']}.det" for h, b in dets)
    for epoch in {b["epoch"] for _, b in dets}:
        ts = sorted(b["ts"] for _, b in dets if b["epoch"] == epoch)
        assert all(b - a >= 0.9 for a, b in itertools.pairwise(ts))
    tracks = [(h, b) for s, h, b in msgs if s == "streamd.cam.track"]
    assert tracks and all(h["Nats-Msg-Id"] == f"cam.{b['epoch']}.{b['seq']}.track"
                          for h, b in tracks)  # fmt: skip
