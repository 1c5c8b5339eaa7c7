"""The ``http`` section: live view, status, metrics and health endpoint."""

from __future__ import annotations

import re

from pydantic import Field, ValidationInfo, field_validator, model_validator

from streamd.config.base import _Strict, is_loopback_host

MIN_TOKEN_CHARS = 16  # off loopback: a guessable token is no token


class HttpConfig(_Strict):
    """The daemon's HTTP endpoint: live view (``/``), ``/status``, ``/metrics``, ``/healthz``."""

    listen: str | None = Field(
        "127.0.0.1:8090",
        description="HOST:PORT to serve on (loopback by default); null turns it off.",
    )
    token: str | None = Field(
        None,
        description="Bearer token every request must carry (Authorization: Bearer, or "
        f"?token=); required when listen is not a loopback address, and then at least "
        f"{MIN_TOKEN_CHARS} characters. Never empty: leave it out (null) for no token on "
        "loopback. Use ${ENV}.",
    )

    max_connections: int = Field(
        4096,
        ge=8,
        le=65536,
        description="Open connections at most (idle ones included); beyond it a new "
        "connection is answered 503 at once. The open-files limit is raised to fit.",
    )
    max_viewers: int = Field(
        16,
        ge=1,
        le=1024,
        description="MJPEG streams (/streams/<id>.mjpg) played at once, all streams "
        "together; each holds a worker thread. Beyond it a viewer is answered 503.",
    )
    idle_timeout_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="A connection that sends no request this long is closed; a request "
        "or an answer that makes no progress this long ends (a stalled viewer too).",
    )

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$", v):
            raise ValueError("must look like HOST:PORT, e.g. 127.0.0.1:8090")
        return v

    @field_validator("token")
    @classmethod
    def _token_strength(cls, v: str | None, info: ValidationInfo) -> str | None:
        # An unset ${HTTP_TOKEN:-} substitutes to "": that must not mean "no auth".
        if v is None:
            return v
        if not v.strip():
            raise ValueError(
                "empty (an unset ${VAR:-}?): set a token, or leave the key out on a loopback "
                "address"
            )
        if v != v.strip():
            raise ValueError("begins or ends with whitespace, which an HTTP header drops")
        listen = info.data.get("listen")
        if listen is not None and not _loopback(listen) and len(v) < MIN_TOKEN_CHARS:
            raise ValueError(
                f"has {len(v)} characters; listen {listen} is reachable from other machines, so "
                f"it needs at least {MIN_TOKEN_CHARS} (e.g. `openssl rand -hex 16`)"
            )
        return v

    @model_validator(mode="after")
    def _token_off_loopback(self) -> HttpConfig:
        if self.listen is not None and self.token is None and not _loopback(self.listen):
            raise ValueError(
                f"listen {self.listen} is reachable from other machines: set http.token "
                "(the live view and status would otherwise be open to anyone)"
            )
        return self


def _loopback(listen: str) -> bool:
    return is_loopback_host(listen.rpartition(":")[0])
