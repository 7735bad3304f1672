"""The runtime pipeline end to end on the tiny preset (fp32): streaming, PyTorch parity, batching, the cache.

Greedy decoding of a random tiny model tends to repeat one token whose text is empty (the tiny tokenizer
pads its vocabulary), so token-level checks use ids and logits, and the answer-text checks use a seeded
temperature, which gives varied text that any difference in the inputs would change.
"""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from gamma_rt.runtime.decoder import Sampling
from gamma_rt.runtime.pipeline import Pipeline
from gamma_rt.synth import Music, write

SONG_SECONDS = 65.0  # three windows, the last one padded
QUESTIONS = ["What genre is this?", "Which instruments play?", "What is the tempo?"]
VARIED = Sampling(temperature=0.9, seed=7)


@pytest.fixture(scope="module")
def song(tmp_path_factory):
    return write(tmp_path_factory.mktemp("song") / "song.wav", Music(SONG_SECONDS, rate=16000), subtype="FLOAT")


@pytest.fixture(scope="module")
def pipe(tiny_bundle):
    with Pipeline.open(tiny_bundle, threads=1) as p:
        yield p


class Trickle(io.RawIOBase):
    """A non-seekable stream that hands out a file's bytes a little at a time, like a live pipe."""

    def __init__(self, data: bytes, step: int = 8192):
        self.data, self.pos, self.step = data, 0, step

    def readable(self):
        return True

    def seekable(self):
        return False

    def readinto(self, buf):
        n = min(len(buf), self.step, len(self.data) - self.pos)
        buf[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


def test_streaming_equals_whole_file(pipe, song):
    whole = [w.embeddings for w in pipe.embed(sf.read(song, dtype="float32")[0])]
    streamed = [w.embeddings for w in pipe.embed(Trickle(song.read_bytes()))]
    assert [len(e) for e in whole] == [750, 750, 125]  # 5 s of the last window = 125 tokens, padding dropped
    for a, b in zip(whole, streamed, strict=True):
        np.testing.assert_array_equal(a, b)
    answer_whole = pipe.ask(sf.read(song, dtype="float32")[0], QUESTIONS[0], VARIED, 24)[0].text
    answer_streamed = pipe.ask(Trickle(song.read_bytes()), QUESTIONS[0], VARIED, 24)[0].text
    answer_file = pipe.ask(song, QUESTIONS[0], VARIED, 24)[0].text
    assert answer_whole == answer_streamed == answer_file
    assert len(answer_whole) > 0


def test_encode_ahead_thread_gives_the_same_answer_as_no_overlap(tiny_bundle, song):
    answers = {}
    for overlap in (True, False):
        with Pipeline.open(tiny_bundle, threads=1, overlap=overlap) as p:
            answers[overlap] = [a.text for a in p.ask(song, QUESTIONS[:2], VARIED, 24)]
    assert answers[True] == answers[False]


def test_encoders_and_decoder_that_would_share_too_few_cores_take_turns(tiny_bundle, song, monkeypatch):
    """Where both engines' threads would oversubscribe the cores (cores.py), no window is encoded while
    another is prefilled: the same answers, without the worker thread."""
    from gamma_rt.runtime import pipeline as pipeline_module

    asked = []

    def spy(*args, **kwargs):
        asked.append(args[5])  # overlap
        return real(*args, **kwargs)

    real = pipeline_module.embed_windows
    answers = {}
    for shared in (False, True):
        monkeypatch.setattr(pipeline_module, "cores_shared", lambda *_, shared=shared: shared)
        monkeypatch.setattr(pipeline_module, "embed_windows", spy)
        with Pipeline.open(tiny_bundle, threads=1) as p:
            answers[shared] = [a.text for a in p.ask(song, QUESTIONS[:2], VARIED, 24)]
    assert asked == [True, False]
    assert answers[True] == answers[False]


def test_batched_questions_equal_sequential(pipe, song):
    batched = [a.text for a in pipe.ask(song, QUESTIONS, VARIED, 24)]
    one_by_one = [pipe.ask(song, [q], VARIED, 24)[0].text for q in QUESTIONS]
    streamed = ["".join(pipe.stream(song, q, VARIED, 24)) for q in QUESTIONS]
    assert batched == one_by_one == streamed
    assert len(set(batched)) > 1  # the questions really reached the decoder


def test_more_questions_than_parallel_sequences_and_mixed_settings(pipe, song):
    questions = [f"Question {i}?" for i in range(9)]  # more than n_seq_max - 1 = 7 lanes
    settings = [VARIED if i % 2 else Sampling() for i in range(9)]
    batched = [a.text for a in pipe.ask(song, questions, settings, [12] * 9)]
    alone = [pipe.ask(song, [q], s, 12)[0].text for q, s in zip(questions, settings)]
    assert batched == alone


def test_runtime_answer_equals_pytorch_reference(pipe, song, tiny_checkpoint):
    import torch

    from gamma_rt.export.families.gamma.reference import ReferencePipeline

    ref = ReferencePipeline(tiny_checkpoint)
    question, n = QUESTIONS[0], 16
    ref_windows = ref.embed(ref.load(song))
    windows = [w.embeddings for w in pipe.embed(song)]
    for a, b in zip(windows, ref_windows, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-3)
    # the same embeddings into both decoders: next-token logits agree over the whole vocabulary ...
    pipe.prefill(song, 64)
    s = pipe.session
    s.eval_tokens(pipe.tokens(pipe.prompt.tail(question)))
    embeds = ref.inputs_embeds(windows, question)
    assert embeds.shape[1] == s.n_past(0)
    with torch.no_grad():
        ref_logits = ref.model.llm(inputs_embeds=embeds).logits[0, -1].numpy()
    np.testing.assert_allclose(s.logits(), ref_logits, atol=2e-3)
    # ... and greedy decoding is token-identical
    tokens = []
    for _ in range(n):
        token = int(np.argmax(s.logits()))
        if s.is_end(token):
            break
        tokens.append(token)
        s.eval_tokens([token])
    assert tokens == ref.generate(embeds, n)
    # the reference's own end-to-end answer (its own mel and encoders) matches the runtime's text
    assert pipe.ask(song, question, Sampling(), n)[0].text == ref.ask(song, question, n).text


def test_cache_skips_the_encoders_on_a_second_run(tiny_bundle, song, tmp_path):
    with Pipeline.open(tiny_bundle, threads=1, cache_dir=tmp_path / "cache") as p:
        first = [a.text for a in p.ask(song, QUESTIONS, VARIED, 24)]
        assert p.times.calls["temporal_encoder"] == 3 and p.cache.misses == 3
        second = [a.text for a in p.ask(song, QUESTIONS, VARIED, 24)]
        assert "temporal_encoder" not in p.times.calls and "front_end" not in p.times.calls
        assert p.cache.hits == 3
    assert first == second
    with Pipeline.open(tiny_bundle, threads=1) as uncached:
        assert [a.text for a in uncached.ask(song, QUESTIONS, VARIED, 24)] == first


def test_time_markers_are_prefilled_between_windows(tiny_bundle, song, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    with Pipeline.open(bundle, threads=1) as p:
        plain = p.prefill(song).n_tokens
    manifest["prompt"]["time_marker"] = "\nat {start}: "
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with Pipeline.open(bundle, threads=1) as p:
        marked = p.prefill(song).n_tokens
        expected = len(p.tokens("\nat 0:30: ")) + len(p.tokens("\nat 1:00: "))
    assert marked - plain == expected > 0


def test_conversation_keeps_the_audio_and_earlier_turns(pipe, song):
    talk = pipe.conversation(song)
    audio_positions = talk.prefix.n_tokens
    first = talk.ask(QUESTIONS[0], VARIED, 12)
    after_first = pipe.session.n_past(0)
    second = talk.ask("And the tempo?", VARIED, 12)
    assert audio_positions < after_first < pipe.session.n_past(0)
    assert first == pipe.ask(song, QUESTIONS[0], VARIED, 12)[0].text
    assert talk.turns == [(QUESTIONS[0], first), ("And the tempo?", second)]


def test_stage_timings_cover_every_stage_of_a_run(pipe, song):
    pipe.ask(song, QUESTIONS[:1], Sampling(), 4)
    for stage in ("read", "front_end", "temporal_encoder", "global_encoder", "fusion", "projector",
                  "prefill", "question", "decode"):
        assert pipe.times.ms[stage] > 0, stage
    assert pipe.times.calls["temporal_encoder"] == 3
    assert pipe.figures_ms()["after_audio_ms"] > 0
