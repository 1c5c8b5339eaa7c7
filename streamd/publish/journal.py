"""The alert journal: every alert in SQLite before it is published, and replay from it.

An alert is committed (``synchronous: full`` — fsynced) before its message
goes out, so a subscriber that saw it can always get it again and one that
missed it can ask for it. Alert ``seq`` numbers continue across daemon
restarts (the journal knows the last one per stream), so "everything after
seq N" means the same thing before and after a restart; the new ``epoch`` still
shows the restart.

WAL mode: the replay thread reads while every camera's process appends its own
stream's alerts (writers take turns: ``BEGIN IMMEDIATE``, 5 s busy timeout).
Retention: rows older than ``max_age_days``, then the oldest beyond
``max_mb`` of payload and snapshot bytes, are deleted (the file keeps its
pages for reuse rather than shrinking).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    stream   TEXT    NOT NULL,
    seq      INTEGER NOT NULL,
    epoch    INTEGER NOT NULL,
    ts       REAL    NOT NULL,
    stored   REAL    NOT NULL,
    bytes    INTEGER NOT NULL,
    payload  TEXT    NOT NULL,
    snapshot BLOB,
    UNIQUE (stream, seq)
);
CREATE INDEX IF NOT EXISTS alerts_stored ON alerts (stored);
CREATE TABLE IF NOT EXISTS seq_reserve (
    stream TEXT PRIMARY KEY,
    upto   INTEGER NOT NULL
);
"""

# Columns added since the first journals: (name, SQL type). An older journal gets them
# when a writer opens it (NULL in its old rows, which read as before); a read-only
# connection (replay) reads an old journal as it is.
_ADDED_COLUMNS = (("clip_id", "TEXT"), ("clip_path", "TEXT"))

# Alert seqs are reserved this far ahead of the last one handed out, in the same
# transaction as the alerts: while the disk is full, alerts still go out live (not
# journaled) with seqs from the reserved block, and a process that starts after
# an unclean end numbers on above the block, so no published seq is ever reused.
SEQ_RESERVE = 10_000


@dataclass(frozen=True, slots=True)
class Entry:
    payload: dict[str, Any]
    snapshot: bytes | None


# The journal holds JPEG snapshots of people: owner-only, whatever the umask.
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
_COMPANIONS = ("", "-wal", "-shm", "-journal")


def _private_dir(folder: Path) -> None:
    """Create ``folder`` (and missing parents) 0700; warn if an existing one lets others in."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    for p in reversed(missing):
        p.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)  # the umask can only narrow it
    mode = stat.S_IMODE(folder.stat().st_mode)
    # An existing folder may be shared on purpose (/var/lib, a home): not ours to
    # change. The files stay private; a folder others may write to lets them delete
    # or replace the journal, which is worth saying.
    if not missing and mode & (stat.S_IWGRP | stat.S_IWOTH):
        log.warning("journal folder %s is writable by other users (mode %o)", folder, mode)


def _private_files(path: Path) -> None:
    """Make the database 0600 (creating it so) before SQLite opens it: SQLite gives
    its -wal and -shm the database's own mode, in whichever process makes them."""
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, PRIVATE_FILE_MODE))
    for name in _COMPANIONS:  # a journal from before may have been made 0644
        file = path.with_name(path.name + name)
        try:
            st = file.stat()
        except FileNotFoundError:
            continue
        if stat.S_IMODE(st.st_mode) & ~PRIVATE_FILE_MODE and st.st_uid == os.getuid():
            os.chmod(file, PRIVATE_FILE_MODE)
            log.info("journal file %s made private (was mode %o)", file, st.st_mode & 0o777)


