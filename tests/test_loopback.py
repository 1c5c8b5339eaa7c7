"""What counts as loopback (issue 13): an IP literal that is loopback, or ``localhost``
by name; a host name that merely starts with ``127.`` is a name, reachable from
wherever DNS points it, so it needs a real token (HTTP) or CURVE keys (ZeroMQ)."""

from __future__ import annotations

import pytest

from streamd.config import ConfigError, parse_config
from streamd.config.base import is_loopback_host

STREAMS = "streams: [{id: a, url: x.mp4}]\n"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.9.8.7", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("127.example.com", False),
        ("127.0.0.1.nip.io", False),
        ("localhost.example.com", False),
        ("0.0.0.0", False),
        ("*", False),
        ("[::]", False),
        ("10.0.0.1", False),
        ("", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def test_a_host_name_starting_with_127_needs_a_long_http_token() -> None:
    with pytest.raises(ConfigError, match="reachable from other machines"):
        parse_config("http: {listen: '127.example.com:8090', token: short}\n" + STREAMS, env={})
    with pytest.raises(ConfigError, match=r"set http\.token"):
        parse_config("http: {listen: '127.example.com:8090'}\n" + STREAMS, env={})
    ok = parse_config("http: {listen: '127.0.0.2:8090', token: short}\n" + STREAMS, env={})
    assert ok.http.token == "short"


@pytest.mark.parametrize("endpoint", ["tcp://127.example.com:5556", "tcp://127.0.0.1.nip.io:5556"])
def test_a_host_name_starting_with_127_needs_curve_keys(endpoint: str) -> None:
    with pytest.raises(ConfigError, match=r"security\.curve"):
        parse_config(f"publish: {{endpoint: '{endpoint}'}}\n" + STREAMS, env={})


@pytest.mark.parametrize("endpoint", ["tcp://127.0.0.2:5556", "tcp://[::1]:*", "tcp://::1:5556"])
def test_loopback_literals_stay_plain(endpoint: str) -> None:
    cfg = parse_config(f"publish: {{endpoint: '{endpoint}'}}\n" + STREAMS, env={})
    assert cfg.security.curve is None
