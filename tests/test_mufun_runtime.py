"""A MuFun bundle through the runtime, against the PyTorch oracle (export/families/mufun/reference.py).

The oracle is transformers' WhisperEncoder + Qwen3ForCausalLM under MuFun's key names, following MuFun's code:
its chunks (30 s, a later chunk of 0.5 s or less dropped), a padded mel per chunk with no mask, hidden
states 0/7/15/32, AvgPool1d(5, 5), the blp connector, and the qwen2_instruct prompt split at ``<audio>``.
Both sides get the same 16 kHz mono samples (the runtime's own reading of the file); everything after that
is each side's own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from gamma_rt.synth import Music, synthesize, write

QUESTION = "What genre is this song? Describe the tempo."
ANSWER_TOKENS = 24
QUIET = dict(progress=lambda items, **_: items)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from gamma_rt.export.families import family_named

    out = tmp_path_factory.mktemp("mufun_tiny") / "mufun"
    family_named("mufun").init("tiny", out, seed=0)
    return out


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, folder):
    from gamma_rt.export.gguf_export import export_gguf
    from gamma_rt.export.onnx_export import export_onnx

    out = tmp_path_factory.mktemp("mufun_bundle") / "bundle"
    export_onnx(folder, out, precision="fp32")
    export_gguf(folder, out, "f32", **QUIET)
    return out


@pytest.fixture(scope="module")
def reference(folder):
    from gamma_rt.export.families.mufun.reference import MuFunReference

    return MuFunReference(folder)


@pytest.fixture(scope="module")
def pipe(bundle):
    from gamma_rt.runtime import Pipeline

    with Pipeline.open(bundle, threads=1) as p:
        yield p


@pytest.fixture(scope="module")
def stereo_70s(tmp_path_factory):
    """70 s of stereo music at 44.1 kHz: three chunks, the last one partial (10 s)."""
    return write(tmp_path_factory.mktemp("mufun_song") / "song.flac", Music(70.0, rate=44100, channels=2))


@pytest.fixture(scope="module")
def noisy_95s(tmp_path_factory):
    """95 s of noisy mono music at 22.05 kHz: four chunks, the last one 5 s."""
    music = synthesize(Music(95.0, rate=22050, seed=3))
    noise = np.random.default_rng(5).normal(0, 0.05, music.shape).astype(np.float32)
    path = tmp_path_factory.mktemp("mufun_noisy") / "noisy.wav"
    sf.write(path, np.clip(music + noise, -1, 1), 22050, subtype="FLOAT")
    return path


# --- runtime against the oracle ----------------------------------------------------------------------


@pytest.mark.parametrize("song, windows", [("stereo_70s", [300, 300, 300]), ("noisy_95s", [300, 300, 300, 300])])
def test_embeddings_equal_the_reference_per_window(song, windows, pipe, reference, request):
    import torch

    from gamma_rt.export.families.mufun.reference import chunks
    from gamma_rt.runtime.audio import load_audio

    samples = load_audio(request.getfixturevalue(song), 16000)
    ours = [w.embeddings for w in pipe.embed(samples)]
    assert [len(e) for e in ours] == windows  # every token of each padded chunk
    expected = reference.encode(torch.cat([reference.features(c) for c in chunks(samples)])).numpy()
    assert len(expected) == len(ours)
    for got, want in zip(ours, expected):
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


@pytest.mark.parametrize("seconds, windows", [(0.3, [300]), (60.5, [300, 300]), (60.6, [300, 300, 300])])
def test_short_audio_and_short_tails_follow_mufuns_chunks(seconds, windows, pipe):
    """Audio of at most 30 s is one chunk however short; a later chunk of 0.5 s or less gives no tokens."""
    from gamma_rt.runtime import Sampling

    n = int(round(seconds * 16000))
    samples = synthesize(Music(max(seconds, 1.0), rate=16000))[:n]
    assert [len(w.embeddings) for w in pipe.embed(samples) if len(w.embeddings)] == windows
    assert pipe.ask(samples, QUESTION, Sampling(), 4)[0].tokens  # a window with no tokens decodes as none


@pytest.mark.parametrize("song", ["stereo_70s", "noisy_95s"])
def test_greedy_answer_equals_the_reference_token_for_token(song, pipe, reference, request):
    from gamma_rt.runtime import Sampling
    from gamma_rt.runtime.audio import load_audio

    path = request.getfixturevalue(song)
    answer = pipe.ask(path, QUESTION, Sampling(), ANSWER_TOKENS)[0]
    expected = reference.answer(load_audio(path, 16000), QUESTION, ANSWER_TOKENS)
    assert len(expected) >= 8, expected  # a real answer, not an immediate stop
    assert answer.tokens == expected
    assert answer.text


def test_the_prompt_tokenized_by_the_gguf_equals_the_references(pipe, reference):
    from gamma_rt.export.families.mufun.reference import IMAGE_TOKEN_INDEX, mufun_prompt

    expected = reference.input_ids(mufun_prompt(QUESTION))
    ours = pipe.tokens(pipe.prompt.head()) + [IMAGE_TOKEN_INDEX] + pipe.tokens(pipe.prompt.tail(QUESTION))
    assert ours == expected
    assert pipe.prompt.head().endswith("USER: ") and pipe.prompt.tail(QUESTION).endswith(" ASSISTANT: ")


def test_a_follow_up_turn_is_qwen2_instruct(pipe):
    assert pipe.prompt.follow_up("And the key?") == "<|im_end|>USER: And the key? ASSISTANT: "
    assert pipe.prompt.stop[0] == "<|im_end|>"


def test_quantize_and_tag_take_a_mufun_bundle(bundle, tmp_path, capsys):
    """The generic commands need no MuFun step: a Q8_0 decoder answers, and a library with one bad file is
    tagged with the bad one recorded as failed."""
    import json
    import shutil

    from gamma_rt.cli import main
    from gamma_rt.runtime import Pipeline, RuntimeOptions, Sampling

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    assert main(["quantize", "gguf", str(copy), "--type", "Q8_0"]) == 0
    with Pipeline.open(copy, RuntimeOptions(threads=1, decoder="decoder.q8_0")) as quantized:
        assert quantized.ask(synthesize(Music(31.0, rate=16000)), QUESTION, Sampling(), 4)[0].tokens
    library = tmp_path / "lib"
    library.mkdir()
    write(library / "a.flac", Music(35.0, rate=22050))
    (library / "bad.flac").write_bytes(b"not audio")
    assert main(["tag", str(library), "--bundle", str(copy), "--out", str(tmp_path / "tags"), "--quiet",
                 "--threads", "1"]) == 1  # one track failed
    records = {Path(r["path"]).name: r for r in map(json.loads, (tmp_path / "tags" / "records.jsonl").open())}
    assert records["a.flac"]["status"] == "ok" and records["a.flac"]["answers"]
    assert records["bad.flac"]["status"] == "failed"
