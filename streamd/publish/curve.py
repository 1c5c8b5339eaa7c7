"""CURVE security for the public sockets: key files, client authentication, socket options.

Keys are pyzmq certificate files (``zmq.auth.create_certificates``): ``NAME.key``
holds a public key, ``NAME.key_secret`` the public and the secret key. The daemon
reads its own secret certificate and a folder of authorized client ``*.key``
files once, at start-up; :func:`serve` makes a socket a CURVE server and answers
its context's ZAP requests on a thread of its own, so a client whose key is not
authorized is refused during the handshake: it never gets a message. It fails
closed: the server socket enforces its ZAP domain, so should that thread ever be
gone every client is refused (libzmq's default would let any key in), and a
request the thread cannot judge is refused, not fatal to it. Secret keys stay in
memory: never logged, never in a ``repr``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tempfile
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq
import zmq.auth
from zmq.utils import z85

if TYPE_CHECKING:  # the client library imports this module: no pydantic at run time
    from streamd.config import CurveConfig

log = logging.getLogger(__name__)

ZAP_DOMAIN = "streamd"
ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # where libzmq asks (RFC 27)
ZAP_VERSION = b"1.0"


class KeyFileError(Exception):
    """A key file (or folder) named by ``key`` cannot be used; nothing was started."""

    def __init__(self, key: str, path: str | Path, reason: str) -> None:
        self.key = key
        super().__init__(f"{key} {path}: {reason}")


@dataclass(frozen=True, slots=True)
class ServerKeys:
    """The daemon's key pair and the (z85) public keys of the clients it lets in."""

    public: bytes
    secret: bytes = field(repr=False)
    authorized: frozenset[bytes]

    def allowing(self, public: bytes) -> ServerKeys:
        """These keys, with one more client let in (the supervisor's own status board)."""
        return replace(self, authorized=self.authorized | {public})


@dataclass(frozen=True, slots=True)
class ClientKeys:
    """A client's key pair and the public key of the daemon it trusts."""

    public: bytes
    secret: bytes = field(repr=False)
    server_public: bytes

    @classmethod
    def load(cls, client_secret: str | Path, server_public: str | Path) -> ClientKeys:
        """From the client's ``.key_secret`` file and the daemon's ``.key`` file."""
        public, secret = _read_pair(client_secret, "client key")
        server, _ = _read_certificate(server_public, "server key")
        return cls(public, secret, server)

    @classmethod
    def ephemeral(cls, server_public: bytes) -> ClientKeys:
        """A fresh key pair that lives only in this process."""
        public, secret = zmq.curve_keypair()
        return cls(public, secret, server_public)


def load_server_keys(curve: CurveConfig) -> ServerKeys:
    """Read ``security.curve``'s files; :class:`KeyFileError` names the key at fault."""
    public, secret = _read_pair(curve.server_secret, "security.curve.server_secret")
    _warn_if_shared(Path(curve.server_secret).expanduser())
    folder = Path(curve.authorized_clients).expanduser()  # load_config did; a caller may not
    if not folder.is_dir():
        raise KeyFileError("security.curve.authorized_clients", folder, "not a folder")
    try:
        authorized = frozenset(zmq.auth.load_certificates(folder))
    except (OSError, ValueError) as e:
        raise KeyFileError("security.curve.authorized_clients", folder, str(e)) from None
    for key in authorized:
        _check_z85(key, "security.curve.authorized_clients", folder)
    if not authorized:
        log.warning("no client keys (*.key) in %s: no subscriber can connect", folder)
    return ServerKeys(public, secret, authorized)


def serve(sock: zmq.Socket[Any], keys: ServerKeys) -> ZapHandler:
    """Make ``sock`` (not yet bound) a CURVE server that lets in only authorized clients.

    One server socket per context: the context gets its own ZAP handler, returned so
    that its owner can show in health whether it is alive.
    """
    handler = ZapHandler(sock.context, keys.authorized)
    handler.start()
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.zap_domain = ZAP_DOMAIN.encode()
    # Without it libzmq lets every client in when no ZAP handler answers: fail closed.
    sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
    sock.curve_server = True
    return handler


def connect_with(sock: zmq.Socket[Any], keys: ClientKeys | None) -> None:
    """CURVE client options on ``sock`` (before it connects); None leaves it plain."""
    if keys is None:
        return
    sock.curve_serverkey = keys.server_public
    sock.curve_publickey = keys.public
    sock.curve_secretkey = keys.secret


