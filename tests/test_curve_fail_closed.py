"""CURVE fails closed (issue 13): no ZAP handler means no client, not every client.

libzmq lets any key in when a socket names a ZAP domain but nobody answers ZAP
requests, so a dead handler thread would silently open the daemon. Real CURVE
sockets on tcp, the real ZAP handler, the daemon's real status board.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from zmq.utils import z85

from streamd.app import Daemon
from streamd.config import load_config
from streamd.publish import curve
from streamd.publish.curve import ClientKeys, ServerKeys, ZapHandler, make_key_pair, serve

from .daemon import write_pipeline
from .util import free_port


@pytest.fixture
def keys(tmp_path: Path) -> tuple[ServerKeys, ClientKeys, ClientKeys]:
    """The server's keys (alice authorized), alice's and mallory's client keys."""
    server_public, server_secret = zmq.curve_keypair()
    alice = ClientKeys.ephemeral(server_public)
    mallory = ClientKeys.ephemeral(server_public)
    return ServerKeys(server_public, server_secret, frozenset({alice.public})), alice, mallory


@pytest.fixture
def server(
    keys: tuple[ServerKeys, ClientKeys, ClientKeys],
) -> Iterator[tuple[str, ZapHandler]]:
    """A REP CURVE server answering every request with b"ok", and its ZAP handler."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 0)
    handler = serve(sock, keys[0])
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    sock.bind(endpoint)
    stop = False

    def echo() -> None:
        while not stop:
            if sock.poll(50):
                sock.recv()
                sock.send(b"ok")

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    yield endpoint, handler
    stop = True
    thread.join(2)
    sock.close()
    ctx.term()  # ends the handler too


def answered(endpoint: str, client: ClientKeys, timeout_s: float = 1.5) -> bool:
    """Whether a REQ client with these keys gets a reply."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    with ctx.socket(zmq.REQ) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        curve.connect_with(sock, client)
        sock.connect(endpoint)
        sock.send(b"hello")
        return bool(sock.poll(int(timeout_s * 1000)))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_zap_handler_lets_no_client_in(
    server: tuple[str, ZapHandler],
    keys: tuple[ServerKeys, ClientKeys, ClientKeys],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint, handler = server
    _, alice, mallory = keys
    assert answered(endpoint, alice) and not answered(endpoint, mallory)

    def die(*_: Any) -> list[bytes]:
        raise SystemExit  # whatever ends the thread: it is gone, its socket closed

    monkeypatch.setattr(curve, "zap_reply", die)
    assert not answered(endpoint, mallory, 1.0)  # the request that ends it
    deadline = time.monotonic() + 5
    while handler.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not handler.is_alive()
    # libzmq's default here is to let any key in; enforced, nobody gets in.
    assert not answered(endpoint, mallory)
    assert not answered(endpoint, alice)


def test_a_request_the_handler_cannot_judge_is_refused_and_the_handler_goes_on(
    server: tuple[str, ZapHandler],
    keys: tuple[ServerKeys, ClientKeys, ClientKeys],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint, handler = server
    _, alice, mallory = keys
    real = curve.zap_reply

    def fail_once(request: list[bytes], authorized: frozenset[bytes]) -> list[bytes]:
        monkeypatch.setattr(curve, "zap_reply", real)
        raise ValueError("a bug in judging")

    monkeypatch.setattr(curve, "zap_reply", fail_once)
    assert not answered(endpoint, alice, 1.0)  # refused: it could not be judged
    assert handler.is_alive()
    assert answered(endpoint, alice) and not answered(endpoint, mallory)


def test_malformed_zap_requests_are_refused() -> None:
    key = zmq.curve_keypair()[0]
    good = [b"1.0", b"id", b"streamd", b"127.0.0.1", b"", b"CURVE"]
    raw = z85.decode(key)
    assert curve.zap_reply([*good, raw], frozenset({key}))[2] == b"200"
    for request in (
        [],
        [b"1.0"],
        good,  # no credentials
        [*good, raw[:31]],
        [*good, raw, raw],
        [b"2.0", *good[1:], raw],
        [*good[:2], b"other", *good[3:], raw],  # another domain
        [*good[:5], b"PLAIN", b"user", b"password"],
    ):
        reply = curve.zap_reply(request, frozenset({key}))
        assert reply[0] == b"1.0" and reply[2] == b"400", request


def test_the_daemon_watches_its_zap_handlers(tmp_path: Path) -> None:
    """Composition: with CURVE the daemon's health counts both ZAP threads."""
    make_key_pair(tmp_path / "k", "server")
    make_key_pair(tmp_path / "k" / "clients", "alice")
    k = tmp_path / "k"
    security = {"curve": {"server_secret": str(k / "server.key_secret"),
                          "authorized_clients": str(k / "clients")}}  # fmt: skip
    cfg = write_pipeline(tmp_path, Path("unused.pt"), free_port(), [{"id": "a", "url": "a.mp4"}],
                         security=security)  # fmt: skip
    daemon = Daemon(load_config(cfg))
    daemon._tmp = str(tmp_path / "run")  # the ipc folder run() makes
    Path(daemon._tmp).mkdir()
    try:
        daemon._start_bus()
        daemon._start_journal()
        assert daemon.board.dead() == []
        assert daemon._bus is not None and daemon._replay is not None
        daemon._bus.close()  # terminating a context ends its ZAP handler
        daemon._replay.close()
        assert {"publish ZAP", "journal ZAP"} <= set(daemon.board.dead())
        assert "publish ZAP thread dead" in daemon.board.problems()
    finally:
        daemon._shutdown()
