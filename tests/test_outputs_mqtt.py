"""MQTT output against a real mosquitto (TLS with the test's own CA, a user and password):
alerts, retained state, Home Assistant discovery, and a broker outage of 10 s after which
every alert arrives once, in order."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from .brokers import Mosquitto
from .daemon import running_daemon, sample, scrape
from .outputs_common import journal_alerts, make_clip, pipeline, strip

pytestmark = pytest.mark.e2e
USER = ("streamd", "mqtt-pass-for-the-test")


class Recorder:
    """A subscriber keeping (arrival time, topic, payload, retain) for every message."""

    def __init__(self, port: int, topics: list[str], persistent: bool, ca: Path | None) -> None:
        self.items: list[tuple[float, str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-{uuid.uuid4().hex[:8]}",
            clean_session=not persistent,
        )
        self.client.reconnect_delay_set(1, 1)
        self.client.username_pw_set(*USER)
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca))

        def on_connect(c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
            for t in topics:
                c.subscribe(t, qos=1)

        def on_message(_c: mqtt.Client, _u: Any, m: mqtt.MQTTMessage) -> None:
            with self.lock:
                self.items.append((time.time(), m.topic, m.payload, bool(m.retain)))

        self.client.on_connect = on_connect
        self.client.on_message = on_message
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()

    def topic(self, name: str) -> list[bytes]:
        with self.lock:
            return [p for _, t, p, _ in self.items if t == name]

    def retained(self) -> dict[str, bytes]:
        with self.lock:
            return {t: p for _, t, p, r in self.items if r}

    def wait(self, pred: Any, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if pred():
                return True
            time.sleep(0.1)
        return bool(pred())

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _alerts(rec: Recorder) -> list[dict[str, Any]]:
    return [json.loads(p) for p in rec.topic("streamd/cam/alert")]


def test_mqtt_alerts_state_discovery_and_a_broker_outage(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path, users=dict([USER]), tls=True)
    broker.start()
    assert broker.ca is not None
    # Persistent session: messages for it wait in the broker while it reconnects.
    rec = Recorder(broker.port, ["streamd/#", "homeassistant/#"], persistent=True, ca=broker.ca)
    outputs = {"mqtt": {"host": "127.0.0.1", "port": broker.port, "discovery": True,
                        "reconnect_max_s": 2, "username_env": "MQ_USER",
                        "tls": {"ca_file": str(broker.ca)},
                        "password_env": "MQ_PASSWORD"}}  # fmt: skip
    cfg = pipeline(tmp_path, make_clip(tmp_path), outputs, snapshot=True)
    env = {"MQ_USER": USER[0], "MQ_PASSWORD": USER[1]}  # the broker refuses anyone else
    late: Recorder | None = None
    try:
        with running_daemon(cfg, env=env):
            assert rec.wait(lambda: len(_alerts(rec)) >= 3, 40), "no alerts on MQTT"
            # The same fields as the ZeroMQ event, which the journal holds as published.
            journal = {a["seq"]: strip(a) for a in journal_alerts(cfg)}
            for a in _alerts(rec):
                assert a == journal[a["seq"]]

            # A subscriber that comes later gets the retained state and discovery configs.
            time.sleep(1.5)  # a heartbeat or two
            late = Recorder(broker.port, ["streamd/#", "homeassistant/#"], False, broker.ca)
            want = {"streamd/availability", "streamd/cam/state", "streamd/cam/availability",
                    "streamd/cam/zone/left/occupancy", "streamd/cam/line/mid/counts",
                    "streamd/cam/snapshot"}  # fmt: skip
            assert late.wait(lambda: want <= set(late.retained()), 10), set(late.retained())
            kept = late.retained()
            assert kept["streamd/availability"] == b"online"
            assert kept["streamd/cam/state"] == b"streaming"
            assert kept["streamd/cam/availability"] == b"online"
            assert int(kept["streamd/cam/zone/left/occupancy"]) in (0, 1, 2)
            assert set(json.loads(kept["streamd/cam/line/mid/counts"])) == {"in", "out"}
            assert kept["streamd/cam/snapshot"][:2] == b"\xff\xd8"  # the last alert's JPEG
            configs = {t: json.loads(p) for t, p in kept.items() if t.startswith("homeassistant/")}
            by_uid = {c["unique_id"]: (t, c) for t, c in configs.items()}
            assert {"streamd_cam_state", "streamd_cam_zone_left_occupancy",
                    "streamd_cam_zone_left_occupied", "streamd_cam_line_mid_in",
                    "streamd_cam_line_mid_out"} <= set(by_uid)  # fmt: skip
            topic, occupied = by_uid["streamd_cam_zone_left_occupied"]
            assert topic == (
                "homeassistant/binary_sensor/streamd/streamd_cam_zone_left_occupied/config"
            )
            assert occupied["state_topic"] == "streamd/cam/zone/left/occupancy"
            assert occupied["device"]["identifiers"] == ["streamd_cam"]
            late.close()
            late = None

            # The broker goes away for 10 s; alerts keep being raised (and journaled).
            broker.stop()
            down_at = time.time()
            time.sleep(10)
            broker.start()
            up_at = time.time()
            # Alerts raised after the broker is back are checked too: wait for two.
            deadline = time.monotonic() + 15
            while sum(a["_stored"] > up_at for a in journal_alerts(cfg)) < 2:
                assert time.monotonic() < deadline, "no alert after the outage"
                time.sleep(0.3)
            during = [a for a in journal_alerts(cfg) if down_at < a["_stored"] < up_at]
            assert len(during) >= 5, "the outage should span several alerts"
            want_seqs = [a["seq"] for a in journal_alerts(cfg)]
            assert rec.wait(lambda: {a["seq"] for a in _alerts(rec)} >= set(want_seqs), 20)
            deadline = time.monotonic() + 5
            while True:  # the gauges are written once a second
                metrics = scrape(cfg)
                if sample(metrics, "streamd_output_connected", output="mqtt") or (
                    time.monotonic() > deadline
                ):
                    break
                time.sleep(0.3)
        # A clean stop says so on the retained availability topic.
        late = Recorder(broker.port, ["streamd/availability"], False, broker.ca)
        assert late.wait(lambda: late.retained().get("streamd/availability") == b"offline", 5)
    finally:
        for r in (rec, late):
            if r is not None:
                r.close()
        broker.stop()
    assert USER[1] not in (tmp_path / "daemon.log").read_text()
    got = [a["seq"] for a in _alerts(rec) if a["seq"] <= want_seqs[-1]]
    assert got == want_seqs  # every alert once (QoS 1, no duplicate here), in order
    assert sample(metrics, "streamd_output_sent_total", output="mqtt", type="alert") >= len(got)
    assert sample(metrics, "streamd_output_failed_total", output="mqtt") >= 1  # the outage
    assert sample(metrics, "streamd_output_connected", output="mqtt") == 1.0
    cursor = json.loads((tmp_path / "alerts.sqlite.outputs" / "mqtt.json").read_text())
    assert cursor["after"]["cam"] >= want_seqs[-1]
    assert (tmp_path / "alerts.sqlite.outputs" / "mqtt.json").stat().st_mode & 0o777 == 0o600


def _row(zones: list[str], lines: list[str], reported: bool = True) -> dict[str, Any]:
    """A camera's heartbeat row (``reported``: sent by its process, not a placeholder)."""
    return {"state": "streaming", "zones": dict.fromkeys(zones, 1),
            "lines": {n: {"in": 1, "out": 0} for n in lines}, "reported": reported}  # fmt: skip


