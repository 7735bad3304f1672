"""Streamed sha256: the one helper every stage uses to name files, sets of files and bundles.

Files are read in 16 MiB blocks, so a 16 GB checkpoint is hashed in bounded memory.
"""

from __future__ import annotations

import hashlib
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
