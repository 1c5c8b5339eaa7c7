"""NATS JetStream output (nats-py): alerts, track events and sampled det events.

Each message carries the header ``Nats-Msg-Id``: ``<stream>.<epoch>.<seq>``
for an alert (the id the journal gives it, the same on every re-send), and
``<stream>.<epoch>.<seq>.track`` / ``.det`` for live events. JetStream keeps
the first message of an id and acknowledges later ones as duplicates within the
stream's ``duplicate_window``, so an alert re-sent after a restart (the cursor
is saved twice a second; the rest is sent again) is stored once.

Alerts are published one at a time, each awaited until JetStream's ack (stored
on the broker), in journal order, and retried with backoff while the server is
away (nats-py reconnects meanwhile). Subjects: ``outputs.nats.subjects`` with
``{stream}`` replaced by the stream id. The client runs its asyncio loop on a
thread of its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import threading
import time
from typing import Any

import nats
from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError

from streamd.config.outputs import NatsConfig, TlsConfig, env_secret
from streamd.outputs.base import Backoff, Cursor, JournaledAlert, LiveEvent, Output

log = logging.getLogger(__name__)

LIVE_TRIES = 2


class NatsOutput(Output):
    def __init__(self, cfg: NatsConfig, cursor: Cursor) -> None:
        kinds = [k for k in cfg.subjects if k != "alert"]
        super().__init__("nats", cursor, cfg.max_inflight, cfg.queue, kinds,
                         alerts="alert" in cfg.subjects)  # fmt: skip
        self.cfg = cfg
        self._stop = threading.Event()
        self._last_det: dict[str, float] = {}  # stream → monotonic time of the last det sent
        self._thread = threading.Thread(target=self._main, name="output-nats", daemon=True)
        self._secrets = {
            "user": env_secret(cfg.user_env, "outputs.nats.user_env"),
            "password": env_secret(cfg.password_env, "outputs.nats.password_env"),
            "token": env_secret(cfg.token_env, "outputs.nats.token_env"),
        }

    def wants(self, kind: str, stream: str | None) -> bool:
        if kind not in self.kinds or stream is None:
            return False
        if kind == "det":  # sampled per stream: this one is taken, the next ones skipped
            now = time.monotonic()
            if now - self._last_det.get(stream, -1e9) < self.cfg.det_every_s:
                return False
            self._last_det[stream] = now
        return True

    def start(self) -> None:
        self._thread.start()

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        nc = await self._connect()
        if nc is None:
            return
        try:
            js = nc.jetstream(timeout=self.cfg.timeout_s)
            if not await self._ensure_stream(js):
                return
            while not self._stop.is_set():
                item = await asyncio.to_thread(self.mailbox.get, 0.5)
                if isinstance(item, JournaledAlert):
                    await self._deliver_alert(js, item)
                elif isinstance(item, LiveEvent):
                    await self._deliver_event(js, item)
        finally:
            self.connected = False
            try:
                await asyncio.wait_for(nc.drain(), 1.0)
            except (TimeoutError, NatsError, OSError):
                await nc.close()

    async def _connect(self) -> NatsClient | None:
        backoff = Backoff(0.5, 10.0)
        while not self._stop.is_set():
            try:
                nc = await nats.connect(**self._options())
            except (NatsError, OSError, TimeoutError) as e:
                self.failed()
                delay = backoff.next()
                log.warning("nats: cannot connect to %s (%s); again in %.1fs",
                            ", ".join(self.cfg.servers), e, delay)  # fmt: skip
                await asyncio.to_thread(self._stop.wait, delay)
                continue
            self.connected = True
            url = nc.connected_url  # host and port only: never a URL's user part
            log.info(
                "nats: connected to %s:%s", url.hostname if url else "?", url.port if url else "?"
            )
            return nc
        return None

    def _options(self) -> dict[str, Any]:
        cfg = self.cfg

        async def disconnected() -> None:
            if self.connected:
                log.warning("nats: disconnected; reconnecting")
                self.failed()
            self.connected = False

        async def reconnected() -> None:
            self.connected = True
            log.info("nats: reconnected")

        async def error(e: Exception) -> None:
            log.debug("nats: %s", e)

        options: dict[str, Any] = {
            "servers": cfg.servers,
            "connect_timeout": cfg.timeout_s,
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 1.0,
            "disconnected_cb": disconnected,
            "reconnected_cb": reconnected,
            "error_cb": error,
            "name": "streamd",
        }
        if cfg.tls is not False or any(s.startswith("tls://") for s in cfg.servers):
            tls = cfg.tls if isinstance(cfg.tls, TlsConfig) else TlsConfig()
            context = ssl.create_default_context(cafile=tls.ca_file)
            if tls.cert_file is not None:
                context.load_cert_chain(tls.cert_file, tls.key_file)
            options["tls"] = context
        options.update({k: v for k, v in self._secrets.items() if v is not None})
        return options

    async def _ensure_stream(self, js: JetStreamContext) -> bool:
        cfg = self.cfg
        backoff = Backoff(0.5, 10.0)
        while not self._stop.is_set():
            try:
                await js.stream_info(cfg.stream)
                return True
            except NotFoundError:
                if not cfg.create_stream:
                    log.error("nats: JetStream stream %s does not exist (create_stream is "
                              "false); retrying", cfg.stream)  # fmt: skip
                else:
                    subjects = sorted({s.replace("{stream}", "*") for s in cfg.subjects.values()})
                    await js.add_stream(StreamConfig(
                        name=cfg.stream, subjects=subjects, storage=StorageType.FILE,
                        duplicate_window=cfg.duplicate_window_s,
                    ))  # fmt: skip
                    log.info("nats: created JetStream stream %s (%s)", cfg.stream,
                             ", ".join(subjects))  # fmt: skip
                    return True
            except (NatsError, OSError, TimeoutError) as e:
                log.warning("nats: JetStream not ready (%s)", e)
            self.failed()
            await asyncio.to_thread(self._stop.wait, backoff.next())
        return False

    def _subject(self, kind: str, stream: str) -> str:
        return self.cfg.subjects[kind].replace("{stream}", stream)  # type: ignore[index]

    async def _deliver_alert(self, js: JetStreamContext, alert: JournaledAlert) -> None:
        body = json.dumps(alert.payload, separators=(",", ":")).encode()
        subject = self._subject("alert", alert.stream)
        backoff = Backoff(0.2, 10.0)
        while not self._stop.is_set():
            try:
                ack = await js.publish(subject, body, headers={"Nats-Msg-Id": alert.msg_id})
            except (NatsError, OSError, TimeoutError) as e:
                self.failed()
                delay = backoff.next()
                log.warning("nats: alert %s not stored (%s); again in %.1fs", alert.msg_id,
                            e or type(e).__name__, delay)  # fmt: skip
                await asyncio.to_thread(self._stop.wait, delay)
                continue
            if ack.duplicate:
                self.sent("duplicate")  # stored before (a re-send): JetStream kept one
            self.confirmed(alert)
            return

    async def _deliver_event(self, js: JetStreamContext, ev: LiveEvent) -> None:
        if ev.stream is None:
            return
        body = json.dumps(ev.payload, separators=(",", ":")).encode()
        subject = self._subject(ev.kind, ev.stream)
        for _ in range(LIVE_TRIES):
            try:
                await js.publish(subject, body, headers={"Nats-Msg-Id": ev.msg_id})
            except (NatsError, OSError, TimeoutError):
                self.failed()
                continue
            self.sent(ev.kind)
            return
        self.dropped("error")

    def close(self, timeout_s: float) -> None:
        self._stop.set()
        self.mailbox.close()
        self._thread.join(timeout_s)
