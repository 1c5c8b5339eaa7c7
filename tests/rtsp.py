"""Drive the real RTSP server (tests/rtsp_server.py under the system python3)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from urllib.parse import quote

from .util import free_port

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER = Path(__file__).with_name("rtsp_server.py")


class RtspServer:
    def __init__(
        self,
        clip: Path,
        user: str | None = None,
        password: str | None = None,
        port: int = 0,
        codec: str = "h264",
        tls_pem: Path | None = None,
    ) -> None:
        self.clip = clip
        self.codec = codec
        self.tls_pem = tls_pem
        self.user = user
        self.password = password
        self.port = port or free_port()
        self.proc: subprocess.Popen[str] | None = None

    def url(self, user: str | None = None, password: str | None = None) -> str:
        """The stream's URL; credentials are written raw, as users write them."""
        auth = f"{user}:{password}@" if user is not None else ""
        scheme = "rtsps" if self.tls_pem else "rtsp"
        return f"{scheme}://{auth}127.0.0.1:{self.port}/cam"

    def start(self) -> RtspServer:
        cmd = [SYSTEM_PYTHON, str(SERVER), "--port", str(self.port), "--file", str(self.clip)]
        cmd += ["--codec", self.codec]
        if self.tls_pem:
            cmd += ["--tls", str(self.tls_pem)]
        env = dict(os.environ)
        if self.user is not None:
            cmd += ["--user", self.user]
            env["RTSP_PASSWORD"] = self.password or ""
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()  # blocks until ready or exit
        if line != "ready":
            self.proc.kill()
            raise RuntimeError(f"RTSP server did not start (exit {self.proc.wait()})")
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(5)
        self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        if self.proc is not None:
            self.resume()
            self.kill()


def encoded(password: str) -> str:
    return quote(password, safe="")


def self_signed_pem(folder: Path) -> Path:
    """A throwaway certificate + key for 127.0.0.1, in one PEM file."""
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    pem = folder / "server.pem"
    pem.write_text(cert.read_text() + key.read_text())
    return pem
