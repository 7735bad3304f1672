"""gamma_rt/bundle_id.py: the one bundle identity that caches, journals and results key on."""

from __future__ import annotations

import hashlib

from gamma_rt.bundle_id import bundle_identity


def test_identity_is_the_sha256_of_the_manifest_and_follows_its_changes(tmp_path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text('{"schema_version": 1}')
    first = bundle_identity(tmp_path)
    assert first == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert bundle_identity(str(tmp_path)) == first
    manifest.write_text('{"schema_version": 1, "components": {}}')
    assert bundle_identity(tmp_path) != first


def test_the_runtime_keys_caches_and_journals_with_the_same_identity(tmp_path):
    from gamma_rt.runtime import embed_cache

    (tmp_path / "manifest.json").write_text('{"schema_version": 1}')
    assert embed_cache.bundle_identity(tmp_path) == bundle_identity(tmp_path)
