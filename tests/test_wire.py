"""Wire format, publisher envelopes and the client's gap accounting over real ZeroMQ sockets."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import jsonschema
import numpy as np
import pytest
import supervision as sv

from streamd.client import Subscriber
from streamd.publish import Publisher, decode, encode, load_schema
from streamd.publish.events import Latency, det_fields, objects, status_fields
from streamd.runtime.logs import RedactingFormatter
from streamd.runtime.redact import redact_url
from streamd.types import FrameRef, SourceState, StatusUpdate

from .util import free_port

VALIDATOR = jsonschema.Draft202012Validator(load_schema())
DROPS = {"queue_full": 2, "stale": 1, "sampled": 0}


def _connected(endpoint: str, pub: Publisher, topics: list[str], rcvhwm: int = 1000) -> Subscriber:
    """A subscriber that has provably joined (PUB drops messages sent before that)."""
    sub = Subscriber(endpoint, topics=[*topics, "heartbeat"], rcvhwm=rcvhwm)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        pub.publish(
            "heartbeat", None, time.time(), {"uptime_s": 0.0, "backend": "x", "streams": {}}
        )
        if sub.recv(0.05) is not None:
            while sub.recv(0.2) is not None:  # drain the other probes
                pass
            return sub
    sub.close()
    raise AssertionError("subscriber never connected")


def test_encode_decode_roundtrip_and_refuses_nan() -> None:
    parts = encode("det.cam", {"a": 1}, b"\xff\xd8jpeg")
    ev = decode(parts)
    assert ev.topic == "det.cam" and ev.payload == {"a": 1} and ev.attachment == b"\xff\xd8jpeg"
    with pytest.raises(ValueError):
        encode("det.cam", {"x": float("nan")})
    with pytest.raises(ValueError):
        decode([b"only-topic"])


def test_det_and_status_payloads_validate_and_carry_source_pixels() -> None:
    d = sv.Detections(
        xyxy=np.array([[10.04, 20.0, 110.0, 220.0], [1, 2, 3, 4]], dtype=float),
        confidence=np.array([0.9, 0.3]),
        class_id=np.array([0, 1]),
        tracker_id=np.array([7, -1]),
    )
    objs = objects(d, {0: "person", 1: "car"})
    assert objs[0] == {
        "track_id": 7,
        "class_id": 0,
        "class": "person",
        "conf": 0.9,
        "bbox": [10.0, 20.0, 110.0, 220.0],
    }
    assert objs[1]["track_id"] is None  # unconfirmed track
    ref = FrameRef("cam", "r", 4, 360, 640, 1, 41, 100.0, 2.7, 3.0, 100.01)
    fields = det_fields(ref, objs, Latency(3.0, 5.0, 80.0, 0.4, -0.1), DROPS, 12, 4)
    payload = {"v": 1, "type": "det", "stream": "cam", "seq": 0, "epoch": 1, "ts": 100.0, **fields}
    VALIDATOR.validate(payload)
    assert payload["latency_ms"]["total"] == 0.0  # clamped, never negative
    status = StatusUpdate(
        "cam", SourceState.FAILED, "open_failed", 1.0, SourceState.CONNECTING, 0.5, 1
    )
    VALIDATOR.validate(
        {
            "v": 1,
            "type": "status",
            "stream": "cam",
            "seq": 0,
            "epoch": 1,
            "ts": 1.0,
            **status_fields(status),
        }
    )
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate({**payload, "objects": [{**objs[0], "bbox": [1, 2, 3]}]})


def test_seq_is_consecutive_per_stream_and_kind() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    pub = Publisher(endpoint, hwm=1000, epoch=42)
    sub = _connected(endpoint, pub, topics=["det.", "status."])
    try:
        for i in range(5):
            pub.publish("det", "a", 1.0, {"i": i})
            pub.publish("det", "b", 1.0, {"i": i})
            if i % 2 == 0:
                pub.publish("status", "a", 1.0, {"i": i})
        got = [sub.recv(2.0) for _ in range(13)]
    finally:
        sub.close()
        pub.close()
    seqs: dict[str, list[int]] = {}
    for ev in got:
        assert ev is not None and ev.epoch == 42 and ev.payload["v"] == 1
        seqs.setdefault(ev.topic, []).append(ev.seq)
    assert seqs == {"det.a": [0, 1, 2, 3, 4], "det.b": [0, 1, 2, 3, 4], "status.a": [0, 1, 2]}
    assert sub.gaps == []


def test_gaps_account_for_every_message_lost_to_a_slow_subscriber() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    pub = Publisher(endpoint, hwm=10, epoch=1)
    sub = _connected(endpoint, pub, topics=["det."], rcvhwm=10)
    sent = 5000
    try:
        for i in range(sent):  # the subscriber is not reading: queues overflow
            pub.publish("det", "cam", 1.0, {"pad": "x" * 200, "i": i})
        received = []
        while (ev := sub.recv(0.5)) is not None:
            received.append(ev)
        # One more after the burst so a loss at the very end shows as a gap too.
        pub.publish("det", "cam", 1.0, {"i": sent})
        last = sub.recv(2.0)
    finally:
        sub.close()
        pub.close()
    assert last is not None and last.seq == sent
    missing = sum(g.missing for g in sub.gaps)
    assert 0 < len(received) < sent  # the publisher never blocked; messages were shed
    assert len(received) + 1 + missing == sent + 1  # every lost message is a visible gap


def test_new_epoch_is_a_restart_not_a_gap() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    first = Publisher(endpoint, hwm=100, epoch=1)
    sub = _connected(endpoint, first, topics=["det."])
    first.publish("det", "cam", 1.0, {})
    first.publish("det", "cam", 1.0, {})
    assert sub.recv(2.0) is not None and sub.recv(2.0) is not None
    first.close()
    second = Publisher(endpoint, hwm=100, epoch=2)
    try:
        deadline = time.monotonic() + 5
        ev = None
        while ev is None and time.monotonic() < deadline:
            second.publish("det", "cam", 1.0, {})
            ev = sub.recv(0.1)
    finally:
        sub.close()
        second.close()
    assert ev is not None and ev.epoch == 2
    assert sub.gaps == [] and sub.tracker.restarts == [(1, 2)]


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("rtsp://admin:hunter2@10.0.0.5:554/stream1", "hunter2"),
        ("rtsp://admin:p@ss/w:rd@cam.local/s", "p@ss/w:rd"),
        ("rtsps://user:a:b@c@host/x?y=1", "a:b@c"),
        ("http://u:pw@h/video.mjpg", "pw"),
    ],
)
def test_redaction_removes_passwords(url: str, secret: str) -> None:
    text = f"cannot open '{url}': Connection refused"
    out = redact_url(text)
    assert secret not in out and "***@" in out
    assert "Connection refused" in out
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, "open %s failed", (url,), None)
    assert secret not in RedactingFormatter("%(message)s").format(record)


@pytest.mark.parametrize(
    ("url", "secrets"),
    [
        ("http://10.0.0.9/video.cgi?user=admin&pwd=QuerySecret99", ["QuerySecret99", "admin"]),
        ("http://cam/snap.jpg?Password=Qs3cret&x=1;token=t0ken-xyz", ["Qs3cret", "t0ken-xyz"]),
        ("rtsp://admin:it'sPw2@cam.local/s", ["it'sPw2"]),
        ("rtsp://admin:pass word<1>@cam.local/s", ["pass word<1>"]),
    ],
)
def test_credentials_in_the_query_or_with_quotes_and_spaces_are_redacted(
    url: str, secrets: list[str]
) -> None:
    """As the API and /status show a configured URL (whole), and in any message once the
    URL was configured (a password with a quote ends the free-text pattern early)."""
    from streamd.runtime.redact import redact_whole_url, register_secrets

    whole = redact_whole_url(url)
    assert not any(s in whole for s in secrets), whole
    assert whole.split("://")[0] == url.split("://")[0] and "***" in whole
    register_secrets(url)
    text = f"[Errno 111] Connection refused: '{url}'"
    record = logging.LogRecord("t", logging.ERROR, __file__, 1, "open failed: %s", (text,), None)
    logged = RedactingFormatter("%(message)s").format(record)
    assert not any(s in logged for s in secrets if s != "admin"), logged
    assert "Connection refused" in logged


def test_only_secrets_the_patterns_cannot_delimit_are_redacted_everywhere() -> None:
    """A plain password is found by the URL patterns; registered, a short one would blank
    ordinary text ("frame 81234" with password 1234), so it is not."""
    from streamd.runtime.redact import register_secrets

    register_secrets("rtsp://admin:1234@cam/x?token=abc")
    assert redact_url("frame 81234 of admin, token abc") == "frame 81234 of admin, token abc"
    assert redact_url("open rtsp://admin:1234@cam/x?token=abc failed") == (
        "open rtsp://***@cam/x?token=*** failed"
    )


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


_HOSTILE = """
import sys, time, zmq
sock = zmq.Context().socket(zmq.SUB)
sock.connect(sys.argv[1])
for k in range(3):
    sock.setsockopt(zmq.SUBSCRIBE, bytes([65 + k]) * (4 << 20))
