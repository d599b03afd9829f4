"""One instance per account: an OS lock (flock) on a lock file, held for the life of the process.

`oms run` locks `<data_dir>/oms.lock`, `oms paper` locks `<state_file>.lock`. The kernel drops the lock when
the holding process ends in any way (kill -9 included), so a stale file never blocks a restart: only a live
holder does. The holder writes its PID into the file after locking, for the refusal message and for
`oms doctor` (`is_held`, `holder_pid`).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class InstanceLocked(Exception):
    """Another live process holds the lock. The message names the file and the holder's PID."""

    def __init__(self, path: Path, pid: int | None, what: str):
        self.path, self.pid = path, pid
        holder = f"PID {pid}" if pid else "another process (PID not yet written)"
        super().__init__(f"{what} is already running on {path.parent} ({holder} holds {path})")


class Lock:
    """A held lock; `release()` (or leaving the `with` block) gives it up. The PID stays in the file: it is
    only meaningful while the file is locked."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def release(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)  # closing the descriptor drops the flock

    def __enter__(self) -> "Lock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def acquire(path: str | os.PathLike, what: str = "oms") -> Lock:
    """Lock `path` (created if missing, its directory too) without waiting; raise InstanceLocked naming the
    holder's PID if another process holds it, OSError if the file cannot be created."""
    path = Path(os.path.abspath(path))  # the refusal names a full path, whatever the working directory
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_CLOEXEC: a child process must not inherit (and so keep) the lock.
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _read_pid(fd)
        os.close(fd)
        raise InstanceLocked(path, pid, what) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return Lock(path, fd)


def is_held(path: str | os.PathLike) -> bool:
    """True if a live process holds the lock on `path` (this process counts too)."""
    return _probe(Path(path))[0]


def holder_pid(path: str | os.PathLike) -> int | None:
    """The PID of the live holder of `path`, or None when nobody holds it (a PID left in a stale file is
    not returned: that process is gone)."""
    held, pid = _probe(Path(path))
    return pid if held else None


def _probe(path: Path) -> tuple[bool, int | None]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False, None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True, _read_pid(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False, None
    finally:
        os.close(fd)
