"""The ``http`` section: live view, status, metrics and health endpoint."""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from streamd.config.base import _Strict


class HttpConfig(_Strict):
    """The daemon's HTTP endpoint: live view (``/``), ``/status``, ``/metrics``, ``/healthz``."""

    listen: str | None = Field(
        "127.0.0.1:8090",
        description="HOST:PORT to serve on (loopback by default); null turns it off.",
    )
    token: str | None = Field(
        None,
        description="Bearer token every request must carry (Authorization: Bearer, or "
        "?token=); required when listen is not a loopback address. Use ${ENV}.",
    )

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$", v):
            raise ValueError("must look like HOST:PORT, e.g. 127.0.0.1:8090")
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
    host = listen.rpartition(":")[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")
