"""The daemon's HTTP endpoint: the live view (``/``, ``/streams/<id>``, ``.mjpg``,
``.jpg``), ``GET /status`` (JSON), ``/metrics`` (Prometheus), ``/healthz`` (alive),
``/readyz`` (model loaded, enough cameras streaming), the stream API under
``/api/`` (``control/api.py``), and the event clips: ``/clips`` (a list) and
``/clips/<id>.mp4`` (``streamd/clips/store.py`` finds the file; one byte range).

Bound to loopback by default; off loopback ``http.token`` (16+ characters) is
required and checked on every request: ``Authorization: Bearer <token>`` (the
scheme in any case; a bare token is refused) or ``?token=``. It exposes stream
ids and states, never URLs.

Connections are accepted by a :class:`~streamd.control.conns.ConnectionPool`:
idle ones cost a descriptor, not a thread; a fixed pool of workers answers
(``http.max_viewers`` of them for MJPEG streams, 32 more for everything else, of
which at most 12 may wait for a ``.jpg``). Every GET route answers HEAD too,
without a body.

An MJPEG viewer holds its worker and slot while it plays. When no new picture
comes (a stalled camera) nothing is written, so the connection is checked for
the viewer having left (EOF or reset) every second, and the last picture is sent
again every 10 s; a stream removed at runtime ends its viewers' responses.
"""

from __future__ import annotations

import contextlib
import hmac
import io
import json
import logging
import os
import re
import select
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST

from streamd.clips import ClipIndex
from streamd.config.base import is_loopback_host
from streamd.control import api
from streamd.control.admin import StreamAdmin
from streamd.control.board import StatusBoard
from streamd.control.conns import ConnectionPool, allow_descriptors
from streamd.control.exposition import MetricsExporter
from streamd.view import pages
from streamd.view.overlay import LiveView, Picture

log = logging.getLogger(__name__)


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def bearer(authorization: str) -> str:
    """The credentials of a ``Bearer`` Authorization header, else "" (a bare token or
    another scheme is not a bearer token). The scheme is case-insensitive (RFC 7235)."""
    scheme, _, credentials = authorization.strip().partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else ""


BOUNDARY = "streamd-frame"
MJPEG_WAIT_S = 5.0  # .jpg: give up after this long without an analysed frame
VIEWER_CHECK_S = 1.0  # MJPEG: no new picture this long, see whether the viewer left
KEEPALIVE_S = 10.0  # MJPEG: no new picture this long, send the last one again
OTHER_WORKERS = 32  # workers beyond the MJPEG viewers': status, health, API, .jpg, pages
# .jpg requests waiting for a picture at once (up to MJPEG_WAIT_S each for a stalled
# camera): beyond, a 503, so thumbnails never take the workers /healthz and the API need.
JPEG_WAITERS = 12
# Stream changes waiting for the supervisor at once (each can wait while processes stop):
# beyond, a 503 at once, so a burst of them cannot hold the workers health checks need.
API_CHANGES = 4
SPARE_DESCRIPTORS = 1024  # beyond the connections: rings, sockets, files of the supervisor
BACKLOG = 1024  # a burst of connects queues in the kernel instead of waiting out a SYN retry


