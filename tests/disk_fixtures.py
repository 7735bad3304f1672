"""A real, small file system that can be filled to the last byte (or mounted read-only): a tmpfs mounted
under the test's folder.

Mounting needs root (CAP_SYS_ADMIN); where that is refused the tests that need it skip and say why. The
disk is full for real: writes fail in the kernel with ENOSPC, SQLite sees SQLITE_FULL."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

PAGE = 4096  # tmpfs hands out space a page at a time


class SmallDisk:
    """A tmpfs of ``size`` at ``root``; :meth:`fill` takes every free byte, :meth:`free` gives them back."""

    def __init__(self, root: Path, size: str = "16m", options: str = ""):
        self.root = root
        self.filler = root / ".filler"
        root.mkdir(parents=True, exist_ok=True)
        mount_options = ",".join(o for o in (f"size={size}", options) if o)  # "ro": a read-only one
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", mount_options, "tmpfs", str(root)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {done.stderr.strip()}")

    def fill(self, leave: int = 0) -> None:
        """Take every free byte but ``leave`` (rounded up to whole pages: a file of that size still fits)."""
        self._fill()
        if leave:
            pages = -(-leave // PAGE)
            os.truncate(self.filler, os.path.getsize(self.filler) // PAGE * PAGE)  # whole pages only
            missing = pages - self.free_bytes() // PAGE
            os.truncate(self.filler, os.path.getsize(self.filler) - missing * PAGE)
            assert self.free_bytes() == pages * PAGE, (self.free_bytes(), pages)

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def _fill(self) -> None:
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for chunk in (1 << 20, 4096, 1):  # big writes first, then the last page byte by byte
                try:
                    while True:
                        os.write(fd, bytes(chunk))
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
        finally:
            os.close(fd)

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.root)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    disk = SmallDisk(tmp_path / "disk")
    yield disk
    disk.unmount()


@pytest.fixture
def read_only_disk(tmp_path):
    disk = SmallDisk(tmp_path / "ro", options="ro")
    yield disk
    disk.unmount()
