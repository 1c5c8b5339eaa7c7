"""The ``outputs`` section: alerts and events delivered to MQTT, NATS JetStream and webhooks.

Secrets never sit in the pipeline file: a key ending in ``_env`` names the
environment variable that holds it (``password_env: MQTT_PASSWORD``), read when
the configuration is loaded (an unset variable is refused, naming the key) and
again by the outputs process. Off loopback, plaintext is refused unless asked
for by name: MQTT and NATS need TLS (or ``allow_plaintext: true``, for a broker on
a trusted LAN), a webhook needs ``https://``.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from streamd.config.base import _Strict, is_loopback_host

ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
OUTPUT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
# MQTT topic levels and NATS subject tokens: no wildcards, no separators of the other.
_TOPIC = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")
_SUBJECT = re.compile(r"^[A-Za-z0-9_{}-]+(\.[A-Za-z0-9_{}-]+)*$")

NatsKind = Literal["alert", "track", "det"]
HookKind = Literal["alert", "status", "track"]


def _default_subjects() -> dict[NatsKind, str]:
    return {"alert": "streamd.{stream}.alert", "track": "streamd.{stream}.track"}


def _default_hook_events() -> list[HookKind]:
    return ["alert"]


def env_secret(name: str | None, key: str) -> str | None:
    """The value of the environment variable ``name`` (None when no name is given);
    ValueError naming ``key`` when it is not set or empty."""
    if name is None:
        return None
    value = os.environ.get(name)
    if not value:
        raise ValueError(f"{key}: environment variable {name} is not set (or empty)")
    return value


def _check_env(name: str | None) -> None:
    # pydantic names the key already: the reason only.
    if name is not None and not os.environ.get(name):
        raise ValueError(f"environment variable {name} is not set (or empty)")


class TlsConfig(_Strict):
    """TLS towards a broker: the system's CAs unless ``ca_file``; client cert optional."""

    ca_file: str | None = Field(None, description="CA bundle (PEM) the server is checked against.")
    cert_file: str | None = Field(None, description="Client certificate (PEM), if the server asks.")
    key_file: str | None = Field(None, description="Client certificate's key (PEM).")

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class _Delivery(_Strict):
    max_inflight: int = Field(
        100,
        ge=1,
        le=10_000,
        description="Alerts taken from the journal and not yet confirmed, at most; the rest "
        "wait in the journal (nothing lost), so this bounds memory, not delivery.",
    )
    queue: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="Live events (track, status, det; not journaled) waiting at most; beyond "
        "it they are dropped and counted.",
    )


class MqttConfig(_Delivery):
    host: str = Field(..., min_length=1, description="Broker host name or address.")
    port: int | None = Field(None, ge=1, le=65535, description="Default 1883, 8883 with TLS.")
    tls: TlsConfig | bool = Field(
        False, description="true (system CAs) or {ca_file, cert_file, key_file}."
    )
    allow_plaintext: bool = Field(
        False,
        description="Allow a broker off loopback without TLS (a trusted LAN only: alerts and "
        "the password would cross it readable).",
    )
    username_env: str | None = Field(None, pattern=ENV_NAME, description="Env var: user name.")
    password_env: str | None = Field(None, pattern=ENV_NAME, description="Env var: password.")
    client_id: str | None = Field(
        None, max_length=64, description="Default streamd-<host name>-<pid> (a clean session)."
    )
    topic_prefix: str = Field("streamd", description="Topics are <prefix>/<stream>/...")
    qos: Literal[0, 1, 2] = Field(1, description="QoS of alerts and state topics.")
    keepalive_s: int = Field(30, ge=5, le=3600)
    reconnect_max_s: float = Field(
        10.0, ge=1.0, le=600.0, description="Reconnection backoff ceiling (from 1 s, doubling)."
    )
    snapshot: bool = Field(
        True,
        description="An alert's JPEG crop, when it has one, as raw bytes on the retained topic "
        "<prefix>/<stream>/snapshot (the alert JSON says snapshot: true).",
    )
    discovery: bool = Field(
        False,
        description="Home Assistant MQTT discovery: a device per camera with its state, "
        "each zone's occupancy and each line's counts.",
    )
    discovery_prefix: str = Field("homeassistant", description="Home Assistant's prefix.")

    @field_validator("topic_prefix", "discovery_prefix")
    @classmethod
    def _topic(cls, v: str) -> str:
        if not _TOPIC.match(v):
            raise ValueError("topic levels of letters, digits, _ and -, separated by /")
        return v

    @field_validator("username_env")
    @classmethod
    def _user_set(cls, v: str | None) -> str | None:
        _check_env(v)
        return v

    @field_validator("password_env")
    @classmethod
    def _password_set(cls, v: str | None) -> str | None:
        _check_env(v)
        return v

    @model_validator(mode="after")
    def _plaintext_off_loopback(self) -> MqttConfig:
        if self.tls is False and not self.allow_plaintext and not is_loopback_host(self.host):
            raise ValueError(
                f"host {self.host} is not loopback: set tls (true, or ca_file...), or "
                "allow_plaintext: true on a trusted network (alerts and the password would "
                "otherwise cross it readable)"
            )
        if self.password_env is not None and self.username_env is None:
            raise ValueError("password_env needs username_env")
        return self

    @property
    def broker_port(self) -> int:
        return self.port or (1883 if self.tls is False else 8883)


