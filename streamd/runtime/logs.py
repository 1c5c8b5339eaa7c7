"""Logging set up once per process: one line per record on stderr, credentials redacted.

Two formats (``log.format``): ``text`` for people, ``json`` for log shippers (one
object a line). Every process of the daemon — supervisor, detector, cameras — calls
:func:`configure_logging` with the pipeline's format; a camera's process also names
its stream, which every line of it then carries. Third-party libraries log through
the same handler: ultralytics' own stdout handler is taken off, Python warnings are
logged, and :func:`logged_output` catches what C extensions write to the file
descriptors themselves.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Any

from streamd.config.log import LogFormat
from streamd.runtime.redact import redact_url

# Structured fields a record may carry (``extra=``), copied into a JSON line as they are.
STRUCTURED_FIELDS = ("summary", "totals")


class RedactingFormatter(logging.Formatter):
    """Formats normally, then scrubs URL credentials from the whole line (tracebacks included)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_url(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, process, logger, message, stream, exception."""

    def __init__(self, process: str, stream: str | None) -> None:
        super().__init__()
        self._process = process
        self._stream = stream

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "process": {"name": self._process, "pid": record.process},
            "logger": record.name,
            # Redacted field by field: JSON escaping could hide a password from the pattern.
            "message": redact_url(record.getMessage()),
        }
        stream = getattr(record, "stream", None) or self._stream
        if stream is not None:
            out["stream"] = stream
        if record.exc_info:
            out["exception"] = redact_url(self.formatException(record.exc_info))
        elif record.stack_info:
            out["exception"] = redact_url(self.formatStack(record.stack_info))
        for key in STRUCTURED_FIELDS:
            if hasattr(record, key):
                out[key] = getattr(record, key)
        return json.dumps(out, separators=(",", ":"), default=str)


def configure_logging(
    level: str | int = "INFO",
    process: str = "main",
    fmt: LogFormat = "text",
    stream: str | None = None,
) -> None:
    """Route every logger of this process to stderr in ``fmt``; ``stream``: a camera's."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(_stderr_copy())
    if fmt == "json":
        handler.setFormatter(JsonFormatter(process, stream))
    else:
        label = f"{process}[%(process)d]"
        handler.setFormatter(
            RedactingFormatter(f"%(asctime)s %(levelname)s {label} %(name)s: %(message)s")
        )
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # warnings.warn (torch, onnx) as log records
    adopt_ultralytics()


def adopt_ultralytics() -> None:
    """Send ultralytics' records through our handler, at warnings and above.

    On import it gives its logger a stdout handler of its own that does not propagate:
    call this after importing it (and once at set-up, for a process that already has)."""
    ultra = logging.getLogger("ultralytics")
    for h in list(ultra.handlers):
        ultra.removeHandler(h)
    ultra.propagate = True
    ultra.setLevel(logging.WARNING)


_STDERR: dict[int, IO[str]] = {}  # fd 2's copy per process, made once


def _stderr_copy() -> IO[str]:
    """A stream on a duplicate of fd 2, so :func:`logged_output` can take fd 2 over
    while log lines still reach the real stderr."""
    pid = os.getpid()
    if pid not in _STDERR:
        try:
            fd = os.dup(sys.stderr.fileno())
        except (AttributeError, OSError, ValueError):  # stderr replaced (tests): use it as is
            return sys.stderr
        _STDERR[pid] = os.fdopen(fd, "w", buffering=1, encoding="utf-8", errors="replace")
    return _STDERR[pid]


@contextlib.contextmanager
def logged_output(logger: logging.Logger, level: int = logging.INFO) -> Iterator[None]:
    """Everything written to stdout/stderr inside (Python or C code), logged line by line
    afterwards through ``logger``, instead of reaching the terminal raw."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            sink.seek(0)
            for line in sink.read().decode("utf-8", "replace").splitlines():
                if line.strip():
                    logger.log(level, "%s", line.rstrip())
