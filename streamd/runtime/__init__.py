"""Process plumbing shared by every streamd process: logging, redaction, worker setup."""
