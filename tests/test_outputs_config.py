"""The outputs section (refusals name the key) and the outputs' shared bookkeeping:
cursor files, the ledger of alerts in flight, the journal reader, discovery configs."""

from __future__ import annotations

import hashlib
import hmac
import json
import stat
from pathlib import Path

import pytest

from streamd.config import ConfigError, load_config, parse_config
from streamd.config.outputs import TlsConfig
from streamd.outputs.base import Cursor, JournaledAlert, Ledger
from streamd.outputs.cursor import CursorStore, JournalReader
from streamd.outputs.homeassistant import discovery_configs
from streamd.outputs.webhooks import signature
from streamd.publish.journal import AlertJournal, Entry, connect

BASE = "streams:\n  - {id: a, url: clips/x.mp4}\n"


def problems(outputs: str) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + "outputs:\n" + outputs, env={})
    return info.value.problems


def test_outputs_parse_with_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MQ_USER", "u")
    monkeypatch.setenv("MQ_PASS", "p")
    cfg = parse_config(BASE + """
outputs:
  mqtt: {host: 127.0.0.1, username_env: MQ_USER, password_env: MQ_PASS, discovery: true}
  nats: {servers: ["nats://localhost:4222"]}
  webhooks: [{url: "https://example.com/hook?token=x"}]
""", env={})  # fmt: skip
    o = cfg.outputs
    assert o.mqtt is not None and o.mqtt.broker_port == 1883 and o.mqtt.qos == 1
    assert o.mqtt.topic_prefix == "streamd" and o.mqtt.discovery_prefix == "homeassistant"
    assert o.nats is not None and set(o.nats.subjects) == {"alert", "track"}
    assert o.webhooks[0].events == ["alert"]
    assert o.webhooks[0].output_name.startswith("webhook-")
    assert "MQ_PASS" in repr(o.mqtt) and "'p'" not in repr(o.mqtt)  # only the variable's name
    assert not parse_config(BASE, env={}).outputs.enabled


@pytest.mark.parametrize(
    ("outputs", "key", "words"),
    [
        ("  mqtt: {host: 10.0.0.5}", "outputs.mqtt", "tls"),
        ("  mqtt: {host: 127.0.0.1, password_env: NOPE_UNSET}", "outputs.mqtt.password_env",
         "NOPE_UNSET is not set"),
        ("  mqtt: {host: 127.0.0.1, topic_prefix: 'a/#'}", "outputs.mqtt.topic_prefix", "topic"),
        ("  mqtt: {host: 127.0.0.1, qos: 3}", "outputs.mqtt.qos", "1"),
        ("  mqtt: {host: 127.0.0.1, pasword_env: X}", "outputs.mqtt.pasword_env", "unknown"),
        ("  nats: {servers: ['nats://10.0.0.5:4222']}", "outputs.nats", "tls"),
        ("  nats: {servers: ['nats://u:p@127.0.0.1:4222']}", "outputs.nats.servers",
         "no credentials"),
        ("  nats: {subjects: {alert: 'a.>'}}", "outputs.nats.subjects", "{stream}"),
        ("  nats: {subjects: {detections: 'a.{stream}'}}", "outputs.nats.subjects.detections.[key]",
         "alert"),
        ("  webhooks: [{url: 'http://10.0.0.5/hook'}]", "outputs.webhooks.0.url", "https"),
        ("  webhooks: [{url: 'https://u:p@example.com/'}]", "outputs.webhooks.0.url",
         "credentials"),
        ("  webhooks: [{url: 'ftp://example.com/'}]", "outputs.webhooks.0.url", "http"),
        ("  webhooks: [{url: 'https://a.example/', events: [det]}]",
         "outputs.webhooks.0.events.0", "alert"),
        ("  webhooks: [{url: 'https://a.example/'}, {url: 'https://a.example/'}]",
         "outputs", "two webhooks"),
    ],
)  # fmt: skip
def test_refusals_name_the_key(outputs: str, key: str, words: str) -> None:
    found = problems(outputs)
    assert any(path == key and words in reason for path, reason in found), found


def test_plaintext_off_loopback_only_when_asked() -> None:
    cfg = parse_config(BASE + "outputs:\n  mqtt: {host: broker.lan, allow_plaintext: true}\n",
                       env={})  # fmt: skip
    assert cfg.outputs.mqtt is not None and cfg.outputs.mqtt.tls is False
    cfg = parse_config(BASE + "outputs:\n  mqtt: {host: broker.lan, tls: true}\n", env={})
    assert cfg.outputs.mqtt is not None and cfg.outputs.mqtt.broker_port == 8883


def _alert(i: int, stream: str = "a", seq: int | None = None) -> JournaledAlert:
    seq = i if seq is None else seq
    return JournaledAlert(i, stream, seq, 7, 100.0 + i, {"stream": stream, "seq": seq})


def test_ledger_moves_the_cursor_over_the_confirmed_prefix_only() -> None:
    ledger = Ledger(Cursor({}, 0), max_inflight=3)
    alerts = [_alert(i) for i in (1, 2, 3)]
    assert all(ledger.take(a) for a in alerts) and not ledger.take(_alert(4))
    ledger.confirm(alerts[1])  # out of order: nothing moves yet
    assert ledger.cursor() == (Cursor({}, 0), False)
    assert ledger.lag_s(110.0) == pytest.approx(9.0)  # the oldest unconfirmed: #1
    ledger.confirm(alerts[0])
    assert ledger.cursor() == (Cursor({"a": 2}, 2), True)
    ledger.confirm(alerts[0])  # a duplicate acknowledgement changes nothing
    assert ledger.room() == 2 and ledger.pending() == 1