@dataclass(frozen=True, slots=True)
class Limits:
    """``http.max_connections``, ``http.max_viewers``, ``http.idle_timeout_s``."""

    max_connections: int = 4096
    max_viewers: int = 16
    idle_timeout_s: float = 5.0


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # The Server header says what answers, not which Python (BaseHTTP/0.6 Python/3.11.7).
    server_version = "streamd"

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        # A read or write that makes no progress this long ends the request (a client that
        # sends half a body, or an MJPEG viewer that stopped reading).
        super().setup()
        self.connection.settimeout(self.server.limits.idle_timeout_s)
        # The head was read by the connection thread (conns.py): it is read from there.
        # The socket's own reader is closed first: left open it holds a reference that
        # keeps the socket's descriptor open after the request, until a garbage collection.
        self.rfile.close()
        self.rfile = io.BufferedReader(_Prefixed(self.server.head.value, self.connection))

    def do_HEAD(self) -> None:
        self.do_GET()  # _send_raw and _mjpeg leave the body out

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query)
        if not self._host_answered():
            return
        if not self._authorised(query):
            self._send(
                401,
                {"error": "missing or wrong token (Authorization: Bearer ..., or ?token=)"},
                {"WWW-Authenticate": 'Bearer realm="streamd"'},
            )
            return
        view = self.server.view
        if view is not None and (path == "/" or path.startswith("/streams/")):
            self._view(view, path)
        elif path == "/status":
            self._send(200, self.server.board.snapshot())
        elif path == "/metrics" and self.server.exporter is not None:
            self._send_raw(200, self.server.exporter.render(), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            board = self.server.board
            problems, dead = board.problems(), board.dead()
            self._send(503 if problems else 200,
                       {"healthy": not problems, "problems": problems, "dead": dead})  # fmt: skip
        elif path == "/readyz":
            self._readyz()
        elif path.startswith("/api/") and self.server.admin is not None:
            self._api("GET", path)
        elif path.rstrip("/") == "/clips" and self.server.clips is not None:
            self._send(200, {"clips": [c.as_dict() for c in self.server.clips.list()]})
        elif path.startswith("/clips/") and self.server.clips is not None:
            self._clip(self.server.clips, unquote(path.removeprefix("/clips/")))
        else:
            endpoints = "/, /status, /metrics, /healthz, /readyz, /clips"
            self._send(404, {"error": f"no such endpoint {path!r}; try {endpoints}"})

    def do_POST(self) -> None:
        self._api_request("POST")

    def do_PUT(self) -> None:
        self._api_request("PUT")

    def do_DELETE(self) -> None:
        self._api_request("DELETE")

    def _host_answered(self) -> bool:
        """Without a token only a loopback ``Host`` is answered: a web page whose name
        its DNS turns into 127.0.0.1 (DNS rebinding) is same-origin with this server for
        the browser, and sends its own name. True to go on, else the 421 is sent."""
        host = self.headers.get("Host")
        if self.server.token is not None or host is None or _loopback_name(host):
            return True
        self._send(421, {"error": "this server answers only a loopback Host (localhost, "
                         "127.0.0.1, [::1]) without http.token; a proxy in front must pass "
                         "its upstream's address as Host, or set http.token"})  # fmt: skip
        return False

    def _api_request(self, method: str) -> None:
        url = urlsplit(self.path)
        if not self._host_answered():
            return
        if not self._authorised(parse_qs(url.query)):
            self._send(401, {"error": "missing or wrong token (Authorization: Bearer ...)"},
                       {"WWW-Authenticate": 'Bearer realm="streamd"'})  # fmt: skip
        elif self.server.admin is None or not url.path.startswith("/api/"):
            self._send(405, {"error": f"{method} is for /api/streams"})
        elif method != "DELETE" and not _json_body(self.headers.get("Content-Type", "")):
            # A web page can make a browser send text/plain cross-origin without asking;
            # application/json needs a CORS preflight this server never grants.
            self._send(415, {"error": "send the body as Content-Type: application/json"})
        elif self.headers.get("Origin"):
            # No page of streamd's changes streams: a browser's change comes from a page
            # of somebody else's (or one same-origin by DNS rebinding).
            self._send(403, {"error": "requests from a web page (Origin) are refused"})
        else:
            self._api(method, url.path)

    def _api(self, method: str, path: str) -> None:
        raw = self.headers.get("Content-Length") or "0"
        if not re.fullmatch(r"\d{1,12}", raw, re.ASCII):
            self.close_connection = True
            self._send(400, {"error": "Content-Length must be a number of bytes"})
            return
        length = int(raw)
        if length > api.MAX_BODY_BYTES:
            self.close_connection = True  # the body is left unread
            self._send(413, {"error": f"body larger than {api.MAX_BODY_BYTES} bytes"})
            return
        body = self.rfile.read(length) if length > 0 else None
        assert self.server.admin is not None
        if method == "GET":  # answered from memory, never waits for the supervisor
            self._send(*api.handle(self.server.admin, method, path, body))
            return
        slots = self.server.api_changes
        if not slots.acquire(blocking=False):
            why = f"{API_CHANGES} stream changes already waiting to be applied; nothing applied"
            self._send(503, {"error": why}, {"Retry-After": "5"})
            return
        try:
            code, answer = api.handle(self.server.admin, method, path, body)
        finally:
            slots.release()
        self._send(code, answer)

    def _readyz(self) -> None:
        """200 once the model is loaded and enough streams stream; 503 saying why not."""
        snap = self.server.board.snapshot()
        streams = {sid: {"up": r["up"], "problem": r["problem"]}
                   for sid, r in snap["streams"].items()}  # fmt: skip
        body = {"ready": snap["ready"], "problems": snap["not_ready"], "streams": streams}
        self._send(200 if snap["ready"] else 503, body)

    def _authorised(self, query: dict[str, list[str]]) -> bool:
        token = self.server.token
        if token is None:
            return True
        given = bearer(self.headers.get("Authorization", "")) or (query.get("token") or [""])[0]
        # Nothing given never passes, even if a token of "" slipped past validation.
        return bool(given) and hmac.compare_digest(given.encode(), token.encode())

    def _view(self, view: LiveView, path: str) -> None:
        token = self.server.token
        if path == "/":
            page = pages.index(self.server.board.snapshot(), token)
            self._send_raw(200, page.encode(), "text/html; charset=utf-8")
            return
        name = unquote(path.removeprefix("/streams/"))
        sid, _, ext = name.rpartition(".") if name.endswith((".jpg", ".mjpg")) else (name, "", "")
        if sid not in view.streams:
            self._send(404, {"error": f"no stream {sid!r}"})
        elif ext == "mjpg":
            self._mjpeg_viewer(view, sid)
        elif ext == "jpg":
            self._jpeg(view, sid)
        else:
            self._send_raw(200, pages.stream(sid, token).encode(), "text/html; charset=utf-8")

    def _jpeg(self, view: LiveView, sid: str) -> None:
        waiters = self.server.jpeg_waiters
        if not waiters.acquire(blocking=False):
            why = (f"{JPEG_WAITERS} .jpg requests already waiting for a picture (a camera "
                   "may be stalled); retry shortly")  # fmt: skip
            self._send(503, {"error": why}, {"Retry-After": "2"})
            return
        try:
            with view.viewer(sid) as after:
                pic = view.next_picture(sid, after, MJPEG_WAIT_S)
        finally:
            waiters.release()
        if pic is None:
            self._send(503, {"error": f"no analysed frame of {sid!r} yet"})
        else:
            self._send_raw(200, pic.jpeg, "image/jpeg", {"X-Streamd-Frame": str(pic.meta.frame)})

    def _mjpeg_viewer(self, view: LiveView, sid: str) -> None:
        """A stream holds a worker while it plays: beyond ``http.max_viewers`` a 503."""
        slots = self.server.viewer_slots
        if self.command == "HEAD":
            self._mjpeg_head()
        elif not slots.acquire(blocking=False):
            limit = self.server.limits.max_viewers
            why = f"{limit} MJPEG viewers already (http.max_viewers={limit}); retry when one leaves"
            self._send(503, {"error": why}, {"Retry-After": "5"})
        else:
            try:
                self._mjpeg(view, sid)
            finally:
                slots.release()

    def _mjpeg_head(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()

    def _mjpeg(self, view: LiveView, sid: str) -> None:
        """multipart/x-mixed-replace: browsers, VLC, ffplay and OpenCV play it. Ends when
        the viewer leaves, the stream is removed or the server closes."""
        self._mjpeg_head()
        last: Picture | None = None
        written = time.monotonic()
        with view.viewer(sid) as version, contextlib.suppress(OSError):
            while not self.server.closing.is_set() and sid in view.streams:
                pic = view.next_picture(sid, version, VIEWER_CHECK_S)
                if pic is not None:
                    version = pic.version
                elif self._viewer_left():
                    return
                elif last is not None and time.monotonic() - written >= KEEPALIVE_S:
                    pic = last  # a write notices a peer that vanished without a FIN
                else:
                    continue
                self._write_part(pic)
                last, written = pic, time.monotonic()

    def _write_part(self, pic: Picture) -> None:
        head = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                f"Content-Length: {len(pic.jpeg)}\r\n"
                f"X-Streamd-Frame: {pic.meta.frame}\r\n\r\n")  # fmt: skip
        self.wfile.write(head.encode() + pic.jpeg + b"\r\n")
        self.wfile.flush()

    def _viewer_left(self) -> bool:
        """The viewer closed (EOF) or reset the connection. Nothing else is read from an
        MJPEG viewer, so pending EOF or an error is how a closed tab shows while nothing
        is written. poll, not select: descriptors run past select's 1,024."""
        poller = select.poll()
        poller.register(self.connection, select.POLLIN)
        if not poller.poll(0):
            return False
        try:  # readable: this answers at once (bytes, EOF or the reset)
            peeked: bytes = self.connection.recv(1, socket.MSG_PEEK)
        except OSError:
            return True
        return peeked == b""

    def _clip(self, clips: ClipIndex, name: str) -> None:
        """``/clips/<id>.mp4``: the id is checked (no separators, no dots) and only a
        regular file directly in a configured stream's clip folder is sent."""
        found = clips.find(name.removesuffix(".mp4")) if name.endswith(".mp4") else None
        if found is None or found.path is None:
            if found is not None and found.recording:
                self._send(503, {"error": "clip still being recorded"}, {"Retry-After": "5"})
            else:
                self._send(404, {"error": f"no clip {name!r}"})
            return
        try:
            fd = os.open(found.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:  # deleted by retention meanwhile
            self._send(404, {"error": f"no clip {name!r}"})
            return
        with os.fdopen(fd, "rb") as f:
            size = os.fstat(fd).st_size
            span = byte_range(self.headers.get("Range", ""), size)
            if span is None:
                self._send(416, {"error": "unsatisfiable range"},
                           {"Content-Range": f"bytes */{size}"})  # fmt: skip
                return
            start, end, partial = span
            self.send_response(206 if partial else 200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Accept-Ranges", "bytes")  # players seek with ranges
            if partial:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
            self.send_header("Content-Length", str(end - start))
            self.end_headers()
            if self.command != "HEAD" and end > start:
                self.wfile.flush()
                self.connection.sendfile(f, start, end - start)

    def _send(self, code: int, body: Any, extra: dict[str, str] | None = None) -> None:
        self._send_raw(code, json.dumps(body).encode(), "application/json", extra)

    def _send_raw(
        self, code: int, data: bytes, content_type: str, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        # The request line may carry ?token=: log paths without their query.
        safe = [a.split("?", 1)[0] if isinstance(a, str) else a for a in args]
        log.debug("http: " + format, *safe)


class _Server(HTTPServer):
    """Binds and holds what the handler needs; :class:`ConnectionPool` drives it."""

    request_queue_size = BACKLOG

    def __init__(
        self,
        addr: tuple[str, int],
        board: StatusBoard,
        exporter: MetricsExporter | None,
        view: LiveView | None,
        token: str | None,
        admin: StreamAdmin | None,
        limits: Limits,
        clips: ClipIndex | None = None,
    ) -> None:
        self.board = board
        self.clips = clips
        self.exporter = exporter
        self.view = view
        self.token = token
        self.admin = admin
        self.limits = limits
        self.viewer_slots = threading.BoundedSemaphore(limits.max_viewers)
        self.jpeg_waiters = threading.BoundedSemaphore(JPEG_WAITERS)
        self.api_changes = threading.BoundedSemaphore(API_CHANGES)
        self.closing = threading.Event()
        self.head = threading.local()  # each worker's request head (serve_one → _Handler)
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        super().__init__(addr, _Handler)

    def serve_one(self, request: socket.socket, client_address: Any, head: bytes) -> None:
        """Answer the connection's request and close it (one request per connection);
        ``head``: its bytes read already (the handler, on this thread, reads them first)."""
        self.head.value = head
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """socketserver prints a raw traceback to stderr; a client that went away mid-answer
        (a closed tab, a viewer stopped) is routine: debug. Anything else goes to the log."""
        err = sys.exc_info()[1]
        if isinstance(err, ConnectionError | TimeoutError):  # incl. broken pipe and reset
            log.debug("http: client %s went away: %s", client_address[0], err)
        else:
            log.error("http: request from %s failed", client_address[0], exc_info=True)


class _Prefixed(io.RawIOBase):
    """A connection's bytes: those read already, then the socket's."""

    def __init__(self, head: bytes, sock: socket.socket) -> None:
        self._head = memoryview(head)
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        return self._sock.recv_into(b)


class ControlServer:
    """Binds at construction (so a taken port refuses start-up), serves in a thread."""

    def __init__(
        self,
        listen: str,
        board: StatusBoard,
        exporter: MetricsExporter | None = None,
        view: LiveView | None = None,
        token: str | None = None,
        admin: StreamAdmin | None = None,  # /api/streams (the supervisor's)
        limits: Limits | None = None,
        clips: ClipIndex | None = None,  # GET /clips, /clips/<id>.mp4
    ) -> None:
        limits = limits or Limits()
        allow_descriptors(limits.max_connections + SPARE_DESCRIPTORS)
        self._server = _Server(split_listen(listen), board, exporter, view, token, admin, limits,
                               clips)  # fmt: skip
        self.address = listen
        self._connections = ConnectionPool(
            self._server.socket,
            self._server.serve_one,
            workers=limits.max_viewers + OTHER_WORKERS,
            max_connections=limits.max_connections,
            idle_timeout_s=limits.idle_timeout_s,
        )

    def start(self) -> None:
        self._connections.start()

    def close(self) -> None:
        self._server.closing.set()  # MJPEG writers end their loops
        self._connections.close()
        self._server.server_close()


def byte_range(header: str, size: int) -> tuple[int, int, bool] | None:
    """``(start, end, partial)`` for one ``Range: bytes=`` span, ``end`` exclusive: the
    whole file, not partial, without one (or for one this server does not take, such
    as several spans); None if unsatisfiable (416)."""
    whole = (0, size, False)
    # ASCII digits only, at most 19 (str.isdigit() takes '²', which int() refuses).
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d{0,19})\s*-\s*(\d{0,19})\s*", header, re.ASCII | re.I)
    if m is None or not (m[1] or m[2]):
        return whole
    first, last = m[1], m[2]
    if not first:  # the last N bytes
        n = int(last)
        return (max(0, size - n), size, True) if n > 0 and size > 0 else None
    start = int(first)
    end = min(size, int(last) + 1) if last else size
    return (start, end, True) if start < size and start < end else None


def _loopback_name(host: str) -> bool:
    """Whether a ``Host`` header (name or address, with or without a port) is loopback,
    judged as ``http.listen`` is."""
    name = host.strip()
    if name.startswith("["):  # [::1]:8090
        name = name[: name.find("]") + 1] if "]" in name else name
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    return is_loopback_host(name.rstrip("."))


def _json_body(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == "application/json"
