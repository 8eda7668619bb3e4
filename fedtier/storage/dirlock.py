"""One reducer per data directory: an exclusive lock held for the reducer's lifetime.

Two reducers on one FEDTIER_DATA_DIR would both run rounds on one trail, sweep each other's
temporary model data and keep each other's "latest" copies: the stores are safe for several
readers, not for two owners. The second reducer must refuse to start, saying who holds the
directory.

``fcntl.flock`` on ``<dir>/reducer.lock``: the kernel drops the lock when the holder's last file
descriptor closes, also on ``kill -9`` or a crash, so there is no stale lock to clean up by hand
and no pid file whose process may have been replaced by another. Locks are per open file, so a
second reducer in the *same* process (tests, ``fedtier sandbox``) is refused too until the first
is closed. The descriptor is close-on-exec (PEP 446), so a program the reducer starts does
not inherit the lock. The file keeps the holder's pid, host and start time for the refusal's message; it is
never deleted (deleting it would let a third process lock a new file while the second still holds
the old one).

Hand-written rather than the ``filelock`` package: that one truncates the file when it opens it,
so a refused reducer would erase the very holder information its message needs.

Limits: the lock protects a directory, not a MongoDB database or a MinIO bucket; two reducers on
different data directories pointed at the same services are not detected (docs/reliability.md).
flock works on local filesystems and on NFS (Linux maps it to NFS byte-range locks); on a
platform without ``fcntl`` (Windows) no lock is taken and a warning says so.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK_NAME = "reducer.lock"


class DataDirInUse(RuntimeError):
    """Another live process holds the data directory."""


class DataDirLock:
    """Exclusive ownership of a directory for as long as this object holds it."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "DataDirLock":
        """Take the lock or raise DataDirInUse naming the directory and the holder; never waits:
        a reducer that would start later is worse than one that says why it cannot."""
        if fcntl is None:  # pragma: no cover - Windows
            log.warning("cannot lock %s on this platform: make sure no other reducer uses it", self.directory)
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(fd)
            os.close(fd)
            raise DataDirInUse(
                f"data directory {self.directory.resolve()} is in use by another reducer ({holder}); "
                f"two reducers on one data directory would corrupt its trail. Stop that one, or give "
                f"this one its own FEDTIER_DATA_DIR") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "started_at": time.time()}).encode(), 0)
        self._fd = fd
        log.debug("locked data directory %s", self.directory)
        return self

    def release(self) -> None:
        """Give the directory up (idempotent); closing the descriptor drops the lock."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None


def _describe_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(info["started_at"])))
        return f"pid {int(info['pid'])} on host {info['host']}, since {started}"
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown: it is still starting"