def test_cursor_file_private_and_reader_resumes_after_it(tmp_path: Path) -> None:
    path = tmp_path / "j" / "alerts.sqlite"
    journal = AlertJournal(path, "normal", 30, 512)
    journal.append([Entry({"stream": s, "seq": q, "epoch": 1, "ts": 1.0}, None)
                    for s, q in (("a", 0), ("b", 0), ("a", 1))])  # fmt: skip
    db = connect(path, readonly=True)
    store = CursorStore(path, "mqtt")
    new = store.load(db)  # a new output starts at the journal's end
    assert new == Cursor({"a": 1, "b": 0}, 3)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.folder.stat().st_mode) == 0o700
    journal.append([Entry({"stream": "b", "seq": 1, "epoch": 1, "ts": 2.0}, None)])
    assert [(a.stream, a.seq) for a in JournalReader(new).read(db, 10)] == [("b", 1)]
    # A cursor saved by stream seq only (id 0): rows it covers are skipped, not re-sent.
    store.save(Cursor({"a": 0}, 0))
    got = JournalReader(store.load(db)).read(db, 10)
    assert [(a.stream, a.seq, a.msg_id) for a in got] == [
        ("b", 0, "b.1.0"),
        ("a", 1, "a.1.1"),
        ("b", 1, "b.1.1"),
    ]
    one = JournalReader(store.load(db)).read(db, 1)  # the covered row passed over
    assert [(a.stream, a.seq) for a in one] == [("b", 0)]
    # A cursor past the journal's end (the journal was replaced): start at its end.
    store.save(Cursor({}, 99))
    assert store.load(db).id == 4
    store.path.write_text("{not json")
    assert store.load(db).id == 4
    assert json.loads(store.path.read_text())["id"] == 4
    db.close()
    journal.close()


def test_discovery_configs_per_camera_zone_and_line() -> None:
    configs = discovery_configs("homeassistant", "streamd", "cam-1", ["door.in"], ["gate"])
    uids = {c["unique_id"] for c in configs.values()}
    assert uids == {"streamd_cam-1_state", "streamd_cam-1_zone_door_in_occupancy",
                    "streamd_cam-1_zone_door_in_occupied", "streamd_cam-1_line_gate_in",
                    "streamd_cam-1_line_gate_out"}  # fmt: skip
    for topic, c in configs.items():
        assert topic.startswith("homeassistant/") and topic.endswith(f"/{c['unique_id']}/config")
        assert c["availability"][0] == {"topic": "streamd/availability"}
    occupied = configs[
        "homeassistant/binary_sensor/streamd/streamd_cam-1_zone_door_in_occupied/config"
    ]
    assert occupied["state_topic"] == "streamd/cam-1/zone/door.in/occupancy"


def test_signature_is_hmac_sha256_of_timestamp_and_body() -> None:
    want = hmac.new(b"k", b"1.000.{}", hashlib.sha256).hexdigest()
    assert signature(b"k", "1.000", b"{}") == "sha256=" + want


def test_tls_files_are_relative_to_the_pipeline_file(tmp_path: Path) -> None:
    (tmp_path / "x.mp4").touch()
    path = tmp_path / "p.yaml"
    path.write_text(
        "streams: [{id: a, url: x.mp4}]\noutputs:\n"
        "  mqtt: {host: 127.0.0.1, tls: {ca_file: certs/ca.pem}}\n"
        "  nats: {tls: {ca_file: /etc/ca.pem, cert_file: c.pem, key_file: ~/k.pem}}\n"
    )
    cfg = load_config(path)
    assert cfg.outputs.mqtt is not None and isinstance(cfg.outputs.mqtt.tls, TlsConfig)
    assert cfg.outputs.mqtt.tls.ca_file == str(tmp_path / "certs" / "ca.pem")
    assert cfg.outputs.nats is not None and isinstance(cfg.outputs.nats.tls, TlsConfig)
    assert cfg.outputs.nats.tls.ca_file == "/etc/ca.pem"
    assert cfg.outputs.nats.tls.cert_file == str(tmp_path / "c.pem")
    assert cfg.outputs.nats.tls.key_file == str(Path.home() / "k.pem")


def test_an_output_that_takes_no_alerts_lets_its_cursor_follow_the_journal() -> None:
    from streamd.config import WebhookConfig
    from streamd.outputs.webhooks import WebhookOutput

    hook = WebhookOutput(WebhookConfig(url="http://127.0.0.1:9/x", events=["status"]),
                         Cursor({}, 0))  # fmt: skip
    assert hook.wants("status", "a") and not hook.wants("track", "a")
    assert hook.offer_alert(_alert(1)) and hook.offer_alert(_alert(2))
    assert hook.ledger.cursor() == (Cursor({"a": 2}, 2), True)
    assert hook.mailbox.get(0.0) is None  # nothing to send


def test_validate_names_a_missing_tls_file(tmp_path: Path) -> None:
    from streamd.validate import check_files

    (tmp_path / "x.mp4").touch()
    (tmp_path / "ca.pem").touch()
    path = tmp_path / "p.yaml"
    path.write_text(
        "streams: [{id: a, url: x.mp4}]\noutputs:\n"
        "  mqtt: {host: 127.0.0.1, tls: {ca_file: ca.pem}}\n"
        "  nats: {tls: {ca_file: ca.pem, cert_file: c.pem, key_file: k.pem}}\n"
    )
    assert check_files(load_config(path)) == [
        ("outputs.nats.tls.cert_file", f"no such file: {tmp_path / 'c.pem'}"),
        ("outputs.nats.tls.key_file", f"no such file: {tmp_path / 'k.pem'}"),
    ]
