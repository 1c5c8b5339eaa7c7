"""Real brokers and receivers for the output tests: mosquitto, nats-server, an HTTP server.

Each is started by the test on a free loopback port and stopped by it; the
binaries come from Debian (``make system-deps``: mosquitto, nats-server).
"""

from __future__ import annotations

import functools
import getpass
import http.server
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .util import free_port


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port} after {timeout_s}s")


def _binary(name: str) -> str:
    exe = shutil.which(name) or shutil.which(f"/usr/sbin/{name}")
    if exe is None:
        pytest.fail(f"{name} missing: run `make system-deps` (Debian package {name})")
    return exe


class _Server:
    def __init__(self, tmp: Path, name: str) -> None:
        self.tmp = tmp / name
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        log = (self.tmp / "server.log").open("ab")
        self.proc = subprocess.Popen(self._argv(), stdout=log, stderr=subprocess.STDOUT)
        _wait_port(self.port, self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


class Mosquitto(_Server):
    """mosquitto on 127.0.0.1, persistent (sessions survive a restart); anonymous, or
    only ``users`` (name → password) when given."""

    def __init__(self, tmp: Path, users: dict[str, str] | None = None, tls: bool = False) -> None:
        super().__init__(tmp, "mosquitto")
        self.conf = self.tmp / "mosquitto.conf"
        self.ca: Path | None = None
        listener = ""
        if tls:  # a CA of the test's own and a certificate for 127.0.0.1
            self.ca, cert, key = make_certificates(self.tmp, "127.0.0.1")
            listener = f"cafile {self.ca}\ncertfile {cert}\nkeyfile {key}\n"
        auth = "allow_anonymous true\n"
        if users:
            passwd = self.tmp / "passwd"
            for name, password in users.items():
                create = [] if passwd.exists() else ["-c"]
                tool = _binary("mosquitto_passwd")
                subprocess.run([tool, "-b", *create, str(passwd), name, password], check=True)
            auth = f"allow_anonymous false\npassword_file {passwd}\n"
        # Started as root, mosquitto switches to the user "mosquitto", who could not write
        # its persistence file here: stay who we are.
        self.conf.write_text(
            f"user {getpass.getuser()}\nlistener {self.port} 127.0.0.1\n{listener}{auth}"
            "persistence true\n"
            f"persistence_location {self.tmp}/\nautosave_interval 1\nlog_dest stdout\n"
        )

    def _argv(self) -> list[str]:
        return [_binary("mosquitto"), "-c", str(self.conf)]


class NatsServer(_Server):
    """nats-server with JetStream, its store in the test's folder."""

    def __init__(self, tmp: Path) -> None:
        super().__init__(tmp, "nats")

    def _argv(self) -> list[str]:
        return [_binary("nats-server"), "-js", "-a", "127.0.0.1", "-p", str(self.port),
                "-sd", str(self.tmp / "store")]  # fmt: skip


def make_certificates(folder: Path, ip: str) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate for ``ip``, its key), made with openssl."""
    ossl = _binary("openssl")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    cert, key, csr = folder / "server.pem", folder / "server.key", folder / "server.csr"
    ext = folder / "san.ext"
    ext.write_text(f"subjectAltName=IP:{ip}\n")
    run = functools.partial(subprocess.run, check=True, capture_output=True)
    run([ossl, "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "2",
         "-subj", "/CN=streamd test CA"])  # fmt: skip
    run([ossl, "req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={ip}"])
    run([ossl, "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
         "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext)])  # fmt: skip
    return ca, cert, key


Answer = Callable[[dict[str, Any]], int]


class Receiver:
    """An HTTP server recording every POST (headers, body); ``answer`` picks the status."""

    def __init__(self, answer: Answer | None = None, delay_s: float = 0.0) -> None:
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                req = {"path": self.path, "headers": dict(self.headers.items()), "body": body,
                       "at": time.time()}  # fmt: skip
                with outer.lock:
                    outer.requests.append(req)
                if delay_s:
                    time.sleep(delay_s)
                code = answer(req) if answer is not None else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.requests)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Blackhole:
    """A TCP listener that accepts and never reads nor answers: a stalled broker."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._conns.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for c in self._conns:
            c.close()
        self.sock.close()
