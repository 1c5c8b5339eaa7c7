"""What the daemon leaves on disk is private, and what a killed daemon left is reclaimed.

The journal holds JPEG snapshots of people: its folder is 0700 and its files
(the database, its -wal and -shm, made by whichever process touches it first)
0600 under any umask. A supervisor killed with SIGKILL cannot remove its run
directory or shared memory; the next supervisor does, and nothing else.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from streamd.client import Subscriber
from streamd.publish.journal import AlertJournal
from streamd.runtime.rundir import make_run_dir

from .daemon import start, write_pipeline
from .util import free_port, shm_segments

NULL_MODEL = {"backend": "null", "null_boxes": 2, "imgsz": 320}


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 s of 320x240 at 15 fps: the null backend's boxes need no people in it."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc=size=320x240:rate=15", "-t", "4", "-pix_fmt", "yuv420p",
                    str(path)], check=True)  # fmt: skip
    return path


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temp dir of the daemons' own (TMPDIR): short enough for ipc paths, and no
    other test's run directories in it."""
    with tempfile.TemporaryDirectory(prefix="sd-") as tmp:
        yield Path(tmp)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _wait(what: str, check: Callable[[], Any], timeout_s: float, log: Path) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no {what} after {timeout_s}s:\n{log.read_text()[-3000:]}")


def _stop(daemon: subprocess.Popen[bytes]) -> None:
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait(5)


def test_journal_folder_and_files_are_private_under_a_lax_umask(clip: Path, tmp_path: Path) -> None:
    folder = tmp_path / "journal"
    port = free_port()
    zone = {"name": "all", "polygon": [[0, 0], [320, 0], [320, 240], [0, 240]],
            "alert_on": ["enter"], "debounce_s": 0, "snapshot": True}  # fmt: skip
    cfg = write_pipeline(
        tmp_path, Path("unused.pt"), port,
        [{"id": "cam", "url": str(clip), "loop": True, "realtime": True, "zones": [zone]}],
        model=NULL_MODEL,
        journal={"path": str(folder / "alerts.sqlite"), "endpoint": f"tcp://127.0.0.1:{free_port()}"},
    )  # fmt: skip
    log = tmp_path / "daemon.log"
    old = os.umask(0o022)  # what most shells have: group and others may read
    try:
        daemon = start(cfg, log)
    finally:
        os.umask(old)
    try:
        with Subscriber(f"tcp://127.0.0.1:{port}", topics=["alert."]) as sub:
            # Journaled before published: once one is out, a camera's process wrote it.
            _wait("alert", lambda: sub.recv(0.5), 60, log)
        files = {p.name: _mode(p) for p in folder.iterdir()}
        assert {"alerts.sqlite", "alerts.sqlite-wal", "alerts.sqlite-shm"} <= set(files)
        assert _mode(folder) == 0o700
        assert files == dict.fromkeys(files, 0o600)
    finally:
        _stop(daemon)


def test_a_journal_made_readable_before_is_made_private(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A journal from an older streamd (0644 files, a folder others may write to) is
    tightened where it is ours to tighten, and the folder is named in a warning."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    path = shared / "alerts.sqlite"
    old = os.umask(0o022)
    try:
        db = sqlite3.connect(path)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE t (x)")  # -wal and -shm now exist, 0644 like the file
        db.commit()
    finally:
        os.umask(old)
    assert _mode(path) == 0o644 and _mode(shared / "alerts.sqlite-wal") == 0o644
    with caplog.at_level(logging.WARNING, logger="streamd.publish.journal"):
        journal = AlertJournal(path, "full", 30.0, 512.0)
    for name in ("alerts.sqlite", "alerts.sqlite-wal", "alerts.sqlite-shm"):
        assert _mode(shared / name) == 0o600, name
    assert _mode(shared) == 0o777  # a folder that exists is not ours to change
    assert f"journal folder {shared} is writable by other users" in caplog.text
    journal.db.close()
    db.close()


def test_a_killed_supervisors_run_dir_and_shared_memory_go_at_the_next_start(
    clip: Path, tmp_path: Path, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {"TMPDIR": str(short_tmp)}
    stream = [{"id": "cam", "url": str(clip), "loop": True, "realtime": True}]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cfg_a = write_pipeline(tmp_path / "a", Path("unused.pt"), free_port(), stream, model=NULL_MODEL)
    cfg_b = write_pipeline(tmp_path / "b", Path("unused.pt"), free_port(), stream, model=NULL_MODEL)
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    shm_before = shm_segments()

    first = start(cfg_a, log_a, env)
    try:
        ring_prefix = f"streamd_{first.pid:x}"  # the run id starts with the supervisor's pid
        rings = _wait("frame ring", lambda: {s for s in shm_segments() - shm_before
                                             if s.startswith(ring_prefix)}, 60, log_a)  # fmt: skip
        (stale,) = short_tmp.glob("streamd-*")
        workers = psutil.Process(first.pid).children(recursive=True)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # supervisor and workers: nobody cleans up
        first.wait(5)
    psutil.wait_procs(workers, timeout=5)
    assert stale.is_dir() and rings <= shm_segments()

    # Beside it: a live supervisor's run dir (this test process's) and a look-alike
    # that names no supervisor (streamd bench's temp dirs share the prefix).
    monkeypatch.setattr(tempfile, "tempdir", str(short_tmp))
    live = make_run_dir("beef")
    unowned = short_tmp / "streamd-bench-x"
    unowned.mkdir()

    second = start(cfg_b, log_b, env)
    try:
        _wait("removal", lambda: not stale.exists(), 60, log_b)
        assert not rings & shm_segments()
        assert live.is_dir() and unowned.is_dir()
        assert len(set(short_tmp.glob("streamd-*")) - {live, unowned}) == 1  # its own
        text = log_b.read_text()
        assert f"removed {stale} and {len(rings)} shared-memory segment(s)" in text
        assert f"supervisor {first.pid}" in text
    finally:
        _stop(second)