def make_key_pair(folder: Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public, 0644) and ``NAME.key_secret`` (0600) into ``folder``.

    Never overwrites (FileExistsError). The pair is written in a private (0700)
    folder first, so the secret is never readable by others, not even for a moment.
    """
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
        raise ValueError(f"key name {name!r}: letters, digits, '_', '.', '-' only")
    folder.mkdir(parents=True, exist_ok=True)
    targets = (folder / f"{name}.key", folder / f"{name}.key_secret")
    for target in targets:
        if target.exists():
            raise FileExistsError(f"{target} exists (not overwritten)")
    staging = Path(tempfile.mkdtemp(prefix=".streamd-keys-", dir=folder))
    try:
        made = [Path(p) for p in zmq.auth.create_certificates(staging, name)]
        for source, target, mode in zip(made, targets, (0o644, 0o600), strict=True):
            source.chmod(mode)
            os.link(source, target)  # fails rather than replace a file made meanwhile
    finally:
        shutil.rmtree(staging)
    return targets


def zap_reply(request: list[bytes], authorized: frozenset[bytes]) -> list[bytes]:
    """The ZAP (RFC 27) reply to ``request``: 200 for a CURVE client in our domain whose
    (z85) key is authorized, or a plain-socket (NULL) peer of the context's internal
    sockets, as pyzmq's Authenticator allowed; 400 for anything else."""
    request_id = request[1] if len(request) > 1 else b""
    if len(request) < 6 or request[0] != ZAP_VERSION:
        return _zap_answer(request_id, b"400", b"malformed ZAP request")
    domain, mechanism, credentials = request[2], request[5], request[6:]
    if mechanism == b"NULL":
        allowed = True
    else:
        allowed = (
            mechanism == b"CURVE"
            and domain == ZAP_DOMAIN.encode()
            and len(credentials) == 1
            and len(credentials[0]) == 32
            and z85.encode(credentials[0]) in authorized
        )
    return _zap_answer(request_id, *((b"200", b"OK") if allowed else (b"400", b"NO ACCESS")))


def _zap_answer(request_id: bytes, code: bytes, text: bytes) -> list[bytes]:
    return [ZAP_VERSION, request_id, code, text, b"", b""]  # no user id, no metadata


class ZapHandler(threading.Thread):
    """Answers one context's ZAP requests until the context is terminated.

    Not pyzmq's ``ThreadAuthenticator``: that one must be stopped before its context
    can be terminated, and the sockets' owners terminate their contexts in
    ``close()``; this thread needs no stop. ``is_alive()`` goes into health.
    """

    def __init__(self, ctx: zmq.Context[Any], authorized: frozenset[bytes]) -> None:
        super().__init__(name="zap", daemon=True)
        self._authorized = authorized
        self._zap: zmq.Socket[Any] = ctx.socket(zmq.REP)
        self._zap.bind(ZAP_ENDPOINT)  # now, before the server binds and a client knocks

    def run(self) -> None:
        try:
            while True:
                try:
                    request = self._zap.recv_multipart()
                except zmq.ContextTerminated:
                    return
                self._zap.send_multipart(self._judge(request))
        finally:
            self._zap.close(linger=0)  # lets the context's term() return

    def _judge(self, request: list[bytes]) -> list[bytes]:
        try:
            return zap_reply(request, self._authorized)
        except Exception:
            # One request that cannot be judged is refused; the thread goes on, since
            # without it no client at all gets in.
            log.exception("ZAP: could not judge a client's handshake; refused")
            return _zap_answer(request[1] if len(request) > 1 else b"", b"500", b"error")


def _read_certificate(path: str | Path, key: str) -> tuple[bytes, bytes | None]:
    path = Path(path).expanduser()
    if not path.exists():
        raise KeyFileError(key, path, "no such file")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise KeyFileError(key, path, _reason(e)) from None
    _check_z85(public, key, path)
    return public, secret


def _read_pair(path: str | Path, key: str) -> tuple[bytes, bytes]:
    public, secret = _read_certificate(path, key)
    if secret is None:
        raise KeyFileError(key, path, "has no secret key (give the .key_secret file)")
    _check_z85(secret, key, path)
    return public, secret


def _reason(e: Exception) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"cannot read: {e.strerror}"
    return str(e)


def _check_z85(value: bytes, key: str, path: str | Path) -> None:
    # A mangled key would otherwise surface as EINVAL from setsockopt, naming nothing.
    try:
        ok = len(value) == 40 and len(z85.decode(value)) == 32
    except (ValueError, KeyError, IndexError):
        ok = False
    if not ok:
        raise KeyFileError(key, path, "not a CURVE key (40 z85 characters expected)")


def _warn_if_shared(path: Path) -> None:
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        log.warning("%s is readable by other users: chmod 600 it", path)
