"""runtime/decoder.py: the llama.cpp decoder session on the tiny GGUF (real llama.cpp, real files)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from gamma_rt.errors import BundleError, GammaError
from gamma_rt.runtime.decoder import AnswerText, DecoderSession, Sampling, context_size_for
from gamma_rt.runtime.gguf_check import GGML_BLOCKS, check_gguf
from gamma_rt.runtime.sampling import StopFilter

QUESTIONS = ["What genre is this?", "What is the tempo?", "Which instruments play?"]


@pytest.fixture(scope="module")
def f32(tiny_bundle_gguf):
    return tiny_bundle_gguf / "decoder-f32.gguf"


@pytest.fixture()
def session(f32):
    with DecoderSession(f32, n_ctx=512, n_seq_max=4) as s:
        yield s


def audio_prefix(session: DecoderSession, seq_id: int = 0) -> None:
    """A song's prompt up to the question: chat header, 12 audio embeddings, then the audio end marker."""
    audio = np.random.default_rng(3).standard_normal((12, session.n_embd)).astype(np.float32)
    session.eval_tokens(session.tokenize("<|im_start|>user\n<|audio_start|>"), seq_id)
    session.eval_embeddings(audio, seq_id)
    session.eval_tokens(session.tokenize("<|audio_end|>\n"), seq_id)


def question(session: DecoderSession, text: str) -> list[int]:
    return session.tokenize(f"{text}<|im_end|>\n<|im_start|>assistant\n")


def test_session_reports_model_sizes(session):
    assert (session.n_embd, session.n_vocab) == (64, 1024)


def test_forked_parallel_sequences_equal_sequential_runs(session):
    greedy = Sampling()
    sequential = []
    for q in QUESTIONS:
        session.clear()
        audio_prefix(session)
        session.eval_tokens(question(session, q))
        sequential.append("".join(session.generate(greedy, max_tokens=24)))
    session.clear()
    audio_prefix(session)
    prefix_len = session.n_past(0)
    for k in range(1, len(QUESTIONS) + 1):
        session.fork(0, k)
        assert session.n_past(k) == prefix_len
    parallel = session.generate_parallel(
        {k: question(session, q) for k, q in enumerate(QUESTIONS, 1)}, greedy, max_tokens=24
    )
    assert [parallel[k] for k in range(1, len(QUESTIONS) + 1)] == sequential
    assert len(set(sequential)) > 1  # the questions steer the answers: the comparison is not vacuous


def test_seeded_temperature_sampling_is_reproducible_and_seed_dependent(session):
    def answer(seed: int) -> str:
        session.clear()
        audio_prefix(session)
        session.eval_tokens(question(session, QUESTIONS[0]))
        return "".join(session.generate(Sampling(temperature=1.5, top_k=0, top_p=1.0, seed=seed), max_tokens=32))

    assert answer(11) == answer(11)
    assert answer(11) != answer(12)


def test_stop_string_ends_generation_and_is_not_emitted(session):
    audio_prefix(session)
    session.eval_tokens(question(session, QUESTIONS[1]))
    full = "".join(session.generate(Sampling(), max_tokens=40))
    assert len(full) > 8
    stop = full[4:7]
    session.clear()
    audio_prefix(session)
    session.eval_tokens(question(session, QUESTIONS[1]))
    pieces = list(session.generate(Sampling(), max_tokens=40, stop=[stop]))
    assert "".join(pieces) == full[: full.index(stop)]


def test_generation_streams_piece_by_piece(session):
    audio_prefix(session)
    session.eval_tokens(question(session, QUESTIONS[2]))
    stream = session.generate(Sampling(), max_tokens=16)
    first = next(stream)
    rest = list(stream)
    assert first and len(rest) >= 1
    # the pieces are the whole answer, nothing lost or repeated: the same text as one sequence of a parallel run
    session.clear()
    audio_prefix(session)
    whole = session.generate_parallel({0: question(session, QUESTIONS[2])}, Sampling(), max_tokens=16)[0]
    assert first + "".join(rest) == whole


def test_grammar_constrains_the_answer(session):
    grammar = 'root ::= ("yes" | "no") "."'
    for seed in range(3):
        session.clear()
        audio_prefix(session)
        session.eval_tokens(question(session, "Is there a singer?"))
        text = "".join(session.generate(Sampling(temperature=1.0, seed=seed, grammar=grammar), max_tokens=8))
        assert text in ("yes.", "no.")


def test_bad_grammar_is_a_gamma_error(session):
    audio_prefix(session)
    with pytest.raises(GammaError, match="GBNF"):
        list(session.generate(Sampling(grammar="root ::= (unclosed"), max_tokens=4))