time.sleep(3)
"""  # its own process: libzmq's trie of a 4 MiB key may crash the process holding it


def test_a_huge_subscription_is_refused_and_costs_no_memory() -> None:
    """A subscriber sending 4 MiB subscriptions (each kept in libzmq's trie: 460 MB each
    before) is disconnected; the publisher's memory stays, others still receive."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    pub = Publisher(endpoint, hwm=1000, epoch=7)
    sub = _connected(endpoint, pub, topics=["det."])
    before = _rss_mib()
    hostile = subprocess.Popen([sys.executable, "-c", _HOSTILE, endpoint])
    try:
        deadline = time.monotonic() + 3.0
        got = []
        while time.monotonic() < deadline:  # the publisher keeps working meanwhile
            pub.publish("det", "cam", 1.0, {"i": len(got)})
            if (ev := sub.recv(0.1)) is not None:
                got.append(ev)
        grown = _rss_mib() - before
    finally:
        hostile.kill()
        hostile.wait()
        sub.close()
        pub.close()
    assert got, "the other subscriber stopped receiving"
    assert grown < 100, f"the publisher's process grew by {grown:.0f} MiB"


def test_redaction_is_linear_in_hostile_text() -> None:
    """Logged text can come from outside (a URL, an error): 100 KB built to make a
    backtracking pattern retry (it took minutes) is redacted at once."""
    for text in ("?pass" * 20_000, "x?" + "a" * 100_000, "?a=b" * 25_000):
        t0 = time.perf_counter()
        redact_url(text)
        assert time.perf_counter() - t0 < 1.0, text[:12]
