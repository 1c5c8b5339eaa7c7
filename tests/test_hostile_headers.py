"""Hostile input on today's new surfaces: a clip's Range header, a message stored in the
fleet's JetStream stream by someone else, a fleet subscriber pointed at nothing."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest


@pytest.mark.parametrize(
    "header",
    ["bytes=\xb2-", "bytes=-\xb2", "bytes=0-\xb9", "bytes=" + "9" * 5000 + "-", "bytes=0-1,3-4",
     "bytes=abc", "items=0-9"],
)  # fmt: skip
def test_a_range_the_server_does_not_take_gives_the_whole_clip(header: str) -> None:
    """'²' passes str.isdigit() but not int(): it used to end the request without an answer."""
    from streamd.control.http import byte_range

    assert byte_range(header, 100) == (0, 100, False)
    assert byte_range("bytes=10-19", 100) == (10, 20, True)
    assert byte_range("bytes=-5", 100) == (95, 100, True)
    assert byte_range("bytes=200-", 100) is None


class _Msg:
    subject = "streamd.x"

    class metadata:  # nats-py's shape
        class sequence:
            stream = 1

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.headers = {"Nats-Msg-Id": "cam.1.2"}


@pytest.mark.parametrize("body", [b'{"stream":"cam","epoch":"x"}', b'{"epoch":null}',
                                  b'{"epoch":1e999}', b'{"epoch":true}', b'{"stream":7}',
                                  b'{"seq":99999999999999999999}'])  # fmt: skip
def test_a_foreign_message_in_the_fleet_stream_is_skipped(body: bytes) -> None:
    """One stored message the fleet reader cannot order used to stop every later run."""
    from streamd.fleet.events import _event

    assert _event(_Msg(body)) is None
    good: Any = _event(_Msg(b'{"stream":"cam","epoch":1,"seq":2}'))
    assert good is not None and good.order == (1, 2)


def test_subscribe_nats_to_nothing_fails_in_seconds_without_the_password() -> None:
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "streamd.cli", "subscribe", "--nats",
                        "nats://alice:s3cretpw@127.0.0.1:1", "--timeout", "1"],
                       capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert r.returncode == 1 and time.monotonic() - t0 < 30
    assert "s3cretpw" not in r.stderr + r.stdout and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "127.0.0.1:1" in r.stderr


def test_a_clip_id_is_exactly_the_pattern() -> None:
    from streamd.clips.store import new_clip_id, valid_clip_id

    good = new_clip_id("cam", 7, 1_764_000_000.0)
    assert valid_clip_id(good)
    assert not valid_clip_id(good + "\n")  # '$' used to let it through
    assert not valid_clip_id(good.replace("t7", "t\u0667"))  # an Arabic-Indic seven


@pytest.mark.parametrize("url", ["https://hooks.example:abc/x", "https://hooks.example:99999/x"])
def test_a_webhook_port_that_is_not_a_port_is_refused_at_load(url: str) -> None:
    from pydantic import ValidationError

    from streamd.config.outputs import WebhookConfig

    with pytest.raises(ValidationError) as err:
        WebhookConfig.model_validate({"url": url})
    assert "port" in str(err.value)