def test_embeddings_of_the_wrong_width_are_refused(session):
    with pytest.raises(GammaError, match=r"shape \(3, 32\).*n_embd 64"):
        session.eval_embeddings(np.zeros((3, 32), np.float32))


def test_a_full_context_is_a_clear_error(f32):
    with DecoderSession(f32, n_ctx=256, n_batch=64) as s:
        with pytest.raises(GammaError, match="context is full"):
            s.eval_tokens([5] * 300)


def test_gpu_layers_are_all_by_default_where_llama_cpp_can_offload_and_none_elsewhere(f32):
    import llama_cpp

    from gamma_rt.runtime.decoder import ALL_LAYERS

    offload = llama_cpp.llama_supports_gpu_offload()
    with DecoderSession(f32, n_ctx=256, n_gpu_layers=None) as s:
        assert s.gpu_layers == (ALL_LAYERS if offload else 0)
    with DecoderSession(f32, n_ctx=256, n_gpu_layers=0) as s:
        assert s.gpu_layers == 0
    with pytest.raises(ValueError, match="n_gpu_layers must be 0 or more"):
        DecoderSession(f32, n_ctx=256, n_gpu_layers=-1)


def test_context_size_covers_audio_prompt_and_answer():
    # 95 s of audio at 25 tokens/s = 2375 tokens, + 40 prompt + 200 answer = 2615 -> next multiple of 256
    assert context_size_for(95, 25.0, 40, 200) == 2816
    assert context_size_for(0.1, 25.0, 1, 1) == 256


def test_gguf_loads_in_the_high_level_llama_class_and_generates(f32):
    from llama_cpp import Llama

    llm = Llama(model_path=str(f32), n_ctx=256, verbose=False)
    out = llm.create_completion("The song is", max_tokens=8, temperature=0.0)
    assert out["choices"][0]["text"]
    assert out["usage"]["completion_tokens"] >= 1
    chat = llm.create_chat_completion([{"role": "user", "content": "hi"}], max_tokens=4)
    assert chat["choices"][0]["message"]["role"] == "assistant"


@pytest.mark.parametrize("cut", [3, 30, 0.5, -100])
def test_truncated_gguf_is_a_bundle_error_not_a_crash(f32, tmp_path, cut):
    data = f32.read_bytes()
    size = int(len(data) * cut) if isinstance(cut, float) else (len(data) + cut if cut < 0 else cut)
    bad = tmp_path / "truncated.gguf"
    bad.write_bytes(data[:size])
    with pytest.raises(BundleError, match=r"truncated\.gguf: not a valid GGUF file"):
        DecoderSession(bad, n_ctx=256)


def test_corrupt_or_missing_gguf_is_a_bundle_error(f32, tmp_path):
    data = bytearray(f32.read_bytes())
    wrong_magic = tmp_path / "magic.gguf"
    wrong_magic.write_bytes(b"GGML" + bytes(data[4:]))
    huge_count = tmp_path / "count.gguf"
    huge_count.write_bytes(bytes(data[:8]) + (2**62).to_bytes(8, "little") + bytes(data[16:]))
    text = tmp_path / "notes.gguf"
    text.write_text("not a model\n" * 100)
    for path in (wrong_magic, huge_count, text):
        with pytest.raises(BundleError, match=f"{path.name}: not a valid GGUF file"):
            DecoderSession(path, n_ctx=256)
    with pytest.raises(BundleError, match="missing.gguf: GGUF file not found"):
        DecoderSession(tmp_path / "missing.gguf", n_ctx=256)


def test_header_check_reads_the_metadata_of_a_good_file(f32):
    header = check_gguf(f32)
    assert header.metadata["general.architecture"] == "qwen3"
    assert header.n_tensors == 25 and header.data_bytes < f32.stat().st_size


def test_block_size_table_matches_gguf_py():
    gguf = pytest.importorskip("gguf")
    for qtype, (block, size) in gguf.GGML_QUANT_SIZES.items():
        if int(qtype) in GGML_BLOCKS:
            assert GGML_BLOCKS[int(qtype)] == (block, size), qtype.name


def test_stop_filter_holds_back_a_possible_stop_prefix():
    f = StopFilter(["<|im_end|>"])
    assert f.feed("Rock and <|im") == "Rock and "
    assert f.feed("_e") == ""
    assert f.feed("nd|> tail") == "" and f.stopped
    g = StopFilter(["END"])
    assert g.feed("EN") == "" and g.feed("ough") == "ENough" and not g.stopped


