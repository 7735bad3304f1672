"""One tagging run per results folder: a second run on the same RESULTS says which process holds it and
exits (or waits with ``--wait``), instead of asking the same tracks twice.

The lock is an ``flock`` on ``RESULTS/run.lock``, which holds the owner's pid. The kernel drops it when
the owner exits in any way (``kill -9`` included), so a stale lock never blocks the next run. Like the
SQLite journal it needs a local file system (not NFS).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Callable

from gamma_rt.errors import GammaError, is_disk_full

LOCK_NAME = "run.lock"


class ResultsBusy(GammaError):
    """Another run holds the results folder."""


class RunLock:
    """``with RunLock(out, wait=False):`` holds ``out`` for this process."""

    def __init__(self, out: str | Path, wait: bool = False, on_wait: Callable[[str], None] | None = None):
        self.path = Path(out) / LOCK_NAME
        self.wait = wait
        self.on_wait = on_wait
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:  # read-only, no permission, a file where the folder should be
            if is_disk_full(e):
                raise
            raise GammaError(f"{self.path.parent}: cannot write the results folder ({e.strerror or e}); "
                             "choose another --out") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(fd)
            if not self.wait:
                os.close(fd)
                raise ResultsBusy(f"{self.path.parent}: another gamma-rt tag run (pid {holder}) holds this results "
                                  "folder; let it finish, or pass --wait to start when it does") from None
            if self.on_wait:
                self.on_wait(f"waiting for the run with pid {holder} to release {self.path.parent}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:  # a full disk: give the lock back, or this process holds it until it exits
            os.close(fd)
            raise
        self._fd = fd
        return self

    @staticmethod
    def _holder(fd: int) -> str:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return text or "unknown"

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None
