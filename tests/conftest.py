"""Shared session fixtures: tiny models built once, in-process, with no download."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A `tiny` checkpoint folder (config.json, safetensors, tokenizer) written by `gamma-rt init`."""
    from gamma_rt.cli import main

    folder = tmp_path_factory.mktemp("tiny") / "checkpoint"
    assert main(["init", "--preset", "tiny", "--out", str(folder), "--seed", "0"]) == 0
    return folder


@pytest.fixture(scope="session")
def tiny_bundle_onnx(tiny_checkpoint, tmp_path_factory):
    """A bundle holding the fp32 ONNX audio graphs of `tiny_checkpoint`. Copy it before changing it."""
    from gamma_rt.export.onnx_export import export_onnx

    bundle = tmp_path_factory.mktemp("tiny-onnx") / "bundle"
    export_onnx(tiny_checkpoint, bundle, precision="fp32")
    return bundle
