"""Music Flamingo 2601 and Audio Flamingo 3 bundles through the runtime, against transformers' own classes.

The oracle is MusicFlamingoForConditionalGeneration / AudioFlamingo3ForConditionalGeneration with their
processor, on tiny random folders written by save_pretrained (tests/flamingo_fixtures.py). Both sides get
the same 16 kHz mono samples (the runtime's own reading of the file); everything after that — mel, masks,
windows, token counts, rotary time embeddings, prompt, decoding — is each side's own.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from flamingo_fixtures import *  # noqa: F401,F403 (session fixtures)
from flamingo_fixtures import QUESTION, chat_inputs, flamingo_reference
from gamma_rt.runtime import Pipeline, Sampling
from gamma_rt.runtime.audio import load_audio
from gamma_rt.synth import Music, synthesize, write

ANSWER_TOKENS = 24
FAMILIES = ["mf", "af3"]


@pytest.fixture(scope="module")
def stereo_70s(tmp_path_factory):
    """70 s of stereo music at 44.1 kHz: three windows, the last one partial (10 s)."""
    return write(tmp_path_factory.mktemp("mf_song") / "song.flac", Music(70.0, rate=44100, channels=2))


@pytest.fixture(scope="module")
def noisy_95s(tmp_path_factory):
    """95 s of noisy mono music at 22.05 kHz: four windows, the last one 5 s."""
    music = synthesize(Music(95.0, rate=22050, seed=3))
    noise = np.random.default_rng(5).normal(0, 0.05, music.shape).astype(np.float32)
    path = tmp_path_factory.mktemp("mf_noisy") / "noisy.wav"
    sf.write(path, np.clip(music + noise, -1, 1), 22050, subtype="FLOAT")
    return path


@pytest.fixture(scope="module")
def bundles(request):
    return {"mf": (request.getfixturevalue("mf_bundle"), request.getfixturevalue("mf_folder")),
            "af3": (request.getfixturevalue("af3_bundle"), request.getfixturevalue("af3_folder"))}


def reference_answer(folder, samples: np.ndarray, question: str = QUESTION) -> list[int]:
    """transformers' greedy answer ids (the end token and anything after it dropped)."""
    import torch

    model, processor = flamingo_reference(folder)
    inputs = chat_inputs(processor, samples, question)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=ANSWER_TOKENS, do_sample=False)
    ids = out[0, inputs["input_ids"].shape[1]:].tolist()
    ends = set(np.atleast_1d(model.generation_config.eos_token_id).tolist())
    return ids[:next((i for i, t in enumerate(ids) if t in ends), len(ids))]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("song", ["stereo_70s", "noisy_95s"])
def test_greedy_answer_equals_transformers_generate_token_for_token(family, song, bundles, request):
    bundle, folder = bundles[family]
    path = request.getfixturevalue(song)
    with Pipeline.open(bundle, threads=1) as pipe:
        answer = pipe.ask(path, QUESTION, Sampling(), ANSWER_TOKENS)[0]
        windows = [len(w.embeddings) for w in pipe.embed(path)]
    expected_windows = {"stereo_70s": [750, 750, 250], "noisy_95s": [750, 750, 750, 125]}[song]
    assert windows == expected_windows  # the partial last window keeps the processor's token count
    reference = reference_answer(folder, load_audio(path, 16000))
    assert len(reference) >= 8, reference  # a real answer, not an immediate end token
    assert answer.tokens == reference
    assert answer.text


@pytest.mark.parametrize("family", FAMILIES)
def test_the_prompt_is_the_processors_token_for_token(family, bundles, stereo_70s):
    """head + audio placeholders + tail, tokenized by the GGUF, equals the processor's input_ids."""
    bundle, folder = bundles[family]
    _, processor = flamingo_reference(folder)
    samples = load_audio(stereo_70s, 16000)
    expected = chat_inputs(processor, samples)["input_ids"][0].tolist()
    with Pipeline.open(bundle, threads=1) as pipe:
        n_audio = sum(len(w.embeddings) for w in pipe.embed(samples))
        sound = pipe.tokens(pipe.prompt.audio_placeholder)
        ids = pipe.tokens(pipe.prompt.head()) + sound * n_audio + pipe.tokens(pipe.prompt.tail(QUESTION))
    assert len(sound) == 1
    assert ids == expected


def test_audio_past_the_models_limit_is_cut_where_transformers_cuts_it(mf_bundle, tmp_path):
    """MF takes 1200 s; a bundle whose manifest says 60 s behaves like a processor with max_audio_len 60."""
    import json
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(mf_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["audio"]["max_seconds"] == 1200
    manifest["audio"]["max_seconds"] = 60
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    samples = synthesize(Music(75.0, rate=16000))
    with Pipeline.open(bundle, threads=1) as pipe:
        assert [len(w.embeddings) for w in pipe.embed(samples)] == [750, 750]


@pytest.fixture(scope="module")
def mf_pipe(mf_bundle):
    with Pipeline.open(mf_bundle, threads=1) as pipe:
        yield pipe


def test_streaming_equals_whole_file_with_rotary_time(mf_pipe, stereo_70s):
    from test_pipeline import Trickle

    whole = [w.embeddings for w in mf_pipe.embed(load_audio(stereo_70s, 16000))]
    streamed = [w.embeddings for w in mf_pipe.embed(Trickle(stereo_70s.read_bytes()))]
    assert [len(e) for e in streamed] == [750, 750, 250]
    for a, b in zip(whole, streamed, strict=True):
        np.testing.assert_array_equal(a, b)
    # the rotary time embedding makes equal audio in windows 0 and 1 embed differently
    loop = np.tile(synthesize(Music(30.0, rate=16000)), 2)
    first, second = [w.embeddings for w in mf_pipe.embed(loop)]
    assert np.abs(first - second).max() > 1e-3


def test_batched_questions_equal_sequential_on_a_flamingo_bundle(mf_pipe, stereo_70s):
    questions = [QUESTION, "Which instruments play?", "Is there a singer?"]
    varied = Sampling(temperature=0.9, seed=7)
    batched = [a.text for a in mf_pipe.ask(stereo_70s, questions, varied, 16)]
    one_by_one = [mf_pipe.ask(stereo_70s, [q], varied, 16)[0].text for q in questions]
    streamed = ["".join(mf_pipe.stream(stereo_70s, q, varied, 16)) for q in questions]
    assert batched == one_by_one == streamed
    assert len(set(batched)) > 1


def test_a_conversation_follows_the_checkpoints_template(mf_pipe, stereo_70s):
    talk = mf_pipe.conversation(stereo_70s)
    first = talk.ask(QUESTION, Sampling(), 8)
    follow = mf_pipe.prompt.follow_up("And the key?")
    assert follow.startswith("<|im_end|>") and follow.endswith("<|im_start|>assistant\n")
    second = talk.ask("And the key?", Sampling(), 8)
    assert [q for q, _ in talk.turns] == [QUESTION, "And the key?"]
    assert isinstance(first, str) and isinstance(second, str)


def test_batched_windows_give_the_same_answer_as_one_window_per_call(mf_bundle, stereo_70s):
    from gamma_rt.runtime import RuntimeOptions

    answers = {}
    for batch in (1, 4):
        with Pipeline.open(mf_bundle, RuntimeOptions(threads=1, batch_windows=batch)) as pipe:
            embeddings = [w.embeddings for w in pipe.embed(stereo_70s)]
            answers[batch] = (pipe.ask(stereo_70s, QUESTION, Sampling(), 12)[0].tokens, embeddings)
    assert answers[1][0] == answers[4][0]
    for a, b in zip(answers[1][1], answers[4][1], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
