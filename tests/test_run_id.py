"""A run id cannot collide by chance (issue 13): the stale-run sweep unlinks every
shared-memory segment named with a dead supervisor's run id, so a reused pid plus a
random part that repeats would take a live daemon's rings."""

from __future__ import annotations

import os
import re
from pathlib import Path

from streamd.app import Daemon
from streamd.config import load_config
from streamd.frames.ring import new_run_id, ring_name

from .daemon import write_pipeline
from .util import free_port


def test_a_run_id_is_the_pid_and_48_random_bits() -> None:
    pid = f"{os.getpid():x}"
    ids = {new_run_id() for _ in range(1000)}
    assert len(ids) == 1000
    for run_id in ids:
        assert re.fullmatch(f"{pid}[0-9a-f]{{12}}", run_id), run_id


def test_segment_names_stay_short() -> None:
    # The longest: a 22-bit pid's run id, stream 9999, generation 10^9, pid 4194304.
    name = ring_name("3fffff" + "f" * 12, 9999, 10**9)
    assert len(name) + len(str(4194304)) - len(str(os.getpid())) <= 64  # POSIX allows 255


def test_the_daemon_names_its_run_with_it(tmp_path: Path) -> None:
    cfg = write_pipeline(tmp_path, Path("unused.pt"), free_port(), [{"id": "a", "url": "a.mp4"}])
    daemon = Daemon(load_config(cfg))
    try:
        assert re.fullmatch(f"{os.getpid():x}[0-9a-f]{{12}}", daemon.run_id)
    finally:
        daemon._shutdown()
