"""Where each output is in the journal: its cursor file, and reading the alerts after it.

Cursors live next to the journal, in ``<journal>.outputs/`` (0700), one
``<output name>.json`` (0600) each: ``{"after": {stream: last seq delivered},
"id": journal row id}``. They are written atomically (temporary file, fsync,
rename) at most twice a second while they move, and at stop. A crash loses at
most that half second of progress, which is re-sent: at least once.

An output seen for the first time starts at the journal's end (a new MQTT
broker is not flooded with a month of old alerts). Rows are read by ``id``
(the journal's insertion order, which is each stream's seq order), so a poll
costs one primary-key range scan whatever the journal's size.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import stat
from pathlib import Path

from streamd.outputs.base import Cursor, JournaledAlert

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600


def cursor_dir(journal: Path) -> Path:
    return journal.with_name(journal.name + ".outputs")


class CursorStore:
    """One output's cursor file."""

    def __init__(self, journal: Path, name: str) -> None:
        self.folder = cursor_dir(journal)
        self.path = self.folder / f"{name}.json"

    def load(self, db: sqlite3.Connection) -> Cursor:
        """The saved cursor; the journal's end for a new output, or for a journal that was
        replaced since (its row ids went back)."""
        end_id = _last_id(db)
        try:
            data = json.loads(self.path.read_text())
            cursor = Cursor({str(k): int(v) for k, v in data["after"].items()}, int(data["id"]))
        except FileNotFoundError:
            cursor = _end(db, end_id)
            log.info("output cursor %s is new: starting at the journal's end", self.path.name)
            self.save(cursor)
            return cursor
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            log.error("output cursor %s unreadable (%s): starting at the journal's end",
                      self.path, e)  # fmt: skip
            cursor = _end(db, end_id)
            self.save(cursor)
            return cursor
        if cursor.id > end_id:
            log.warning("output cursor %s is past the journal's end (a new journal?): "
                        "starting at its end", self.path.name)  # fmt: skip
            cursor = _end(db, end_id)
            self.save(cursor)
        return cursor

    def save(self, cursor: Cursor) -> None:
        _private_dir(self.folder)
        tmp = self.path.with_name(self.path.name + ".tmp")
        body = json.dumps({"after": cursor.after, "id": cursor.id}, sort_keys=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)  # an old file of another mode, whatever the umask
            os.write(fd, body.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dfd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _private_dir(folder: Path) -> None:
    folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    st = folder.stat()
    if stat.S_IMODE(st.st_mode) != DIR_MODE and st.st_uid == os.getuid():
        os.chmod(folder, DIR_MODE)


def _last_id(db: sqlite3.Connection) -> int:
    # AUTOINCREMENT: sqlite_sequence keeps the highest id ever used, pruned rows included.
    with contextlib.suppress(sqlite3.OperationalError):
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'alerts'").fetchone()
        if row is not None:
            return int(row[0])
    (last,) = db.execute("SELECT COALESCE(MAX(id), 0) FROM alerts").fetchone()
    return int(last)


def _end(db: sqlite3.Connection, end_id: int) -> Cursor:
    rows = db.execute("SELECT stream, MAX(seq) FROM alerts GROUP BY stream")
    return Cursor({stream: int(seq) for stream, seq in rows}, end_id)


class JournalReader:
    """Reads one output's alerts after its position, in order, skipping those its cursor
    says were delivered (a restart resumes at the cursor's row id)."""

    def __init__(self, cursor: Cursor) -> None:
        self.position = cursor.id
        self._after = dict(cursor.after)

    def read(self, db: sqlite3.Connection, limit: int) -> list[JournaledAlert]:
        """Up to ``limit`` alerts after the position (rows the cursor covers are passed
        over without counting against it)."""
        out: list[JournaledAlert] = []
        while len(out) < limit:
            rows = db.execute(
                "SELECT id, stream, seq, epoch, ts, payload, snapshot FROM alerts"
                " WHERE id > ? ORDER BY id LIMIT ?",
                (self.position, limit - len(out)),
            ).fetchall()
            if not rows:
                break
            for row_id, stream, seq, epoch, ts, payload, snapshot in rows:
                self.position = int(row_id)
                if seq <= self._after.get(stream, -1):
                    continue  # delivered before the restart: the cursor moved past it
                try:
                    body = json.loads(payload)
                except ValueError:
                    log.error("journal row %d of %s is not JSON: skipped", row_id, stream)
                    continue
                out.append(JournaledAlert(int(row_id), stream, int(seq), int(epoch), float(ts),
                                          body, snapshot))  # fmt: skip
        return out
