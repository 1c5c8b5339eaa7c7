"""CURVE on the public sockets: keys from ``streamd keys``, the real daemon, real subscribers.

An authorized client key gets events and journal answers; another key pair, or
no key at all, gets nothing (its handshake is refused). Validation refuses an
endpoint other machines can reach unless the keys are configured.
"""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import zmq.auth

from streamd.cli import main
from streamd.client import AlertClient, AlertSubscriber, ClientKeys, ReplayError, Subscriber
from streamd.config import ConfigError, parse_config

from .daemon import http_status, start, stop_and_check_clean, write_pipeline
from .util import free_port, shm_segments

STREAMS = "streams: [{id: cam, url: clip.mp4}]\n"
CURVE = "security: {curve: {server_secret: k/server.key_secret, authorized_clients: k/clients}}\n"


def streamd(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The real command line, in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "streamd.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """keys/server.*, keys/clients/alice.* (authorized), outsider/mallory.* (not)."""
    for folder, name in (("keys", "server"), ("keys/clients", "alice"), ("outsider", "mallory")):
        made = streamd("keys", str(tmp_path / folder), name)
        assert made.returncode == 0, made.stderr
    return tmp_path


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from streamd.synth import SceneSpec, write_scene

    video = tmp_path_factory.mktemp("curve") / "clip.mp4"
    write_scene(video, SceneSpec(width=320, height=180, fps=15, seconds=2.0, people=1))
    return video


def test_keys_command_writes_pairs_with_private_secrets_and_never_overwrites(
    keys: Path,
) -> None:
    public, secret = keys / "keys" / "server.key", keys / "keys" / "server.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    pub, none = zmq.auth.load_certificate(public)
    same_pub, sec = zmq.auth.load_certificate(secret)
    assert none is None and sec is not None and pub == same_pub  # one pair
    assert sorted(p.name for p in (keys / "keys").iterdir()) == [
        "clients",
        "server.key",
        "server.key_secret",
    ]  # no staging folder left behind
    before = secret.read_bytes()
    again = streamd("keys", str(keys / "keys"), "server")
    assert again.returncode == 1 and "exists" in again.stderr
    assert secret.read_bytes() == before
    bad = streamd("keys", str(keys), "../escape")
    assert bad.returncode == 1 and not (keys.parent / "escape.key").exists()


@pytest.mark.parametrize(
    "section",
    [
        "publish: {endpoint: 'tcp://0.0.0.0:5556'}",
        "publish: {endpoint: 'tcp://*:5556'}",
        "publish: {endpoint: 'tcp://cams.example:5556'}",
        "journal: {endpoint: 'tcp://192.168.1.20:5557'}",
        "journal: {endpoint: 'tcp://[::]:5557'}",
    ],
)
def test_an_endpoint_other_machines_reach_needs_curve_keys(section: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(section + "\n" + STREAMS, env={})
    ((path, reason),) = e.value.problems
    endpoint = section.split("'")[1]
    assert path == section.split(":")[0]  # publish or journal
    assert f"endpoint {endpoint}" in reason and "security.curve" in reason
    secured = parse_config(section + "\n" + CURVE + STREAMS, env={})
    assert secured.security.curve is not None


@pytest.mark.parametrize(
    "endpoint", ["tcp://127.0.0.1:5556", "tcp://localhost:5556", "tcp://[::1]:5556", "ipc:///x"]
)
def test_local_endpoints_stay_plain_without_keys(endpoint: str) -> None:
    cfg = parse_config(f"publish: {{endpoint: '{endpoint}'}}\n" + STREAMS, env={})
    assert cfg.publish.endpoint == endpoint and cfg.security.curve is None


def _pipeline(tmp: Path, secret: str, clients: str) -> Path:
    path = tmp / "p.yaml"
    path.write_text(
        f"security: {{curve: {{server_secret: {secret}, authorized_clients: {clients}}}}}\n"
        "publish: {endpoint: 'tcp://*:5556'}\n" + STREAMS
    )
    return path


@pytest.mark.parametrize(
    ("secret", "clients", "key", "why"),
    [
        ("keys/absent.key_secret", "keys/clients", "server_secret", "no such file"),
        ("keys/server.key", "keys/clients", "server_secret", "no secret key"),
        ("keys/server.key_secret", "keys/absent", "authorized_clients", "not a folder"),
    ],
)
def test_validate_refuses_key_files_it_cannot_use_naming_the_key(
    keys: Path, secret: str, clients: str, key: str, why: str, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _pipeline(keys, secret, clients)  # paths relative to the pipeline file
    (keys / "clip.mp4").touch()  # validate checks the stream's file exists too
    assert main(["validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert (
        f"security.curve.{key} {keys / secret if key == 'server_secret' else keys / clients}" in err
    )
    assert why in err
    good = _pipeline(keys, "keys/server.key_secret", "keys/clients")
    assert main(["validate", str(good)]) == 0


def test_run_refuses_a_missing_key_before_starting_anything(keys: Path) -> None:
    cfg = _pipeline(keys, "keys/absent.key_secret", "keys/clients")
    out = streamd("run", str(cfg))
    assert out.returncode == 2
    assert "security.curve.server_secret" in out.stderr and "no such file" in out.stderr
    assert "inference" not in out.stderr  # refused before the model was touched


def _secret_text(path: Path) -> str:
    secret = zmq.auth.load_certificate(path)[1]
    assert secret is not None
    return secret.decode()


def test_only_authorized_keys_get_events_and_journal_answers(keys: Path, clip: Path) -> None:
    """One daemon with CURVE: alice (authorized) gets det events, state from the journal
    and `streamd subscribe` output; mallory (another key pair) and a plain client get
    nothing; the daemon's own status board still works; no secret in logs or /status."""
    port, journal_port = free_port(), free_port()
    cfg = write_pipeline(
        keys,
        Path("unused.pt"),
        port,
        [{"id": "cam", "url": str(clip), "loop": True, "realtime": True}],
        model={"backend": "null", "null_boxes": 2, "imgsz": 320},
        journal={"path": str(keys / "alerts.sqlite"), "endpoint": f"tcp://127.0.0.1:{journal_port}"},
        security={"curve": {"server_secret": "keys/server.key_secret",
                            "authorized_clients": "keys/clients"}},
    )  # fmt: skip
    server_key = keys / "keys" / "server.key"
    alice = ClientKeys.load(keys / "keys/clients/alice.key_secret", server_key)
    mallory = ClientKeys.load(keys / "outsider/mallory.key_secret", server_key)
    endpoint, requests = f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{journal_port}"
    shm_before = shm_segments()
    log = keys / "daemon.log"
    with (
        Subscriber(endpoint, topics=["det."], curve=alice) as good,
        Subscriber(endpoint, topics=["det."], curve=mallory) as wrong,
        Subscriber(endpoint, topics=["det."]) as plain,
    ):
        daemon = start(cfg, log)
        try:
            first = good.recv(60.0)
            assert first is not None, log.read_text()[-2000:]
            # All three have been connected all along; events keep coming for 3 s more.
            t_end, got = time.monotonic() + 3.0, 1
            while time.monotonic() < t_end:
                got += good.recv(0.5) is not None
            assert first.payload["stream"] == "cam" and got >= 10
            assert wrong.recv(0.5) is None and plain.recv(0.5) is None

            with AlertClient(requests, timeout_s=5.0, curve=alice) as client:
                assert "cam" in client.state()["streams"]
            with AlertSubscriber(endpoint, requests, curve=alice, start="now") as alerts:
                assert not alerts.behind  # the journal answered (no alerts in this pipeline)
            with AlertSubscriber(endpoint, requests, curve=mallory, timeout_s=1.0) as alerts:
                assert alerts.behind  # the journal never answered it
            for refused in (mallory, None):
                with (
                    AlertClient(requests, timeout_s=2.0, curve=refused) as client,
                    pytest.raises(ReplayError, match="no reply"),
                ):
                    client.state()

            out = streamd("subscribe", endpoint, "--topic", "det.", "--count", "2",
                          "--timeout", "20", "--client-key",
                          str(keys / "keys/clients/alice.key_secret"),
                          "--server-key", str(server_key))  # fmt: skip
            assert out.returncode == 0, out.stderr
            assert [json.loads(line)["type"] for line in out.stdout.splitlines()] == ["det"] * 2
            denied = streamd("subscribe", endpoint, "--count", "1", "--timeout", "3")
            assert denied.returncode == 1 and denied.stdout == ""

            status = http_status(cfg)  # the board subscribes through CURVE too
            assert status["healthy"] and status["streams"]["cam"]["analysed"] > 0
        finally:
            if daemon.poll() is None:
                stop_and_check_clean(daemon, signal.SIGTERM, shm_before)
    secret = _secret_text(keys / "keys" / "server.key_secret")
    assert secret not in log.read_text() and secret not in json.dumps(status)
    assert "CURVE on publish.endpoint and journal.endpoint: 1 authorized" in log.read_text()
