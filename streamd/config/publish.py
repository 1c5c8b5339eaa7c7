"""The ``publish`` section: the ZeroMQ PUB socket events go out on."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from streamd.config.base import _Strict


class PublishConfig(_Strict):
    endpoint: str = Field("tcp://127.0.0.1:5556", description="ZeroMQ PUB bind endpoint.")
    hwm: int = Field(1000, ge=1, description="Send high-water mark per subscriber.")
    sndbuf_kib: int = Field(
        256,
        ge=0,
        le=65536,
        description="Kernel send buffer per subscriber connection (0 = the OS default, which "
        "can hold megabytes of stale events for a stalled subscriber).",
    )
    heartbeat_s: float = Field(1.0, gt=0.0, le=60.0)

    @field_validator("endpoint")
    @classmethod
    def _zmq_endpoint(cls, v: str) -> str:
        # inproc:// cannot work: subscribers live in other processes.
        if not re.match(r"^(tcp|ipc)://.+", v):
            raise ValueError("must look like tcp://HOST:PORT or ipc://PATH")
        return v
