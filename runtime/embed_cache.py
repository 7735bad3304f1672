"""An on-disk cache of audio embeddings, one ``.npy`` per window, so a second run skips the encoders.

The key of a window is sha256 over the bundle's identity (sha256 of its manifest, which records every
graph's sha256), the audio-side precision, and the window's 16 kHz samples. Keying by decoded samples
rather than file bytes means the same music reached through another container, or on stdin, hits too;
keying per window keeps the cache usable while streaming (no whole-file hash needed before the first
window). Files are written atomically, so concurrent runs sharing a cache never read half a file, and a
full disk raises DiskFull with no temporary left behind.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np

from gamma_rt.bundle_id import bundle_identity
from gamma_rt.errors import stop_on_full_disk


class EmbeddingCache:
    """``cache_dir/<bundle id[:16]>-<precision>/<window key>.npy`` holding (tokens_per_window, n_embd) float32."""

    def __init__(self, cache_dir: str | Path, bundle: str | Path, precision: str):
        self.bundle_id = bundle_identity(bundle)
        self.precision = precision
        self.folder = Path(cache_dir) / f"{self.bundle_id[:16]}-{precision}"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = 0

    def key(self, samples: np.ndarray, index: int = 0, n_valid: int | None = None) -> str:
        """The window's key. ``index`` and ``n_valid`` count too: rotary time embeddings depend on the
        window's place in the song, and the mel mask on how many samples are real."""
        h = hashlib.sha256()
        h.update(self.bundle_id.encode())
        h.update(self.precision.encode())
        h.update(f"{index}:{len(samples) if n_valid is None else n_valid}".encode())
        h.update(np.ascontiguousarray(samples, dtype=np.float32).tobytes())
        return h.hexdigest()

    def get(self, key: str) -> np.ndarray | None:
        path = self.folder / f"{key}.npy"
        try:
            out = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            self.misses += 1
            return None
        except (ValueError, OSError, EOFError):
            # a damaged entry (disk full, killed writer on a filesystem without atomic rename) is recomputed
            self.misses += 1
            return None
        self.hits += 1
        return out

    def put(self, key: str, embeddings: np.ndarray) -> None:
        with stop_on_full_disk(f"writing the embedding cache {self.folder}"):
            fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    np.save(f, np.ascontiguousarray(embeddings, dtype=np.float32), allow_pickle=False)
                os.replace(tmp, self.folder / f"{key}.npy")
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