def connect(path: Path, synchronous: str = "full", readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    else:
        _private_dir(path.parent)
        _private_files(path)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(_SCHEMA)
        _migrate(db)
    db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
    db.execute("PRAGMA busy_timeout=5000")
    return db


def _migrate(db: sqlite3.Connection) -> None:
    """Add :data:`_ADDED_COLUMNS` a journal lacks (every camera's process opens the file:
    checked again inside the write transaction, so only one adds them)."""

    def missing() -> list[tuple[str, str]]:
        have = {row[1] for row in db.execute("PRAGMA table_info(alerts)")}
        return [(name, kind) for name, kind in _ADDED_COLUMNS if name not in have]

    if not missing():
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        for name, kind in missing():
            db.execute(f"ALTER TABLE alerts ADD COLUMN {name} {kind}")
            log.info("journal: column %s added", name)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class AlertJournal:
    def __init__(
        self,
        path: Path,
        synchronous: str,
        max_age_days: float,
        max_mb: float,
        prune: bool = True,
        busy_timeout_s: float = 5.0,
    ) -> None:
        """``prune``: apply retention now (the supervisor does; the cameras' processes,
        which only append, do not). ``busy_timeout_s``: how long a write waits for
        another writer (a camera's journal thread waits long: it costs no frames)."""
        self.path = path
        self.max_age_s = max_age_days * 86400.0
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.db = connect(path, synchronous)
        self.db.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        if prune:
            self.prune()

    def next_seqs(self) -> dict[str, int]:
        """Per stream, the seq the next alert gets (see :meth:`next_seq`)."""
        return {stream: self.next_seq(stream) for stream in last_seqs(self.db)}

    def next_seq(self, stream: str) -> int:
        """The seq the next alert of ``stream`` gets: after its last journaled one, and
        after its reserved block when the process before did not end cleanly (it may
        have published seqs from the block that never reached the journal)."""
        (last,) = self.db.execute(
            "SELECT MAX(seq) FROM alerts WHERE stream = ?", (stream,)
        ).fetchone()
        reserved = self._reserved(stream)
        return max(-1 if last is None else int(last), -1 if reserved is None else reserved) + 1

    def _reserved(self, stream: str) -> int | None:
        row = self.db.execute("SELECT upto FROM seq_reserve WHERE stream = ?", (stream,))
        found = row.fetchone()
        return None if found is None else int(found[0])

    def reserve(self, stream: str, upto: int) -> None:
        """Record that seqs of ``stream`` up to ``upto`` may be handed out (never lowers
        what another process reserved)."""
        self.db.execute(
            "INSERT INTO seq_reserve (stream, upto) VALUES (?, ?)"
            " ON CONFLICT (stream) DO UPDATE SET upto = MAX(upto, excluded.upto)",
            (stream, upto),
        )

    def release(self, stream: str, last_out: int, reserved: int) -> None:
        """A clean end: the next process numbers on right after ``last_out`` — unless
        another process reserved past ``reserved`` (ours) meanwhile."""
        self.db.execute(
            "UPDATE seq_reserve SET upto = ? WHERE stream = ? AND upto = ?",
            (last_out, stream, reserved),
        )

    def append(self, entries: Sequence[Entry], reserve: Mapping[str, int] | None = None) -> None:
        """Commit a batch of alerts (one transaction, one fsync), with ``reserve``
        (stream → upto) in the same transaction."""
        if not entries:
            return
        now = time.time()
        rows = []
        for e in entries:
            body = json.dumps(e.payload, separators=(",", ":"), allow_nan=False)
            p = e.payload
            size = len(body) + (len(e.snapshot) if e.snapshot else 0)
            rows.append((p["stream"], p["seq"], p["epoch"], p["ts"], now, size, body, e.snapshot,
                         p.get("clip_id"), p.get("clip_path")))  # fmt: skip
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany(
                "INSERT INTO alerts (stream, seq, epoch, ts, stored, bytes, payload, snapshot,"
                " clip_id, clip_path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            for stream, upto in (reserve or {}).items():
                self.reserve(stream, upto)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def prune(self, now: float | None = None) -> int:
        """Apply retention; return how many alerts were deleted."""
        now = time.time() if now is None else now
        cur = self.db.execute("DELETE FROM alerts WHERE stored < ?", (now - self.max_age_s,))
        deleted = cur.rowcount
        (total,) = self.db.execute("SELECT COALESCE(SUM(bytes), 0) FROM alerts").fetchone()
        if total > self.max_bytes:
            # Oldest first until under the bound: find the id where the running total fits.
            excess = total - self.max_bytes
            cut = self.db.execute(
                "SELECT id FROM (SELECT id, SUM(bytes) OVER (ORDER BY id) AS run FROM alerts)"
                " WHERE run >= ? ORDER BY id LIMIT 1",
                (excess,),
            ).fetchone()
            if cut is not None:
                deleted += self.db.execute("DELETE FROM alerts WHERE id <= ?", cut).rowcount
        return deleted

    def close(self) -> None:
        self.db.close()


def last_seqs(db: sqlite3.Connection) -> dict[str, int]:
    """Per stream, the seq of its last journaled alert."""
    rows = db.execute("SELECT stream, MAX(seq) FROM alerts GROUP BY stream")
    return {stream: int(last) for stream, last in rows}


def read_after(
    db: sqlite3.Connection,
    after: Mapping[str, int],
    stream: str | None = None,
    limit: int = 500,
) -> tuple[list[Entry], bool]:
    """Alerts with seq greater than ``after[stream]`` (-1 for streams not named), in the
    order they were published; (entries, whether more remain)."""
    if stream is not None:
        after = {stream: after.get(stream, -1)}
    known = list(after.items())
    # (stream = a AND seq > n) OR ... OR, for all streams, those not named: everything.
    terms = ["(stream = ? AND seq > ?)"] * len(known)
    args: list[Any] = [v for pair in known for v in pair]
    if stream is None:
        terms.append(f"stream NOT IN ({', '.join('?' * len(known))})")
        args += [name for name, _ in known]
    sql = f"SELECT payload, snapshot FROM alerts WHERE {' OR '.join(terms)} ORDER BY id LIMIT ?"
    rows = db.execute(sql, [*args, limit + 1]).fetchall()
    entries = [Entry(json.loads(payload), snapshot) for payload, snapshot in rows[:limit]]
    return entries, len(rows) > limit