def test_a_removed_zone_leaves_no_retained_entity(tmp_path: Path) -> None:
    """A zone (and a line) gone from the heartbeat, e.g. removed over the API: its retained
    occupancy and its Home Assistant configs are cleared on the broker; a subscriber that
    comes after sees only what exists."""
    from streamd.config.outputs import MqttConfig
    from streamd.outputs.base import Cursor, LiveEvent
    from streamd.outputs.mqtt import MqttOutput

    broker = Mosquitto(tmp_path)
    broker.start()
    topics = ["streamd/#", "homeassistant/#"]
    live = Recorder(broker.port, topics, False, None)  # sees each publish as it happens
    out = MqttOutput(MqttConfig(host="127.0.0.1", port=broker.port, discovery=True),
                     Cursor({}, 0))  # fmt: skip
    out.start()
    yard = "homeassistant/binary_sensor/streamd/streamd_cam_zone_yard_occupied/config"

    def beat(zones: list[str], lines: list[str]) -> None:
        out.offer_event(LiveEvent("heartbeat", None, {"streams": {"cam": _row(zones, lines)}}))

    def retained_now() -> dict[str, bytes]:
        """What a subscriber coming now gets: the broker's retained copies."""
        rec = Recorder(broker.port, topics, False, None)
        try:
            assert rec.wait(lambda: "streamd/cam/state" in rec.retained(), 10)
            time.sleep(1.0)  # the rest of them
            return rec.retained()
        finally:
            rec.close()

    try:
        assert live.wait(lambda: out.connected, 10), "the output did not connect"
        beat(["door", "yard"], ["gate"])
        assert live.wait(lambda: live.topic(yard), 10)
        first = retained_now()
        for name in ("streamd/cam/zone/door/occupancy", "streamd/cam/zone/yard/occupancy",
                     "streamd/cam/line/gate/counts"):  # fmt: skip
            assert name in first
        configs = {t for t in first if t.startswith("homeassistant/")}
        gone = {t for t in configs if "zone_yard" in t or "line_gate" in t}
        assert len(configs) == 7 and len(gone) == 4  # occupancy + occupied; in + out
        beat(["door"], [])
        assert live.wait(lambda: b"" in live.topic(yard), 10), "yard's config not cleared"
        after = retained_now()
        assert "streamd/cam/zone/door/occupancy" in after
        assert not {"streamd/cam/zone/yard/occupancy", "streamd/cam/line/gate/counts"} & set(after)
        assert not gone & set(after)
        assert configs - gone <= set(after)  # the camera's state and door's stay
        # A row its camera has not filled yet (just added) clears nothing; the yard named
        # again comes back, on the broker and for a subscriber that comes later.
        out.offer_event(LiveEvent("heartbeat", None, {"streams": {"cam": _row([], [], False)}}))
        beat(["door", "yard"], [])
        assert live.wait(lambda: live.topic(yard)[-1:] != [b""], 10), "yard not back"
        back = retained_now()
        assert "streamd/cam/zone/door/occupancy" in back and yard in back
        door = yard.replace("zone_yard", "zone_door")
        assert b"" not in live.topic(door)  # never deleted, by the unfilled row either
    finally:
        out.close(5)
        live.close()
        broker.stop()