def test_answer_text_emits_whole_utf8_characters_and_stops_before_a_stop_string():
    a = AnswerText(["<|im_end|>"])
    e_acute = "é".encode()
    assert a.feed(b"caf") == "caf"
    assert a.feed(e_acute[:1]) == ""  # half a character is held back
    assert a.feed(e_acute[1:] + b" <|im") == "é "  # and so is a possible stop string's start
    assert a.feed(b"_end|> never") == "" and a.stopped
    assert a.finish() == "" and a.text == "café "
    b = AnswerText()
    assert b.feed("ü".encode()[:1]) == "" and b.finish() == "\ufffd" and b.text == "\ufffd"  # cut at the end
    c = AnswerText(["END"])
    assert c.feed(b"the EN") == "the " and c.finish() == "EN" and not c.stopped and c.text == "the EN"


def test_runtime_decoder_imports_neither_torch_nor_transformers():
    code = (
        "import sys, gamma_rt.runtime.decoder, gamma_rt.runtime.gguf_check; "
        "bad = [m for m in ('torch', 'transformers', 'gamma_rt.export', 'gguf') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_generating_before_any_prompt_is_an_error_not_a_crash(f32):
    with DecoderSession(f32, n_ctx=256) as s:
        with pytest.raises(RuntimeError, match="nothing evaluated"):
            next(s.generate(Sampling(), max_tokens=4))


def test_amx_kernels_are_kept_off_the_quantized_weights_they_crash_on(tmp_path):
    # llama.cpp's AMX matrix multiply crashes (SIGSEGV) on a Q8_0 GGUF on a Xeon with AMX: where the CPU has
    # AMX and the weights are of a type its kernels take, the session loads without the extra buffers
    from gamma_rt.runtime.decoder import cpu_has_amx, extra_buffers_allowed

    amx = tmp_path / "amx"
    amx.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile amx_int8\n\n")
    plain = tmp_path / "plain"
    plain.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f\n\n")
    assert cpu_has_amx(amx) and not cpu_has_amx(plain) and not cpu_has_amx(tmp_path / "absent")
    f32, f16, q8_0, q4_k = 0, 1, 8, 12
    assert not extra_buffers_allowed({f32, q8_0}, has_amx=True)
    assert not extra_buffers_allowed({f32, q4_k}, has_amx=True)
    assert extra_buffers_allowed({f32, f16}, has_amx=True)  # no AMX kernel takes F32/F16 weights
    assert extra_buffers_allowed({q8_0}, has_amx=False)  # repacked rows on other CPUs stay
    assert extra_buffers_allowed({q8_0}, has_amx=True, keep_amx=True)  # GAMMA_LLAMA_AMX=1


def test_a_step_over_sequences_with_gaps_fills_them_and_leaves_them_as_they_were(f32):
    # cells per sequence: a step over sequences 0 and 3 runs as one pass with throwaway tokens on 1 and 2
    # (one idle, one holding a prompt); the drawn tokens are those of stepping 0 and 3 alone, and 1 and 2
    # keep exactly their cells: the prompt on 2 then answers as it does on a session that never stepped
    greedy = Sampling(temperature=0.0)

    def prepared(s):
        for seq in (0, 2, 3):
            audio_prefix(s, seq)
            s.eval_tokens(question(s, QUESTIONS[seq % 3])[:-1], seq)
        return [s.sampler(greedy) for _ in range(2)]

    with DecoderSession(f32, n_ctx=1024, n_seq_max=4, shared_cells=False) as s:
        chains = prepared(s)
        held = [s.n_past(seq) for seq in range(4)]
        items = [(0, question(s, QUESTIONS[0])[-1]), (3, question(s, QUESTIONS[0])[-1])]
        gapped = s.step(items, chains)
        assert [s.n_past(seq) for seq in (1, 2)] == held[1:3]  # the throwaway cells are gone
        assert s.n_past(0) == held[0] + 1 and s.n_past(3) == held[3] + 1
        s.eval_tokens(question(s, QUESTIONS[2])[-1:], 2)
        after_gap = s.logits()
    with DecoderSession(f32, n_ctx=1024, n_seq_max=4, shared_cells=False) as s:
        chains = prepared(s)
        alone = [s.step([item], [chain])[0] for item, chain in zip(items, chains)]
        s.eval_tokens(question(s, QUESTIONS[2])[-1:], 2)
        untouched = s.logits()
    assert gapped == alone
    np.testing.assert_allclose(after_gap, untouched, rtol=0, atol=1e-4)
