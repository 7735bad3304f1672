"""Shared fixtures: tiny checkpoints and bundles, built once per test session in a temporary folder."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def private_hash_cache(tmp_path_factory):
    """Verified hashes go to this session's own cache file, not the user's (subprocesses inherit it)."""
    from gamma_rt.hashing import HASH_CACHE_ENV

    path = tmp_path_factory.mktemp("hash_cache") / "verified-sha256.json"
    old = os.environ.get(HASH_CACHE_ENV)
    os.environ[HASH_CACHE_ENV] = str(path)
    yield path
    if old is None:
        os.environ.pop(HASH_CACHE_ENV, None)
    else:
        os.environ[HASH_CACHE_ENV] = old


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny-preset GaMMA checkpoint folder (random weights, seed 0) with its built-in tokenizer."""
    from gamma_rt.export.families.gamma.checkpoint import write_random_checkpoint
    from gamma_rt.export.families.gamma.config import GammaConfig
    from gamma_rt.export.families.gamma.tokenizer import write_tokenizer

    folder = tmp_path_factory.mktemp("tiny_checkpoint")
    cfg = GammaConfig.tiny()
    write_random_checkpoint(cfg, folder, seed=0)
    write_tokenizer(folder, cfg)
    return folder


@pytest.fixture(scope="session")
def tiny_bundle_gguf(tiny_checkpoint, tmp_path_factory):
    """A bundle holding the tiny checkpoint's decoder as F32 and F16 GGUFs (components decoder, decoder.f16)."""
    from gamma_rt.export.gguf_export import export_gguf

    bundle = tmp_path_factory.mktemp("tiny_bundle_gguf")
    export_gguf(tiny_checkpoint, bundle, "f32", progress=lambda items, **_: items)
    export_gguf(tiny_checkpoint, bundle, "f16", progress=lambda items, **_: items)
    return bundle


@pytest.fixture(scope="session")
def tiny_bundle_onnx(tiny_checkpoint, tmp_path_factory):
    """A bundle holding the tiny checkpoint's fp32 ONNX audio graphs. Copy it before changing it."""
    from gamma_rt.export.onnx_export import export_onnx

    bundle = tmp_path_factory.mktemp("tiny_bundle_onnx")
    export_onnx(tiny_checkpoint, bundle, precision="fp32")
    return bundle


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint, tiny_bundle_onnx, tmp_path_factory):
    """A complete tiny bundle: the fp32 ONNX audio graphs plus the F32 GGUF decoder. Copy it before changing it."""
    import shutil

    from gamma_rt.export.gguf_export import export_gguf

    bundle = tmp_path_factory.mktemp("tiny_bundle") / "bundle"
    shutil.copytree(tiny_bundle_onnx, bundle)
    export_gguf(tiny_checkpoint, bundle, "f32", progress=lambda items, **_: items)
    return bundle