class NatsConfig(_Delivery):
    servers: list[str] = Field(
        default_factory=lambda: ["nats://127.0.0.1:4222"],
        min_length=1,
        description="nats://HOST:PORT or tls://HOST:PORT, no credentials (see *_env).",
    )
    stream: str = Field(
        "STREAMD", pattern=r"^[A-Za-z0-9_-]{1,64}$", description="The JetStream stream."
    )
    subjects: dict[NatsKind, str] = Field(
        default_factory=_default_subjects,
        description="Which events go, and on which subject ({stream}: the stream id). alert "
        "comes from the journal (catches up after an outage); track and det are live.",
    )
    det_every_s: float = Field(
        1.0, gt=0.0, le=3600.0, description="det events: at most one per stream this often."
    )
    create_stream: bool = Field(
        True,
        description="Create the JetStream stream (file storage, the subjects above) if it is "
        "missing; false: it must exist.",
    )
    duplicate_window_s: float = Field(
        600.0,
        ge=1.0,
        le=86400.0,
        description="The created stream's de-duplication window: a redelivery within it "
        "(message id <stream>.<epoch>.<seq>) is stored once.",
    )
    tls: TlsConfig | bool = Field(False, description="true, or {ca_file, cert_file, key_file}.")
    allow_plaintext: bool = Field(False, description="Allow servers off loopback without TLS.")
    user_env: str | None = Field(None, pattern=ENV_NAME, description="Env var: user name.")
    password_env: str | None = Field(None, pattern=ENV_NAME, description="Env var: password.")
    token_env: str | None = Field(None, pattern=ENV_NAME, description="Env var: token.")
    timeout_s: float = Field(5.0, gt=0.0, le=120.0, description="Connect and publish-ack timeout.")

    @field_validator("servers")
    @classmethod
    def _urls(cls, servers: list[str]) -> list[str]:
        for url in servers:
            parts = urlsplit(url)
            if parts.scheme not in ("nats", "tls") or not parts.hostname:
                raise ValueError(f"{url!r}: must look like nats://HOST:PORT or tls://HOST:PORT")
            if parts.username or parts.password:
                raise ValueError("no credentials in the URL: use user_env/password_env/token_env")
        return servers

    @field_validator("subjects")
    @classmethod
    def _subjects(cls, subjects: dict[str, str]) -> dict[str, str]:
        if not subjects:
            raise ValueError("name at least one of alert, track, det")
        for kind, subject in subjects.items():
            if not _SUBJECT.match(subject) or subject.replace("{stream}", "x").count("{"):
                raise ValueError(
                    f"{kind}: {subject!r}: dot-separated tokens of letters, digits, _ and -, "
                    "with {stream} where the stream id goes"
                )
        return subjects

    @field_validator("user_env", "password_env", "token_env")
    @classmethod
    def _secret_set(cls, v: str | None) -> str | None:
        _check_env(v)
        return v

    @model_validator(mode="after")
    def _plaintext_off_loopback(self) -> NatsConfig:
        if self.tls is False and not self.allow_plaintext:
            for url in self.servers:
                parts = urlsplit(url)
                if parts.scheme == "nats" and not is_loopback_host(parts.hostname or ""):
                    raise ValueError(
                        f"server {url} is not loopback: use tls://, set tls, or "
                        "allow_plaintext: true on a trusted network"
                    )
        if (self.user_env is None) != (self.password_env is None):
            raise ValueError("user_env and password_env go together")
        return self


