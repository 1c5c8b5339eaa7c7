"""The supervisor's private run directory, and finding those left by supervisors that died.

A supervisor removes its run directory (ipc sockets, metrics files) when it
stops; one that was SIGKILLed cannot. Each run directory therefore names its
supervisor in an owner file (pid and process start time, so a reused pid is
not mistaken for it), and the next supervisor to start removes the ones whose
supervisor is gone. A directory is only ever judged if it is a real directory
owned by this user with a readable owner file written in this pid namespace:
anything else (another user's run, an older streamd's, one being created right
now, a container's with its own pids) is left alone.
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

PREFIX = "streamd-"
OWNER_FILE = "supervisor.json"
# psutil derives a start time from the boot time, which the kernel may restate by
# a fraction of a second; a pid reused within a second of the original is not.
START_TOLERANCE_S = 1.0


@dataclass(frozen=True, slots=True)
class Owner:
    """The supervisor a run directory belongs to."""

    pid: int
    started: float  # psutil's create_time of that process
    run_id: str  # names its shared-memory segments
    pid_ns: str  # its pids mean something only in this namespace

    @classmethod
    def me(cls, run_id: str) -> Owner:
        return cls(os.getpid(), psutil.Process().create_time(), run_id, _pid_namespace())

    def alive(self) -> bool:
        try:
            started: float = psutil.Process(self.pid).create_time()
        except psutil.NoSuchProcess:
            return False
        except psutil.AccessDenied:  # hidden from us (hidepid): cannot tell, so alive
            return True
        return abs(started - self.started) < START_TOLERANCE_S


def make_run_dir(run_id: str) -> Path:
    """A new private (0700) run directory under the temp dir, naming this process."""
    path = Path(tempfile.mkdtemp(prefix=PREFIX))
    staging = path / f".{OWNER_FILE}"
    staging.write_text(json.dumps(asdict(Owner.me(run_id))))
    staging.replace(path / OWNER_FILE)  # a reader sees the whole file or none
    return path


def stale_run_dirs() -> Iterator[tuple[Path, Owner]]:
    """Run directories in the temp dir whose supervisor is gone."""
    for path in Path(tempfile.gettempdir()).glob(PREFIX + "*"):
        owner = _owner(path)
        if owner is not None and owner.pid_ns == _pid_namespace() and not owner.alive():
            yield path, owner


def _owner(path: Path) -> Owner | None:
    """The owner file of one of our own run directories; None when it is not one."""
    try:
        st = path.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            return None
        data = json.loads((path / OWNER_FILE).read_text())
        owner = Owner(int(data["pid"]), float(data["started"]), str(data["run_id"]),
                      str(data["pid_ns"]))  # fmt: skip
    except (OSError, ValueError, TypeError, KeyError):
        return None
    # The run id becomes a /dev/shm glob: never let it match other runs' segments.
    return owner if re.fullmatch("[0-9a-f]+", owner.run_id) else None


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:  # not Linux, or no /proc: one namespace as far as we can tell
        return ""
