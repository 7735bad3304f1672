"""Streamed sha256: the one helper every stage uses to name files, sets of files and bundles.

Files are read in 16 MiB blocks, so a 16 GB checkpoint is hashed in bounded memory. Verified hashes are
remembered outside the bundle (:class:`VerifiedHashes`), keyed by what a rewrite cannot keep.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

BLOCK = 1 << 24  # bytes read at a time


def update_from_file(h, path: str | Path) -> None:
    """Feed the bytes of ``path`` into the hash object ``h``, one block at a time."""
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(BLOCK), b""):
            h.update(block)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of one file's bytes."""
    h = hashlib.sha256()
    update_from_file(h, path)
    return h.hexdigest()


def sha256_files(paths: Iterable[str | Path]) -> str:
    """Hex sha256 over several files, each as its name then its bytes, in the order given.

    The names count, so renaming a file changes the hash; callers sort the paths when order does not matter."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).name.encode())
        update_from_file(h, p)
    return h.hexdigest()


# Where verified hashes are remembered: $GAMMA_RT_HASH_CACHE (a file), else the user's cache folder. Never
# inside a bundle: a bundle is untrusted input, and a cache it carries could vouch for any file.
HASH_CACHE_ENV = "GAMMA_RT_HASH_CACHE"
HASH_CACHE_NAME = "verified-sha256.json"
MAX_VERIFIED = 4096  # entries kept; the oldest go first


def hash_cache_path() -> Path:
    """The verified-hash cache file: $GAMMA_RT_HASH_CACHE, else $XDG_CACHE_HOME (or ~/.cache)/gamma-rt/."""
    explicit = os.environ.get(HASH_CACHE_ENV)
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gamma-rt" / HASH_CACHE_NAME


def file_identity(path: str | Path) -> str:
    """What must stay the same for a file's bytes to be the same: device, inode, size, mtime and ctime (ns).

    ``cp -a``, rsync and tar keep mtime, and ``os.utime`` sets it, but any write moves ctime, and no
    ordinary tool can set ctime back."""
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


class VerifiedHashes:
    """Files already found to match an expected sha256, so a 16 GB bundle is hashed once, not at every load.

    An entry says "the file with this identity (see :func:`file_identity`) had this sha256"; only
    matches are recorded. The cache lives outside the bundle (:func:`hash_cache_path`)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else hash_cache_path()
        self.entries = self._read()
        self.added: dict[str, bool] = {}

    def _read(self) -> dict:
        try:
            entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return entries if isinstance(entries, dict) else {}

    def sha256(self, path: str | Path, expected: str) -> str:
        """The file's sha256: ``expected`` when this very file was verified against it before, else hashed."""
        identity = file_identity(path)
        key = f"{identity}:{expected}"
        if self.entries.get(key) is True:
            return expected
        digest = sha256_file(path)
        if digest == expected and file_identity(path) == identity:  # not changed while it was read
            self.added[key] = True
        return digest

    def save(self) -> None:
        """Merge the new entries into the cache file (atomically; a cache that cannot be written is skipped)."""
        if not self.added:
            return
        entries = {**self._read(), **self.added}
        entries = dict(list(entries.items())[-MAX_VERIFIED:])
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(entries))
            os.replace(tmp, self.path)
        except OSError:
            pass  # a read-only home still loads bundles; they are hashed again next time
        self.added = {}
