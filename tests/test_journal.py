"""The alert journal on its own: ordering, replay filters, seq continuity, retention, durability."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from streamd.cli import format_status
from streamd.config import ConfigError, parse_config
from streamd.publish.journal import AlertJournal, Entry, connect, read_after


def alert(stream: str, seq: int, epoch: int = 1, pad: int = 0) -> Entry:
    payload: dict[str, Any] = {"type": "alert", "stream": stream, "seq": seq, "epoch": epoch,
                               "ts": 1.0 + seq, "rule": "in", "pad": "x" * pad}  # fmt: skip
    return Entry(payload, b"\xff\xd8jpeg" if seq % 2 else None)


def journal(tmp_path: Path, **kw: Any) -> AlertJournal:
    opts = {"synchronous": "full", "max_age_days": 30.0, "max_mb": 512.0, **kw}
    return AlertJournal(tmp_path / "j.sqlite", **opts)


def test_replay_after_per_stream_in_publish_order(tmp_path: Path) -> None:
    j = journal(tmp_path)
    j.append([alert("a", 0), alert("b", 0), alert("a", 1)])
    j.append([alert("b", 1), alert("a", 2)])
    seqs = lambda entries: [(e.payload["stream"], e.payload["seq"]) for e in entries]  # noqa: E731
    everything, more = read_after(j.db, {})
    assert seqs(everything) == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2)] and not more
    assert everything[1].snapshot is None and everything[2].snapshot == b"\xff\xd8jpeg"
    # "b" not named: all of it; "a" after 0.
    assert seqs(read_after(j.db, {"a": 0})[0]) == [("b", 0), ("a", 1), ("b", 1), ("a", 2)]
    assert seqs(read_after(j.db, {"a": 0}, stream="a")[0]) == [("a", 1), ("a", 2)]
    page, more = read_after(j.db, {}, limit=2)
    assert seqs(page) == [("a", 0), ("b", 0)] and more
    with pytest.raises(Exception, match="UNIQUE"):
        j.append([alert("a", 2)])  # a seq is journaled once
    assert len(read_after(j.db, {})[0]) == 5  # the failed batch left nothing


def test_seq_continues_after_a_restart_and_a_reader_sees_commits(tmp_path: Path) -> None:
    j = journal(tmp_path)
    j.append([alert("a", 0), alert("a", 1), alert("b", 0)])
    j.close()
    again = journal(tmp_path)
    assert again.next_seqs() == {"a": 2, "b": 1}
    reader = connect(again.path, readonly=True)
    again.append([alert("a", 2, epoch=2)])
    assert [e.payload["epoch"] for e in read_after(reader, {"a": 1}, "a")[0]] == [2]


def test_durability_setting_is_applied(tmp_path: Path) -> None:
    full = journal(tmp_path)
    assert full.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert full.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    full.close()
    normal = journal(tmp_path, synchronous="normal")
    assert normal.db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def test_retention_by_age_and_by_size(tmp_path: Path) -> None:
    j = journal(tmp_path, max_age_days=1.0, max_mb=0.01)  # ~10 KiB
    j.append([alert("a", i, pad=1000) for i in range(5)])  # ~5 KiB
    j.db.execute("UPDATE alerts SET stored = stored - 2 * 86400 WHERE seq < 2")  # 2 days old
    assert j.prune() == 2
    assert [e.payload["seq"] for e in read_after(j.db, {})[0]] == [2, 3, 4]
    j.append([alert("a", i, pad=1000) for i in range(5, 15)])  # now ~13 KiB: over
    deleted = j.prune(now=time.time())
    left = [e.payload["seq"] for e in read_after(j.db, {})[0]]
    assert deleted > 0 and left == list(range(15 - len(left), 15))  # the oldest went first
    (size,) = j.db.execute("SELECT SUM(bytes) FROM alerts").fetchone()
    assert size <= 0.01 * 1024 * 1024
    assert j.next_seqs() == {"a": 15}  # numbering is unaffected by deletion


def test_analytics_config_errors_name_the_key() -> None:
    bad = {
        "streams": [
            {
                "id": "a",
                "url": "x.mp4",
                "zones": [
                    {"name": "door", "polygon": [[0, 0], [1, 0], [1, 1]], "alert_on": ["dwell>30"]}
                ],
            }
        ]
    }
    with pytest.raises(ConfigError) as err:
        parse_config(json.dumps(bad))
    assert "streams.0.zones.0.alert_on" in str(err.value) and "dwell>30" in str(err.value)
    dup = {
        "streams": [
            {
                "id": "a",
                "url": "x.mp4",
                "lines": [
                    {"name": "g", "points": [[0, 0], [1, 1]]},
                    {"name": "g", "points": [[0, 1], [1, 1]]},
                ],
            }
        ]
    }
    with pytest.raises(ConfigError, match=r"streams.0.lines.*duplicate names \['g'\]"):
        parse_config(json.dumps(dup))


def test_status_table_shows_counts() -> None:
    row = {"state": "streaming", "in_state_s": 3.0, "reason": None, "attempt": 0, "restarts": 0,
           "fps": 5.0, "analysed": 10, "dropped": {"stale": 0}, "decode_errors": 0,
           "zones": {"door": 2}, "lines": {"gate": {"in": 3, "out": 1}}}  # fmt: skip
    text = format_status({"uptime_s": 4, "healthy": True, "backend": "onnx-cpu",
                          "streams": {"cam": row}})  # fmt: skip
    assert "cam: zone door: 2 inside, line gate: in 3 out 1" in text


def test_an_alert_the_journal_cannot_store_still_goes_out(tmp_path: Path) -> None:
    """Disk full or file gone: live subscribers still get the alert; the failure is counted."""
    import numpy as np
    import supervision as sv

    from streamd import metrics
    from streamd.analysis.sinks import AnalysedFrame
    from streamd.analytics.service import AnalyticsSink
    from streamd.client import Subscriber
    from streamd.publish.events import Latency
    from streamd.publish.publisher import Publisher
    from streamd.types import FrameRef

    from .util import free_port

    cfg = parse_config(json.dumps({"streams": [{"id": "cam", "url": "x.mp4", "zones": [
        {"name": "all", "polygon": [[0, 0], [64, 0], [64, 64], [0, 64]], "alert_on": ["enter"],
         "debounce_s": 0, "snapshot": True}]}]}))  # fmt: skip
    endpoint, alert_endpoint = (f"tcp://127.0.0.1:{free_port()}" for _ in range(2))
    publisher = Publisher(endpoint, hwm=100)
    path = tmp_path / "alerts.sqlite"
    failures = metrics.JOURNAL_ERRORS._value.get()
    with Subscriber(alert_endpoint, topics=["alert."]) as sub:
        # Alerts go out on the journal thread's own socket, after the commit.
        analytics = AnalyticsSink(
            cfg.streams[0], cfg, publisher,
            lambda: AlertJournal(path, "full", 30, 100, busy_timeout_s=0.2),
            lambda: Publisher(alert_endpoint, hwm=100),
        )  # fmt: skip
        deadline = time.monotonic() + 5  # the journal thread has reserved its seqs
        while not path.exists() or not _reserved(path):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)  # let the subscription reach the publisher
        locked = sqlite3.connect(path, isolation_level=None)
        locked.execute("BEGIN EXCLUSIVE")  # every write now fails (another writer holds it)
        ref = FrameRef("cam", "ring", 4, 64, 64, 0, 0, time.time(), 1.0, 1.0, time.time(), 7)
        person = {"track_id": 3, "class_id": 0, "class": "person", "conf": 0.9,
                  "bbox": [10.0, 10.0, 30.0, 50.0]}  # fmt: skip
        image = np.zeros((64, 64, 3), np.uint8)
        analytics.on_frame(AnalysedFrame(ref, sv.Detections.empty(), [person], image,
                                         Latency(0, 0, 0, 0, 0), {}, 1, 1, 0.0))  # fmt: skip
        event = sub.recv(5)
        locked.execute("COMMIT")
        locked.close()
        analytics.close(5.0)
    publisher.close()
    assert event is not None and event.payload["rule"] == "enter" and event.payload["frame"] == 7
    assert event.attachment is not None and event.attachment[:2] == b"\xff\xd8"  # a JPEG
    assert metrics.JOURNAL_ERRORS._value.get() == failures + 1
    assert analytics.counts().journal.unjournaled == 1


def _reserved(path: Path) -> bool:
    with sqlite3.connect(path) as db:
        tables = {n for (n,) in db.execute("SELECT name FROM sqlite_master")}
        return "seq_reserve" in tables and bool(db.execute("SELECT 1 FROM seq_reserve").fetchall())


def test_a_filtered_subscriber_pages_past_other_streams(tmp_path: Path) -> None:
    """1,200 alerts of another stream around ours: replay pages (500 at a time) past them."""
    from streamd.client import AlertSubscriber
    from streamd.publish.publisher import Publisher
    from streamd.publish.replay import ReplayServer

    from .util import free_port

    j = journal(tmp_path)
    entries = [alert("b", i) for i in range(1200)]
    for k, at in enumerate((10, 600, 1190)):
        entries.insert(at + k, alert("a", k))
    j.append(entries)
    pub_endpoint, req_endpoint = (f"tcp://127.0.0.1:{free_port()}" for _ in range(2))
    publisher = Publisher(pub_endpoint, hwm=100)
    server = ReplayServer(req_endpoint, j.path, epoch=1, state=lambda: {})
    server.start()
    try:
        with AlertSubscriber(pub_endpoint, req_endpoint, streams=["a"]) as sub:
            got = [sub.recv(2) for _ in range(3)]
            assert sub.recv(0.5) is None
    finally:
        server.close()
        publisher.close()
    assert [(e.stream, e.seq) for e in got if e is not None] == [("a", 0), ("a", 1), ("a", 2)]
