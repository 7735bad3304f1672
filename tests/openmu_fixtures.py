"""A tiny random OpenMU folder in the published layout (gamma-rt init --family openmu) and its bundle,
built once per test session. Use with ``from openmu_fixtures import *``: fixtures ``openmu_folder``,
``openmu_bundle``; ``openmu_family(folder)`` opens the folder as export/families/openmu reads it.
"""

from __future__ import annotations

import pytest

QUIET = dict(progress=lambda items, **_: items)


def openmu_family(folder):
    from gamma_rt.export.families import detect

    return detect(folder)


@pytest.fixture(scope="session")
def openmu_folder(tmp_path_factory):
    """OUT of ``gamma-rt init --family openmu --preset tiny``: config.json, the PEFT adapter,
    non_lora_trainables.bin, vitb_finetuned.pth and base/ (Llama 3 layout)."""
    from gamma_rt.export.families import family_named

    folder = tmp_path_factory.mktemp("openmu_tiny") / "openmu"
    family_named("openmu").init("tiny", folder, seed=0)
    return folder


@pytest.fixture(scope="session")
def openmu_onnx_bundle(tmp_path_factory, openmu_folder):
    """``openmu_folder``'s audio side: encoder.onnx, projector.onnx (fp32). Copy before changing."""
    from gamma_rt.export.onnx_export import export_onnx

    bundle = tmp_path_factory.mktemp("openmu_bundle") / "bundle"
    export_onnx(openmu_folder, bundle, precision="fp32")
    return bundle


@pytest.fixture(scope="session")
def openmu_bundle(tmp_path_factory, openmu_folder, openmu_onnx_bundle):
    """``openmu_onnx_bundle`` plus ``export gguf`` (f32): decoder (LoRA merged), decoder.base and lora.
    Copy before changing."""
    import shutil

    from gamma_rt.export.gguf_export import export_gguf

    bundle = tmp_path_factory.mktemp("openmu_full_bundle") / "bundle"
    shutil.copytree(openmu_onnx_bundle, bundle)
    export_gguf(openmu_folder, bundle, "f32", **QUIET)
    return bundle
