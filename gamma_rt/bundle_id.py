"""A bundle's identity: the one key every cache, journal and result uses to tell bundles apart."""

from __future__ import annotations

from pathlib import Path

from gamma_rt.hashing import sha256_file
from gamma_rt.manifest import MANIFEST_NAME


def bundle_identity(bundle: str | Path) -> str:
    """Hex sha256 of ``BUNDLE/manifest.json``. The manifest records every component file's sha256, so this
    changes whenever any file of the bundle changes, and it costs one small read, not a hash of gigabytes."""
    return sha256_file(Path(bundle) / MANIFEST_NAME)