class WebhookConfig(_Delivery):
    url: str = Field(..., description="http(s)://... the JSON is POSTed to; https off loopback.")
    name: str | None = Field(
        None,
        pattern=OUTPUT_NAME,
        description="Names its metrics and its cursor file (default webhook-<hash of url>).",
    )
    events: list[HookKind] = Field(
        default_factory=_default_hook_events, min_length=1, description="What is POSTed."
    )
    secret_env: str | None = Field(
        None,
        pattern=ENV_NAME,
        description="Env var holding the HMAC-SHA256 key: the X-Streamd-Signature header is "
        "sha256=<hex of HMAC(key, '<X-Streamd-Timestamp>.<body>')> (README, Webhooks).",
    )
    timeout_s: float = Field(5.0, gt=0.0, le=120.0, description="Per request.")
    backoff_max_s: float = Field(30.0, ge=0.1, le=3600.0, description="Retry delay ceiling.")

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL")
        if parts.username or parts.password:
            raise ValueError("no credentials in the URL (they would be logged): use secret_env")
        try:
            parts.port  # noqa: B018  # urllib only reads it when a request is made
        except ValueError:
            raise ValueError("its port is not a number from 1 to 65535") from None
        if parts.scheme == "http" and not is_loopback_host(parts.hostname):
            raise ValueError(
                f"{parts.hostname} is not loopback: use https:// (alerts would otherwise cross "
                "the network readable)"
            )
        return url

    @field_validator("secret_env")
    @classmethod
    def _secret_set(cls, v: str | None) -> str | None:
        _check_env(v)
        return v

    @property
    def output_name(self) -> str:
        return self.name or "webhook-" + hashlib.sha256(self.url.encode()).hexdigest()[:8]


class OutputsConfig(_Strict):
    """Where alerts and events go besides the ZeroMQ bus; each output delivers on its own."""

    mqtt: MqttConfig | None = None
    nats: NatsConfig | None = None
    webhooks: list[WebhookConfig] = Field(default_factory=list)
    poll_ms: int = Field(
        100, ge=10, le=5000, description="How often the journal is read for new alerts."
    )

    @model_validator(mode="after")
    def _unique_names(self) -> OutputsConfig:
        seen: set[str] = set()
        for hook in self.webhooks:
            if hook.output_name in seen:
                raise ValueError(f"two webhooks named {hook.output_name!r} (name or url)")
            seen.add(hook.output_name)
        return self

    @property
    def enabled(self) -> bool:
        return self.mqtt is not None or self.nats is not None or bool(self.webhooks)


def resolve_tls_paths(outputs: OutputsConfig, base_dir: Path) -> OutputsConfig:
    """TLS files made absolute against the pipeline file's folder (``~`` expanded), as the
    journal and the CURVE keys are."""

    def tls(t: TlsConfig | bool) -> TlsConfig | bool:
        if not isinstance(t, TlsConfig):
            return t
        paths = {"ca_file": t.ca_file, "cert_file": t.cert_file, "key_file": t.key_file}
        return t.model_copy(update={k: _resolve(v, base_dir) for k, v in paths.items()})

    update: dict[str, MqttConfig | NatsConfig] = {}
    if outputs.mqtt is not None:
        update["mqtt"] = outputs.mqtt.model_copy(update={"tls": tls(outputs.mqtt.tls)})
    if outputs.nats is not None:
        update["nats"] = outputs.nats.model_copy(update={"tls": tls(outputs.nats.tls)})
    return outputs.model_copy(update=update)


def _resolve(path: str | None, base_dir: Path) -> str | None:
    if path is None:
        return None
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else (base_dir / p).resolve())