def test_a_removed_camera_and_a_last_zone_leave_nothing_retained(tmp_path: Path) -> None:
    """A camera whose last zone is removed has that zone's entities cleared; a camera the
    heartbeat stops naming (removed at runtime) has every retained topic cleared, its
    state, availability and snapshot included, its Home Assistant device emptied, and
    no snapshot of an alert still due for it; the other camera keeps all of its own,
    and the removed one, added again, comes back."""
    from streamd.config.outputs import MqttConfig
    from streamd.outputs.base import Cursor, JournaledAlert, LiveEvent
    from streamd.outputs.mqtt import MqttOutput

    broker = Mosquitto(tmp_path)
    broker.start()
    topics = ["streamd/#", "homeassistant/#"]
    live = Recorder(broker.port, topics, False, None)
    out = MqttOutput(MqttConfig(host="127.0.0.1", port=broker.port, discovery=True),
                     Cursor({}, 0))  # fmt: skip
    out.start()

    def beat(rows: dict[str, dict[str, Any]]) -> None:
        out.offer_event(LiveEvent("heartbeat", None, {"streams": rows}))

    def retained_now() -> dict[str, bytes]:
        rec = Recorder(broker.port, topics, False, None)
        try:
            assert rec.wait(lambda: "streamd/keep/state" in rec.retained(), 10)
            time.sleep(1.0)
            return rec.retained()
        finally:
            rec.close()

    try:
        assert live.wait(lambda: out.connected, 10), "the output did not connect"
        # What an earlier alert left: the camera's last snapshot, retained.
        live.client.publish("streamd/gone/snapshot", b"jpeg", qos=1, retain=True)
        beat({"gone": _row(["yard"], ["gate"]), "keep": _row(["door"], [])})
        assert live.wait(lambda: live.topic("streamd/keep/zone/door/occupancy"), 10)
        first = retained_now()
        theirs = {t for t in first if "gone" in t}
        ours = {t for t in first if "keep" in t}
        assert {"streamd/gone/state", "streamd/gone/availability", "streamd/gone/snapshot",
                "streamd/gone/zone/yard/occupancy"} <= theirs  # fmt: skip
        assert len([t for t in theirs if t.startswith("homeassistant/")]) == 5
        # The kept camera's last zone goes: its two entities and the occupancy topic.
        beat({"gone": _row(["yard"], ["gate"]), "keep": _row([], [])})
        door = "streamd/keep/zone/door/occupancy"
        assert live.wait(lambda: live.topic(door)[-1:] == [b""], 10), "last zone not cleared"
        # A camera added and removed before its process reported: its state entity goes.
        brief = "homeassistant/sensor/streamd/streamd_brief_state/config"
        beat({"gone": _row(["yard"], ["gate"]), "keep": _row([], []),
              "brief": _row([], [], reported=False)})  # fmt: skip
        assert live.wait(lambda: live.topic(brief), 10)
        # The camera is removed; an alert of it still due from the journal comes after.
        beat({"keep": _row([], [])})
        assert live.wait(lambda: live.topic(brief)[-1:] == [b""], 10), "brief's state stays"
        assert live.wait(lambda: live.topic("streamd/gone/state")[-1:] == [b""], 10)
        late = JournaledAlert(id=1, stream="gone", seq=1, epoch=0, ts=time.time(),
                              payload={"seq": 1}, snapshot=b"late-jpeg")  # fmt: skip
        assert out.offer_alert(late)
        assert live.wait(lambda: live.topic("streamd/gone/alert"), 10), "the alert still goes"
        after = retained_now()
        assert not {t for t in after if "gone" in t}, sorted(t for t in after if "gone" in t)
        assert door not in after
        assert ours - {door} - {t for t in ours if "zone_door" in t} <= set(after)
        assert b"late-jpeg" not in live.topic("streamd/gone/snapshot")
        # Added again: its topics and entities come back.
        beat({"gone": _row(["yard"], []), "keep": _row([], [])})
        assert live.wait(lambda: live.topic("streamd/gone/state")[-1:] == [b"streaming"], 10)
        back = retained_now()
        assert {"streamd/gone/state", "streamd/gone/zone/yard/occupancy"} <= set(back)
    finally:
        out.close(5)
        live.close()
        broker.stop()
