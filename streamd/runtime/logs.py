"""Logging set up once per process: one line per record on stderr, credentials redacted."""

from __future__ import annotations

import logging
import sys

from streamd.runtime.redact import redact_url


class RedactingFormatter(logging.Formatter):
    """Formats normally, then scrubs URL credentials from the whole line (tracebacks included)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_url(super().format(record))


def configure_logging(level: str | int = "INFO", process: str = "main") -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        RedactingFormatter(
            f"%(asctime)s %(levelname)s {process}[%(process)d] %(name)s: %(message)s"
        )
    )
    root.addHandler(handler)
    root.setLevel(level)
    # ultralytics logs through its own logger at INFO; keep it to warnings.
    logging.getLogger("ultralytics").setLevel(logging.WARNING)
