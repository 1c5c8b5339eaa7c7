"""The ``security`` section: CURVE keys for the public sockets (events and journal requests).

With ``security.curve`` set, ``publish.endpoint`` and ``journal.endpoint`` encrypt
everything and accept only clients whose public key is in ``authorized_clients``.
Without it they are plain ZeroMQ, which :func:`reachable_without_keys` allows on
loopback and ``ipc://`` only. Key files are read at start-up (and by ``streamd
validate``), not here: this module only knows their paths.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field

from streamd.config.base import _Strict, is_loopback_host


class CurveConfig(_Strict):
    """The daemon's key pair and the public keys of the clients it lets in."""

    server_secret: str = Field(
        ...,
        description="The daemon's secret certificate (a .key_secret file from `streamd keys`; "
        "it holds the public key too). Relative to the pipeline file.",
    )
    authorized_clients: str = Field(
        ...,
        description="Folder of client public certificates (*.key); only these may subscribe or "
        "ask the journal. Read at start-up. Relative to the pipeline file.",
    )


class SecurityConfig(_Strict):
    curve: CurveConfig | None = Field(
        None,
        description="CURVE encryption and client authentication on publish.endpoint and "
        "journal.endpoint; required when either is reachable from other machines.",
    )


def reachable_without_keys(endpoint: str) -> bool:
    """True when a plain socket bound at ``endpoint`` would be open to other machines.

    Only explicit loopback addresses count as local: a wildcard, a host name or an
    interface name may be (or later become) reachable. ``ipc://`` is guarded by file
    permissions instead.
    """
    if not endpoint.startswith("tcp://"):
        return False
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    return not (is_loopback_host(host) and re.fullmatch(r"\d+|\*", port))


def resolve_key_paths(security: SecurityConfig, base_dir: Path) -> SecurityConfig:
    """Key paths made absolute against the pipeline file's folder (as journal.path is)."""
    curve = security.curve
    if curve is None:
        return security

    def resolve(path: str) -> str:
        p = Path(path).expanduser()
        return str(p if p.is_absolute() else (base_dir / p).resolve())

    resolved = curve.model_copy(
        update={
            "server_secret": resolve(curve.server_secret),
            "authorized_clients": resolve(curve.authorized_clients),
        }
    )
    return security.model_copy(update={"curve": resolved})
