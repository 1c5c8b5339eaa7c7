"""The HTTP token (issue 13, bug 3): an empty or short token is refused by validation,
and the real HTTP server accepts only ``Bearer <token>`` (any case) or ``?token=``."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamd.config import ConfigError, parse_config
from streamd.control.board import StatusBoard
from streamd.control.http import ControlServer

from .util import free_port

TOKEN = "0123456789abcdef-token"
STREAMS = "streams: [{id: a, url: x.mp4}]"


def http_section(listen: str, token: str | None) -> str:
    tok = "" if token is None else f", token: {token!r}"
    return f"http: {{listen: {listen!r}{tok}}}\n{STREAMS}"


@pytest.mark.parametrize(
    ("listen", "weak", "env", "reason", "strong"),
    [
        ("0.0.0.0:8090", "", {}, "empty", TOKEN),
        ("0.0.0.0:8090", "${HTTP_TOKEN:-}", {}, "empty", TOKEN),  # unset, empty default
        ("0.0.0.0:8090", "${HTTP_TOKEN}", {"HTTP_TOKEN": ""}, "empty", TOKEN),
        ("0.0.0.0:8090", "   ", {}, "empty", TOKEN),
        ("[::]:8090", "short-token", {}, "at least 16", TOKEN),
        ("0.0.0.0:8090", "0123456789abcde", {}, "at least 16", "0123456789abcdef"),  # 15, 16
        ("127.0.0.1:8090", "", {}, "empty", None),  # loopback: "" is not "no token"; None is
        ("127.0.0.1:8090", f" {TOKEN}", {}, "whitespace", "s3cret"),  # loopback: short is ok
    ],
)
def test_weak_tokens_are_refused_naming_http_token(
    listen: str, weak: str, env: dict[str, str], reason: str, strong: str | None
) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(http_section(listen, weak), env=env)
    assert refused.value.problems[0][0] == "http.token"
    assert reason in refused.value.problems[0][1]
    assert parse_config(http_section(listen, strong), env=env).http.token == strong


@pytest.fixture
def server() -> Iterator[str]:
    board = StatusBoard(f"tcp://127.0.0.1:{free_port()}", ["a"], heartbeat_s=1.0)
    listen = f"127.0.0.1:{free_port()}"
    http = ControlServer(listen, board, token=TOKEN)
    http.start()
    yield f"http://{listen}"
    http.close()
    board.close()


def get(url: str, authorization: str | None = None) -> int:
    headers = {} if authorization is None else {"Authorization": authorization}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code


def test_the_server_takes_only_a_bearer_token(server: str) -> None:
    expected = {
        f"Bearer {TOKEN}": 200,
        f"bearer {TOKEN}": 200,  # RFC 7235: the scheme is case-insensitive
        f"BEARER {TOKEN}": 200,
        TOKEN: 401,  # a bare token is not a bearer token
        f"Basic {TOKEN}": 401,
        "Bearer wrong-token-wrong-token": 401,
        "Bearer ": 401,
        "": 401,
    }
    got = {authorization: get(f"{server}/status", authorization) for authorization in expected}
    assert got == expected
    assert get(f"{server}/status") == 401  # no header at all


def test_query_token_still_works_and_a_refusal_names_the_scheme(server: str) -> None:
    assert get(f"{server}/status?token={TOKEN}") == 200
    assert get(f"{server}/status?token=wrong") == 401
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{server}/healthz", timeout=5)
    assert refused.value.headers["WWW-Authenticate"].startswith("Bearer")


def test_status_of_a_pipeline_file_uses_its_token(server: str, tmp_path: Path) -> None:
    """``streamd status FILE`` sends the file's ``http.token`` (as ``view FILE`` does); a
    wrong one is reported as the daemon's refusal, not as no daemon answering."""
    listen = server.removeprefix("http://")

    def status(token: str) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "p.yaml"
        path.write_text(http_section(listen, token))
        env = {k: v for k, v in os.environ.items() if k != "STREAMD_HTTP_TOKEN"}
        return subprocess.run([sys.executable, "-m", "streamd.cli", "status", str(path)],
                              capture_output=True, text=True, timeout=60, env=env)  # fmt: skip

    good = status(TOKEN)
    assert "401" not in good.stderr and "no daemon" not in good.stderr, good.stderr
    assert "STREAM" in good.stdout and "a: DOWN" in good.stdout  # the board answered
    bad = status("wrong-token-wrong-token")
    assert bad.returncode == 1
    assert "answered 401" in bad.stderr and "http.token" in bad.stderr
    assert "wrong-token" not in bad.stderr + bad.stdout


def test_without_a_token_only_a_loopback_host_is_answered(tmp_path: Path) -> None:
    """DNS rebinding: a page whose name resolves to 127.0.0.1 sends its own name as Host.
    Without a token that is refused (421); loopback names are answered; with a token the
    token is what counts."""
    board = StatusBoard(f"tcp://127.0.0.1:{free_port()}", ["a"], heartbeat_s=1.0)
    open_listen, closed_listen = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    servers = [ControlServer(open_listen, board), ControlServer(closed_listen, board, token=TOKEN)]
    for s in servers:
        s.start()
    try:

        def status(listen: str, host: str, auth: str | None = None) -> int:
            headers = {"Host": host} | ({} if auth is None else {"Authorization": auth})
            return get_with(f"http://{listen}/status", headers)

        port = open_listen.rsplit(":", 1)[1]
        assert status(open_listen, f"rebind.attacker.example:{port}") == 421
        assert status(open_listen, "10.1.2.3") == 421
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "127.0.0.7"):
            assert status(open_listen, host) == 200, host
        assert status(closed_listen, "cams.example.com", f"Bearer {TOKEN}") == 200
        assert status(closed_listen, "cams.example.com") == 401
    finally:
        for s in servers:
            s.close()
        board.close()


def get_with(url: str, headers: dict[str, str]) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code
