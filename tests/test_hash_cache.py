"""gamma_rt/hashing.py's verified-hash cache: outside the bundle, and blind to no rewrite (real files)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from gamma_rt import hashing
from gamma_rt.errors import BundleError
from gamma_rt.manifest import Manifest


@pytest.fixture()
def bundle(tiny_bundle_gguf, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_gguf, copy)
    return copy


def _count_hashing(monkeypatch) -> list:
    calls = []
    real = hashing.sha256_file
    monkeypatch.setattr(hashing, "sha256_file", lambda p: calls.append(p) or real(p))
    return calls


def test_a_verified_file_is_not_hashed_again(bundle, monkeypatch):
    Manifest.load(bundle)
    calls = _count_hashing(monkeypatch)
    Manifest.load(bundle)
    assert calls == []
    assert not any(p.name.startswith(".verified") for p in bundle.iterdir())  # nothing written into the bundle


def test_a_rewrite_that_keeps_size_and_mtime_is_refused(bundle):
    Manifest.load(bundle)  # verified and remembered
    gguf = bundle / "decoder-f32.gguf"
    st = gguf.stat()
    data = bytearray(gguf.read_bytes())
    data[-1] ^= 0xFF  # one weight byte: size and structure unchanged
    gguf.write_bytes(bytes(data))
    os.utime(gguf, ns=(st.st_atime_ns, st.st_mtime_ns))  # as cp -a, rsync and tar keep it
    assert gguf.stat().st_mtime_ns == st.st_mtime_ns and gguf.stat().st_size == st.st_size
    with pytest.raises(BundleError, match=r"decoder-f32.gguf: sha256 .* does not match components.decoder.sha256"):
        Manifest.load(bundle)


def test_a_cache_file_inside_the_bundle_vouches_for_nothing(bundle):
    gguf = bundle / "decoder-f32.gguf"
    data = bytearray(gguf.read_bytes())
    data[-1] ^= 0xFF
    gguf.write_bytes(bytes(data))
    st = gguf.stat()
    expected = Manifest.read(bundle).components["decoder"].sha256
    forged = {f"{gguf.name}:{st.st_size}:{st.st_mtime_ns}": expected,  # the old in-bundle format
              f"{hashing.file_identity(gguf)}:{expected}": True}  # and the new one
    (bundle / ".verified.json").write_text(json.dumps(forged))
    (bundle / hashing.HASH_CACHE_NAME).write_text(json.dumps(forged))
    with pytest.raises(BundleError, match="sha256 .* does not match"):
        Manifest.load(bundle)


def test_the_cache_follows_the_environment_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv(hashing.HASH_CACHE_ENV, str(tmp_path / "mine.json"))
    assert hashing.hash_cache_path() == tmp_path / "mine.json"
    monkeypatch.delenv(hashing.HASH_CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hashing.hash_cache_path() == tmp_path / "xdg" / "gamma-rt" / hashing.HASH_CACHE_NAME


def test_only_matches_are_remembered(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"abc" * 1000)
    cache = hashing.VerifiedHashes(tmp_path / "cache.json")
    assert cache.sha256(f, "0" * 64) == hashing.sha256_file(f)  # a mismatch is hashed, never recorded
    cache.save()
    assert not (tmp_path / "cache.json").exists()
    assert cache.sha256(f, hashing.sha256_file(f)) == hashing.sha256_file(f)
    cache.save()
    assert len(json.loads((tmp_path / "cache.json").read_text())) == 1
