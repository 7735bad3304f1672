"""DecoderSession.step, the server's decode step: several sequences, each with its own sampler, one token each
per llama_decode batch, sequences joining and leaving between steps (real llama.cpp on the tiny GGUF), with
one pool of cells for all sequences or each sequence's own."""

from __future__ import annotations

import numpy as np
import pytest

from gamma_rt.errors import GammaError
from gamma_rt.runtime.decoder import DecoderSession, Sampling

QUESTIONS = ["What genre is this?", "What is the tempo?", "Which instruments play?"]
SAMPLINGS = [Sampling(temperature=0.9, seed=7), Sampling(), Sampling(temperature=0.7, seed=3)]
TOKENS = 12


@pytest.fixture(scope="module", params=[True, False], ids=["shared-cells", "own-cells"])
def session(tiny_bundle_gguf, request):
    with DecoderSession(tiny_bundle_gguf / "decoder-f32.gguf", n_ctx=1024, n_seq_max=4,
                        shared_cells=request.param) as s:
        yield s


def prompt(session: DecoderSession, seq: int, text: str) -> list[int]:
    """Evaluate a song-like prompt on ``seq`` but its last token, which is returned (the first step takes it)."""
    audio = np.random.default_rng(3).standard_normal((12, session.n_embd)).astype(np.float32)
    session.eval_tokens(session.tokenize("<|im_start|>user\n<|audio_start|>"), seq)
    session.eval_embeddings(audio, seq)
    tokens = session.tokenize(f"<|audio_end|>\n{text}<|im_end|>\n<|im_start|>assistant\n")
    session.eval_tokens(tokens[:-1], seq)
    return tokens[-1]


def alone(session: DecoderSession, text: str, sampling: Sampling) -> list[int]:
    """The answer's token ids with the sequence decoded by itself, through generate()."""
    session.clear()
    session.eval_tokens([prompt(session, 0, text)], 0)
    list(session.generate(sampling, TOKENS, seq_id=0))
    return session.generated[0]


def test_step_with_per_sequence_samplers_equals_each_sequence_alone(session):
    expected = [alone(session, q, s) for q, s in zip(QUESTIONS, SAMPLINGS)]
    session.clear()
    samplers = [session.sampler(s) for s in SAMPLINGS]
    assert samplers[1] is None  # greedy takes the argmax, no llama.cpp chain
    # the second and third sequences join one and two steps after the first: continuous batching
    pending = {seq: prompt(session, seq, q) for seq, q in enumerate(QUESTIONS)}
    running: dict[int, int] = {}
    got: dict[int, list[int]] = {seq: [] for seq in pending}
    for step in range(TOKENS + len(QUESTIONS)):
        if step in pending:
            running[step] = pending.pop(step)
        active = [seq for seq in running if len(got[seq]) < TOKENS]
        if not active:
            break
        drawn = session.step([(seq, running[seq]) for seq in active], [samplers[seq] for seq in active])
        for seq, token in zip(active, drawn):
            got[seq].append(token)
            running[seq] = token
    for sampler in samplers:
        session.free_sampler(sampler)
    # generate() stops at an end token; compare up to it
    assert [got[seq][:len(expected[seq])] for seq in range(len(QUESTIONS))] == expected
    assert len({tuple(e) for e in expected}) == len(QUESTIONS)


def test_step_refuses_two_items_for_one_sequence_or_mismatched_samplers(session):
    session.clear()
    token = prompt(session, 0, QUESTIONS[0])
    with pytest.raises(ValueError, match="one item per sequence"):
        session.step([(0, token), (0, token)], [None, None])
    with pytest.raises(ValueError, match="samplers"):
        session.step([(0, token)], [])
    with pytest.raises(ValueError, match="n_seq_max"):
        session.step([(9, token)], [None])


def test_a_sequence_with_its_own_cells_holds_its_share_of_the_context(tiny_bundle_gguf):
    with DecoderSession(tiny_bundle_gguf / "decoder-f32.gguf", n_ctx=1024, n_seq_max=4, shared_cells=False) as s:
        assert s.n_ctx == 1024 and s.cells_per_sequence == 256
        s.eval_tokens([1] * 200, 0)
        s.eval_tokens([1] * 200, 1)  # the other sequences' cells are not taken
        with pytest.raises(GammaError, match="context is full"):
            s.eval_tokens([1] * 100, 0)
