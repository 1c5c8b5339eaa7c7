"""Webhook output: each event POSTed as JSON, signed, retried with backoff.

The body is the event's payload, exactly as on the ZeroMQ bus (an alert's JPEG
is not sent: ``snapshot: true`` says it exists). Headers:

- ``X-Streamd-Event``: ``alert``, ``status`` or ``track``;
- ``X-Streamd-Id``: ``<stream>.<epoch>.<seq>`` (alerts; other kinds end in
  ``.<kind>``), the same on every retry, so a receiver can drop duplicates;
- ``X-Streamd-Timestamp``: when this attempt was signed (seconds since the epoch);
- ``X-Streamd-Signature`` (with ``secret_env``): ``sha256=`` and the hex
  HMAC-SHA256, keyed with the secret, of ``<timestamp>.<body>``; a receiver
  recomputes it over the raw body and refuses old timestamps (replays).

An alert is retried until the receiver answers 2xx: connection errors, timeouts,
5xx, 408 and 429 wait 0.5 s, 1 s, 2 s, ... up to ``backoff_max_s`` (each failure
counted) while later alerts wait behind it, in order. Any other answer (a 4xx:
the receiver refuses this body, and would again) gives the alert up, counted as
``rejected``. Live events (``status``, ``track``) are tried a few times and then
dropped, counted.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from streamd.config.outputs import WebhookConfig, env_secret
from streamd.outputs.base import Backoff, Cursor, JournaledAlert, LiveEvent, Output

log = logging.getLogger(__name__)

LIVE_TRIES = 3
RETRYABLE = frozenset({408, 429})


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The X-Streamd-Signature value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def describe(url: str) -> str:
    """The URL without its query (which may carry a token) for logs."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_args: object, **_kwargs: object) -> None:
        return None  # the 3xx comes back as an HTTPError


class _Refused(Exception):
    """The receiver answered in a way a retry cannot change."""


class WebhookOutput(Output):
    def __init__(self, cfg: WebhookConfig, cursor: Cursor) -> None:
        kinds = [k for k in cfg.events if k != "alert"]
        super().__init__(cfg.output_name, cursor, cfg.max_inflight, cfg.queue, kinds,
                         alerts="alert" in cfg.events)  # fmt: skip
        self.cfg = cfg
        secret = env_secret(cfg.secret_env, f"outputs.webhooks[{cfg.output_name}].secret_env")
        self._secret = None if secret is None else secret.encode()
        self._where = describe(cfg.url)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"output-{self.name}",
                                        daemon=True)  # fmt: skip
        # No proxies from the environment, no redirects: alerts go where the URL says.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            item = self.mailbox.get(0.5)
            if isinstance(item, JournaledAlert):
                self._deliver_alert(item)
            elif isinstance(item, LiveEvent):
                self._deliver_event(item)

    def _deliver_alert(self, alert: JournaledAlert) -> None:
        body = json.dumps(alert.payload, separators=(",", ":")).encode()
        backoff = Backoff(0.5, self.cfg.backoff_max_s)
        while not self._stop.is_set():
            try:
                self._post("alert", alert.msg_id, body)
            except _Refused as e:
                log.error("webhook %s refused alert %s: %s; given up", self._where,
                          alert.msg_id, e)  # fmt: skip
                self.dropped("rejected")
                self.confirmed(alert, delivered=False)
                return
            except OSError as e:
                self.failed()
                delay = backoff.next()
                log.warning("webhook %s: alert %s not delivered (%s); again in %.1fs",
                            self._where, alert.msg_id, e, delay)  # fmt: skip
                self._stop.wait(delay)
                continue
            self.confirmed(alert)
            return

    def _deliver_event(self, ev: LiveEvent) -> None:
        body = json.dumps(ev.payload, separators=(",", ":")).encode()
        backoff = Backoff(0.5, self.cfg.backoff_max_s)
        for _ in range(LIVE_TRIES):
            try:
                self._post(ev.kind, ev.msg_id, body)
            except _Refused:
                self.dropped("rejected")
                return
            except OSError:
                self.failed()
                if self._stop.wait(backoff.next()):
                    break
                continue
            self.sent(ev.kind)
            return
        self.dropped("error")

    def _post(self, kind: str, msg_id: str, body: bytes) -> None:
        """One attempt; OSError (retry) or :class:`_Refused` (do not)."""
        stamp = f"{time.time():.3f}"
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "streamd",
            "X-Streamd-Event": kind,
            "X-Streamd-Id": msg_id,
            "X-Streamd-Timestamp": stamp,
        }
        if self._secret is not None:
            headers["X-Streamd-Signature"] = signature(self._secret, stamp, body)
        req = urllib.request.Request(self.cfg.url, data=body, headers=headers, method="POST")
        try:
            with self._opener.open(req, timeout=self.cfg.timeout_s) as r:
                r.read(65536)
        except urllib.error.HTTPError as e:
            e.close()
            self.connected = True  # it answered
            if e.code >= 500 or e.code in RETRYABLE:
                raise OSError(f"HTTP {e.code}") from None
            if 300 <= e.code < 400:
                raise _Refused(f"HTTP {e.code} (redirects are not followed)") from None
            raise _Refused(f"HTTP {e.code}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            self.connected = False
            reason = getattr(e, "reason", e)
            raise OSError(str(reason)) from None
        self.connected = True

    def close(self, timeout_s: float) -> None:
        self._stop.set()
        self.mailbox.close()
        self._thread.join(timeout_s)
