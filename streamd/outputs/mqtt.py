"""MQTT output (paho-mqtt): alerts, retained state topics, Home Assistant discovery.

Topics (``<p>`` is ``topic_prefix``):

| topic | retained | payload |
|---|---|---|
| ``<p>/availability`` | yes | ``online``; ``offline`` at stop, and as the will if streamd dies |
| ``<p>/<stream>/alert`` | no | the alert's JSON, the same fields as the ZeroMQ event |
| ``<p>/<stream>/snapshot`` | yes | the last alert's JPEG crop (alerts with ``snapshot: true``) |
| ``<p>/<stream>/state`` | yes | the source state: ``streaming``, ``reconnecting``, ... |
| ``<p>/<stream>/availability`` | yes | ``online`` while streaming, else ``offline`` |
| ``<p>/<stream>/zone/<zone>/occupancy`` | yes | tracks inside now (an integer) |
| ``<p>/<stream>/line/<line>/counts`` | yes | ``{"in": n, "out": m}`` (since its process began) |

Alerts come from the journal and are handed to paho at most ``max_inflight`` at
a time; paho keeps each until the broker's PUBACK (QoS 1) and sends again what
was unacknowledged when a connection comes back, in order. The cursor moves on
PUBACK only, so a restart re-sends the rest. State topics are the latest value
per topic (nothing queues while the broker is away): on every (re)connection
all of them, and the discovery configs, are published again. A zone or line that a
camera's heartbeat stops naming leaves an empty value (a tombstone) in their place:
published like any value, it deletes the broker's retained copy and the Home
Assistant entity, again on every connection. So does every retained topic of a camera
the heartbeat stops naming (removed at runtime: API or SIGHUP), its snapshot included.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import ssl
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from streamd.config.outputs import MqttConfig, TlsConfig, env_secret
from streamd.outputs.base import Cursor, JournaledAlert, LiveEvent, Output
from streamd.outputs.homeassistant import discovery_configs

log = logging.getLogger(__name__)

STATE_KINDS = ("status", "heartbeat")


class MqttOutput(Output):
    def __init__(self, cfg: MqttConfig, cursor: Cursor) -> None:
        super().__init__("mqtt", cursor, cfg.max_inflight, cfg.queue, STATE_KINDS)
        self.cfg = cfg
        self.prefix = cfg.topic_prefix
        self._client = self._make_client()
        self._lock = threading.Lock()  # never held while calling into paho (its locks)
        self._pending: dict[int, JournaledAlert | str] = {}  # mid → alert, or a kind
        self._early: set[int] = set()  # acknowledged before publish() returned
        self._state: dict[str, bytes] = {}  # retained topic → its latest payload
        self._discovery: dict[str, bytes] = {}
        # Per camera, its retained zone/line topics and discovery configs: a zone or line
        # removed at runtime (API, SIGHUP) has its retained copies cleared, not left as
        # entities Home Assistant shows forever.
        self._regions: dict[str, set[str]] = {}
        self._named: set[str] = set()  # the cameras the last heartbeat named
        # Every discovery config published for a camera, its placeholder rows' included
        # (its state entity appears before its process reports).
        self._configs: dict[str, set[str]] = {}
        # Cameras removed since: their alerts still due from the journal go out, but
        # leave no snapshot retained for a camera that no longer exists.
        self._removed: set[str] = set()
        self._resync = threading.Event()  # (re)connected: publish state and discovery
        self._thread = threading.Thread(target=self._run, name="output-mqtt", daemon=True)

    def _make_client(self) -> mqtt.Client:
        cfg = self.cfg
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            # Unique per process unless set: two daemons must not take each other's session.
            client_id=cfg.client_id or f"streamd-{socket.gethostname()[:32]}-{os.getpid()}",
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        if cfg.username_env is not None:
            client.username_pw_set(
                env_secret(cfg.username_env, "outputs.mqtt.username_env"),
                env_secret(cfg.password_env, "outputs.mqtt.password_env"),
            )
        if cfg.tls is not False:
            tls = cfg.tls if isinstance(cfg.tls, TlsConfig) else TlsConfig()
            client.tls_set(ca_certs=tls.ca_file, certfile=tls.cert_file, keyfile=tls.key_file,
                           cert_reqs=ssl.CERT_REQUIRED)  # fmt: skip
        client.will_set(f"{self.prefix}/availability", "offline", qos=1, retain=True)
        client.reconnect_delay_set(1, int(max(1, cfg.reconnect_max_s)))
        # Every alert we hand over may be in flight: the ledger bounds them, not paho.
        client.max_inflight_messages_set(cfg.max_inflight + 1000)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_connect_fail = self._on_connect_fail
        client.on_publish = self._on_publish
        return client

    # -- paho's network thread ------------------------------------------------------------

    def _on_connect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.error("mqtt: broker %s:%d refused the connection: %s", self.cfg.host,
                      self.cfg.broker_port, reason)  # fmt: skip
            self.failed()
            return
        log.info("mqtt: connected to %s:%d", self.cfg.host, self.cfg.broker_port)
        self.connected = True
        self._resync.set()
        self.mailbox.wake()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if self.connected and not self.mailbox.closed:
            log.warning("mqtt: disconnected from %s:%d (%s); reconnecting", self.cfg.host,
                        self.cfg.broker_port, reason)  # fmt: skip
            self.failed()
        self.connected = False

    def _on_connect_fail(self, _c: mqtt.Client, _u: Any) -> None:
        self.failed()

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, _r: Any, _p: Any) -> None:
        with self._lock:
            what = self._pending.pop(mid, None)
            if what is None:
                self._early.add(mid)
                return
        self._done(what)

    def _done(self, what: JournaledAlert | str) -> None:
        if isinstance(what, JournaledAlert):
            self.confirmed(what)
        else:
            self.sent(what)

    # -- the output's thread ----------------------------------------------------------------

    def start(self) -> None:
        self._client.connect_async(self.cfg.host, self.cfg.broker_port, self.cfg.keepalive_s)
        self._client.loop_start()  # paho's thread: connects, retries with backoff
        self._thread.start()

    def _run(self) -> None:
        while not self.mailbox.closed:
            if self._resync.is_set():
                self._resync.clear()
                self._publish_all_state()
            item = self.mailbox.get(0.5)
            if isinstance(item, JournaledAlert):
                self._alert(item)
            elif isinstance(item, LiveEvent):
                self._event(item)

    def _publish(self, topic: str, payload: bytes | str, what: JournaledAlert | str,
                 retain: bool = False) -> None:  # fmt: skip
        info = self._client.publish(topic, payload, qos=self.cfg.qos, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            # Queued nowhere (paho refused it): an alert stays unconfirmed, so it is sent
            # again after a restart; say so.
            log.error("mqtt: %s not queued: %s", topic, mqtt.error_string(info.rc))
            self.dropped("error")
            return
        with self._lock:
            early = info.mid in self._early
            if early:
                self._early.discard(info.mid)
            else:
                self._pending[info.mid] = what
        if early:
            self._done(what)

    def _alert(self, alert: JournaledAlert) -> None:
        body = json.dumps(alert.payload, separators=(",", ":"))
        base = f"{self.prefix}/{alert.stream}"
        if alert.snapshot is not None and self.cfg.snapshot and alert.stream not in self._removed:
            self._state.pop(f"{base}/snapshot", None)  # its removal's tombstone, if re-added
            self._publish(f"{base}/snapshot", alert.snapshot, "snapshot", retain=True)
        # Even while the broker is away: paho keeps it and sends it on reconnection.
        self._publish(f"{base}/alert", body, alert)

    def _event(self, ev: LiveEvent) -> None:
        if ev.kind == "status" and ev.stream is not None:
            self._removed.discard(ev.stream)
            self._stream_state(ev.stream, str(ev.payload.get("state")))
        elif ev.kind == "heartbeat":
            streams: dict[str, Any] = ev.payload.get("streams") or {}
            for sid in sorted(self._named - set(streams)):
                self._clear_camera(sid)
            self._named = set(streams)
            for sid, row in streams.items():
                self._removed.discard(sid)
                if row.get("state") is not None:
                    self._stream_state(sid, str(row["state"]))
                now: set[str] = set()
                for zone, n in (row.get("zones") or {}).items():
                    now.add(topic := f"{self.prefix}/{sid}/zone/{zone}/occupancy")
                    self._set(topic, str(int(n)))
                for line, counts in (row.get("lines") or {}).items():
                    body = json.dumps({"in": counts.get("in", 0), "out": counts.get("out", 0)})
                    now.add(topic := f"{self.prefix}/{sid}/line/{line}/counts")
                    self._set(topic, body)
                if self.cfg.discovery:
                    configs = self._discover(sid, row)
                    self._configs.setdefault(sid, set()).update(configs)
                    now |= configs
                if _names_its_regions(row):
                    self._clear_gone(sid, now)

    def _stream_state(self, stream: str, state: str) -> None:
        self._set(f"{self.prefix}/{stream}/state", state)
        up = "online" if state == "streaming" else "offline"
        self._set(f"{self.prefix}/{stream}/availability", up)

    def _set(self, topic: str, value: str) -> None:
        body = value.encode()
        if self._state.get(topic) == body:
            return
        self._state[topic] = body
        if self.connected:  # else on the next connection, with the rest
            self._publish(topic, body, "state", retain=True)

    def _discover(self, stream: str, row: dict[str, Any]) -> set[str]:
        """Publish this camera's changed discovery configs; their topics."""
        configs = discovery_configs(self.cfg.discovery_prefix, self.prefix, stream,
                                    list(row.get("zones") or {}),
                                    list(row.get("lines") or {}))  # fmt: skip
        for topic, config in configs.items():
            body = json.dumps(config, sort_keys=True).encode()
            if self._discovery.get(topic) == body:
                continue
            self._discovery[topic] = body
            if self.connected:
                self._publish(topic, body, "discovery", retain=True)
        return set(configs)

    def _clear_gone(self, stream: str, now: set[str]) -> None:
        """Topics of this camera's zones and lines that its heartbeat no longer names get
        an empty value, published as any value is (while connected, and again on every
        connection): the broker deletes its retained copy, Home Assistant the entity. A
        region named again overwrites it."""
        gone = self._regions.get(stream, set()) - now
        for topic in sorted(gone, key=lambda t: (t not in self._discovery, t)):  # configs first
            store = self._discovery if topic in self._discovery else self._state
            store[topic] = b""
            if self.connected:
                kind = "discovery" if store is self._discovery else "state"
                self._publish(topic, b"", kind, retain=True)
        self._regions[stream] = now

    def _clear_camera(self, stream: str) -> None:
        """A camera the heartbeat stopped naming was removed: its zones, lines and Home
        Assistant configs go as a removed zone's do, and its state, availability and
        snapshot topics get the same empty value."""
        self._regions[stream] = self._regions.get(stream, set()) | self._configs.pop(stream, set())
        self._clear_gone(stream, set())
        del self._regions[stream]
        for leaf in ("state", "availability", "snapshot"):
            topic = f"{self.prefix}/{stream}/{leaf}"
            self._state[topic] = b""
            if self.connected:
                self._publish(topic, b"", "state", retain=True)
        self._removed.add(stream)

    def _publish_all_state(self) -> None:
        self._publish(f"{self.prefix}/availability", "online", "state", retain=True)
        for topic, body in list(self._discovery.items()):
            self._publish(topic, body, "discovery", retain=True)
        for topic, body in list(self._state.items()):
            self._publish(topic, body, "state", retain=True)

    def close(self, timeout_s: float) -> None:
        self.mailbox.close()
        self._thread.join(timeout_s / 2)
        if self.connected:
            info = self._client.publish(f"{self.prefix}/availability", "offline", qos=1,
                                        retain=True)  # fmt: skip
            # Not sent in time: the broker's copy of our will says offline anyway.
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout_s / 2)
        self._client.disconnect()
        self._client.loop_stop()


def _names_its_regions(row: dict[str, Any]) -> bool:
    """Whether a heartbeat row says which zones and lines its camera has (none at all,
    once its last is removed): a row its camera has not filled yet (just added) has
    none because they are not known, and must not clear them."""
    return bool(row.get("reported")) and "zones" in row and "lines" in row
