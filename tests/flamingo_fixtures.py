"""Tiny Music Flamingo (2601, with RoTE) and Audio Flamingo 3 folders in the published layout, and their
bundles (fp32 ONNX audio graphs + F32 GGUF decoder), built once per test session.

Use from a test module with ``from flamingo_fixtures import *``: fixtures ``mf_folder``, ``af3_folder``,
``mf_bundle``, ``af3_bundle`` and the transformers oracle ``flamingo_reference(folder)``.
"""

from __future__ import annotations

import pytest

QUIET = dict(progress=lambda items, **_: items)
QUESTION = "What genre is this song? Describe the tempo."


def write_folder(tmp_path_factory, family: str):
    from gamma_rt.export.families import family_named

    folder = tmp_path_factory.mktemp(f"{family}_tiny") / family
    family_named(family).init("tiny", folder, seed=0)
    return folder


def write_bundle(tmp_path_factory, folder):
    from gamma_rt.export.gguf_export import export_gguf
    from gamma_rt.export.onnx_export import export_onnx

    bundle = tmp_path_factory.mktemp(f"{folder.name}_bundle") / "bundle"
    export_onnx(folder, bundle, precision="fp32")
    export_gguf(folder, bundle, "f32", **QUIET)
    return bundle


@pytest.fixture(scope="session")
def mf_folder(tmp_path_factory):
    """A tiny random MusicFlamingoForConditionalGeneration folder (2601: RoTE, sound_bos/eos)."""
    return write_folder(tmp_path_factory, "musicflamingo")


@pytest.fixture(scope="session")
def af3_folder(tmp_path_factory):
    """A tiny random AudioFlamingo3ForConditionalGeneration folder."""
    return write_folder(tmp_path_factory, "audioflamingo3")


@pytest.fixture(scope="session")
def mf_bundle(tmp_path_factory, mf_folder):
    """``mf_folder`` exported: encoder.onnx, projector.onnx (fp32), decoder-f32.gguf. Copy before changing."""
    return write_bundle(tmp_path_factory, mf_folder)


@pytest.fixture(scope="session")
def af3_bundle(tmp_path_factory, af3_folder):
    """``af3_folder`` exported like ``mf_bundle``."""
    return write_bundle(tmp_path_factory, af3_folder)


def flamingo_reference(folder):
    """(model, processor) of a flamingo folder, loaded by transformers' own classes, in float32 eval mode."""
    from transformers import AutoProcessor
    from transformers import AudioFlamingo3ForConditionalGeneration as AF3
    from transformers import MusicFlamingoForConditionalGeneration as MF

    model_class = MF if (folder / "config.json").read_text().count('"musicflamingo"') else AF3
    return model_class.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)


def chat_inputs(processor, audio, question: str = QUESTION):
    """The processor's inputs for one user turn holding the audio then the question (16 kHz mono audio)."""
    messages = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return processor(text=text, audio=audio, return_tensors="pt")


__all__ = ["QUESTION", "af3_bundle", "af3_folder", "chat_inputs", "flamingo_reference", "mf_bundle", "mf_folder"]
