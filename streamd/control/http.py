"""The daemon's HTTP endpoint: ``GET /status`` (JSON), ``/metrics`` (Prometheus), ``/healthz``.

Bound to loopback by default; it exposes stream ids and states, never URLs.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from streamd.control.board import StatusBoard
from streamd.control.exposition import MetricsExporter

log = logging.getLogger(__name__)


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/status":
            self._send(200, self.server.board.snapshot())
        elif path == "/metrics" and self.server.exporter is not None:
            self._send_raw(200, self.server.exporter.render(), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            ok = self.server.board.healthy()
            self._send(200 if ok else 503, {"healthy": ok})
        else:
            self._send(
                404, {"error": f"no such endpoint {path!r}; try /status, /metrics, /healthz"}
            )

    def _send(self, code: int, body: Any) -> None:
        self._send_raw(code, json.dumps(body).encode(), "application/json")

    def _send_raw(self, code: int, data: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, addr: tuple[str, int], board: StatusBoard, exporter: MetricsExporter | None
    ) -> None:
        self.board = board
        self.exporter = exporter
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        super().__init__(addr, _Handler)


class ControlServer:
    """Binds at construction (so a taken port refuses start-up), serves in a thread."""

    def __init__(
        self, listen: str, board: StatusBoard, exporter: MetricsExporter | None = None
    ) -> None:
        self._server = _Server(split_listen(listen), board, exporter)
        self.address = listen
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
