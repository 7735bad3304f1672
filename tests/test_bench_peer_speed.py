"""bench/peer_speed.py: songs/hour of gamma-rt against llama.cpp's mtmd and transformers (issue 27).

The pure helpers (log and stream parsing, rates, ratios, the shortfall's stage) on their own; then the bench
end to end on the tiny Audio Flamingo 3 preset with two short songs, every system in its child process. That
one needs the native build's llama-server and llama-mtmd-cli and skips with the reason without them (build
them with `JOBS=2 nice native/build.sh cpu`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gamma_rt.bench import peer_speed as ps
from gamma_rt.bench.flops import qwen3_prefill_flops
from gamma_rt.errors import GammaError

REPO = Path(__file__).resolve().parents[1]
NATIVE = REPO / "native-build" / "cpu" / "bin"

# Lines of a real llama-mtmd-cli -v run's stderr (the tiny preset, 12 s of audio), lines unrelated cut.
CLI_LOG = """\
0.00.144.562 I encoding mtmd batch, n_chunks = 1 (done = 1, total = 3)
0.00.144.712 D mtmd_batch_encode_impl: encoding batch with 1 entries and total 750 tokens
0.00.231.970 I mtmd batch encoding done in 87 ms
0.00.254.067 I audio decoded (batch 1/1) in 22 ms
0.00.260.833 I llama_perf_context_print:        load time =      11.55 ms
0.00.260.837 I llama_perf_context_print: prompt eval time =     112.73 ms /   765 tokens (    0.15 ms per token,  6786.07 tokens per second)
0.00.260.839 I llama_perf_context_print:        eval time =       3.02 ms /     7 runs   (    0.43 ms per token,  2319.42 tokens per second)
"""

# Lines of a real llama-server -lv 4 log around one request with audio.
SERVER_LOG = """\
0.02.569.048 I slot   operator(): id  0 | task 0 | cached n_tokens = 29, memory_seq_rm [29, end)
0.02.569.066 I slot process_mtmd: id  0 | task 0 | encoding mtmd batch from idx = 29, n_chunks = 1
0.02.569.319 I warmup: flash attention is enabled
0.02.740.889 I decoding audio batch 1/1, n_tokens_batch = 750
0.02.759.929 I audio decoded (batch 1/1) in 19 ms
0.02.764.950 I slot print_timing: id  0 | task 0 | prompt eval time =     195.37 ms /   789 tokens
1.05.000.000 I slot process_mtmd: id  0 | task 9 | encoding mtmd batch from idx = 29, n_chunks = 1
1.05.250.500 I decoding audio batch 1/2, n_tokens_batch = 512
1.05.300.000 I decoding audio batch 2/2, n_tokens_batch = 238
"""


def test_cli_log_gives_every_stage():
    got = ps.parse_cli_log(CLI_LOG)
    assert got == {"encode_ms": 87.0, "audio_slices": 1, "prefill_ms": 112.73, "prefill_tokens": 765,
                   "decode_ms": 3.02, "decode_tokens": 7, "load_ms": 11.55}
    assert ps.parse_cli_log("audio slice encoded in 41 ms\naudio slice encoded in 39 ms\n")["encode_ms"] == 80.0


def test_server_log_gives_each_encode_from_its_stamps():
    assert ps.log_seconds("1.05.250.500 I x") == pytest.approx(65.2505)
    assert ps.log_seconds("no stamp") is None
    assert ps.server_encodes_ms(SERVER_LOG) == pytest.approx([171.823, 250.5])


def test_cli_log_without_perf_lines_says_none():
    got = ps.parse_cli_log("main: loading model\nsomething failed\n")
    assert got["encode_ms"] is None and got["prefill_ms"] is None and got["decode_tokens"] is None
    assert got["audio_slices"] == 0


def test_sse_stream_gives_first_piece_text_and_timings():
    chunks = [
        (0.01, ": keep-alive\n"),
        (0.50, 'data: {"choices": [{"delta": {"role": "assistant"}}]}\n'),
        (0.75, 'data: {"choices": [{"delta": {"content": "\\"ro"}}]}\n'),
        (0.80, "\n"),
        (0.90, 'data: {"choices": [{"delta": {"content": "ck\\""}}], '
               '"timings": {"prompt_n": 12, "cache_n": 790, "predicted_n": 3}}\n'),
        (0.95, "data: [DONE]\n"),
        (9.00, 'data: {"choices": [{"delta": {"content": "never read"}}]}\n'),
    ]
    first, text, timings, end = ps.parse_sse(iter(chunks))
    assert first == 0.75 and text == '"rock"' and end == 0.95
    assert timings == {"prompt_n": 12, "cache_n": 790, "predicted_n": 3}


def test_sse_error_chunk_is_a_clear_error():
    with pytest.raises(GammaError, match="llama-server: .*context"):
        ps.parse_sse(iter([(0.1, 'data: {"error": {"message": "context too small"}}\n')]))


def test_median_rate_and_its_gaps():
    assert ps.median_rate([10.0, 12.0, 1000.0]) == 300.0  # one slow song (a busy machine) does not move it
    assert ps.median_rate([]) is None and ps.median_rate([None]) is None


def test_answer_schema_bounds_tokens_and_loads_as_a_prompt_set(tmp_path):
    from gamma_rt.runtime.tagging.prompt_sets import PromptSet

    assert ps.answer_schema(32) == {"type": "string", "maxLength": 30}
    with pytest.raises(GammaError, match="at least 3"):
        ps.answer_schema(2)
    path = tmp_path / "p.toml"
    path.write_text(ps.prompt_set_toml(ps.QUESTIONS, 32))
    loaded = PromptSet.load(path)
    assert [p.question for p in loaded.prompts] == list(ps.QUESTIONS)
    assert all(p.schema["maxLength"] == 30 for p in loaded.prompts)
    assert loaded.sampling["temperature"] == 0.0


def test_ctx_fits_a_four_minute_song_and_five_answers():
    ctx = ps.ctx_for(240, 5, 32)
    assert ctx % 256 == 0 and ctx >= 9 * 750 + 5 * 32


def test_decoder_flops_from_empty_cache_is_the_prefill_count():
    text = {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
            "num_key_value_heads": 2, "vocab_size": 151936}
    want = qwen3_prefill_flops(6000, 896, 4864, 24, 14, 2, 64, 151936, logits_for_all=False)
    assert ps.decoder_flops(6000, 0, text) == pytest.approx(want)
    # a question after the audio attends to it: more work than the same tokens from an empty cache
    assert ps.decoder_flops(20, 6000, text) > ps.decoder_flops(20, 0, text)


def test_ratios_pick_the_best_mtmd_setup():
    got = ps.ratios({"gamma-rt": 300.0, "gamma-rt-n1": 200.0, "mtmd": 100.0, "mtmd-cli": 25.0, "transformers": 60.0})
    assert got["gamma-rt/best-mtmd"] == {"ratio": 3.0, "target": 2.0, "met": True}
    assert got["gamma-rt/transformers"] == {"ratio": 5.0, "target": 6.0, "met": False}
    assert ps.ratios({"gamma-rt": 1.0})["gamma-rt/best-mtmd"]["ratio"] is None


def test_shortfall_names_the_stage_over_its_budget():
    ours = {"s_per_song": 30.0, "stages_s_per_song": {"encode": 2.0, "prefill": 20.0, "decode": 8.0}}
    theirs = {"s_per_song": 120.0, "stages_s_per_song": {"encode": 10.0, "prefill": 60.0, "decode": 50.0}}
    got = ps.shortfall(ours, theirs, 6.0)  # budget 20 s: prefill 20 - 60/6 = 10 s over, decode 8 - 50/6 < 0
    assert got["budget_s_per_song"] == 20.0 and got["over_budget_s"] == 10.0
    assert got["costliest_stage"] == "prefill" and got["stage_excess_s"]["prefill"] == 10.0
    assert ps.shortfall(ours, theirs, 2.0) is None


def test_fairest_mtmd_is_the_faster_and_says_why():
    got = ps.fairest_mtmd({"mtmd": {"songs_per_hour": 100.0, "audio_prefix_reused": True},
                           "mtmd-cli": {"songs_per_hour": 23.0}})
    assert got["setup"] == "mtmd" and "cache_prompt" in got["why"]
    got = ps.fairest_mtmd({"mtmd": {"songs_per_hour": 10.0, "audio_prefix_reused": False},
                           "mtmd-cli": {"songs_per_hour": 23.0}})
    assert got["setup"] == "mtmd-cli" and "NOT reuse" in got["why"]


def test_bad_flags_are_refused(capsys):
    with pytest.raises(SystemExit):
        ps.main(["--songs", "1", "--cli-songs", "2"])
    assert ps.main(["--systems", "gamma-rt,bogus", "--native", "/nonexistent"]) != 0
    assert "unknown ['bogus']" in capsys.readouterr().err


def test_absent_native_build_is_a_clear_error(capsys, tmp_path):
    assert ps.main(["--systems", "mtmd", "--native", str(tmp_path)]) != 0
    assert "llama-server not found; build it with" in capsys.readouterr().err


def test_peer_speed_end_to_end_on_the_tiny_preset(tmp_path):
    for tool in ("llama-server", "llama-mtmd-cli"):
        if not (NATIVE / tool).is_file():
            pytest.skip(f"no {NATIVE / tool}: build it with `JOBS=2 nice native/build.sh cpu`")
    out = tmp_path / "peer.json"
    rc = ps.main(["--preset", "tiny", "--songs", "2", "--cli-songs", "1", "--transformers-songs", "1", "--seconds", "12", "--in-flight", "2",
                  "--threads", "1", "--native", str(NATIVE), "--work", str(tmp_path / "work"), "--out", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert set(result["songs_per_hour"]) == set(ps.SYSTEMS)
    for name in ps.SYSTEMS:
        system = result["systems"][name]
        assert result["songs_per_hour"][name] > 0 and system["s_per_song"] > 0, name
        assert system["ttft_s"] > 0 and system["peak_rss_mib"] > 10, name
        assert system["answer_tokens_per_song"] > 0, name
        stages = system["stages_s_per_song"]
        assert {"encode", "prefill", "decode"} <= set(stages), name
        assert stages["encode"] > 0 and stages["prefill"] > 0 and stages["decode"] > 0, (name, stages)
    assert result["systems"]["mtmd-cli"]["songs"] == 1 and result["systems"]["mtmd"]["songs"] == 2
    assert result["systems"]["transformers"]["songs"] == 1 and result["systems"]["gamma-rt"]["songs"] == 2
    assert result["systems"]["mtmd"]["audio_prefix_reused"] is True  # questions 2..5 hit the prompt cache
    assert result["failed_systems"] == []
    assert result["fairest_mtmd"]["setup"] in ("mtmd", "mtmd-cli")
    assert result["matrix_rate"]["matrix_rate_gflops"] > 0
    assert 0 < result["gamma_rt_prefill_pct_of_matrix_rate"]
    assert result["ratios"]["gamma-rt/transformers"]["ratio"] > 0
    assert result["machine"]["threads"] == 1
    kv = result["work"]["kv_cache"]
    assert kv["gamma-rt"].startswith("f32, flash attention off") and kv["mtmd"].startswith("f16 with flash")
    assert result["work"]["gamma_rt_libllama"]  # which libllama gamma-rt ran on: the wheel's or the native one


def test_the_recorded_command_names_no_folder_of_this_machine(tmp_path):
    work, native = tmp_path / "work", tmp_path / "native-build" / "cpu" / "bin"
    command = f"python -m gamma_rt.bench.peer_speed --work {work} --native {native} --out {tmp_path}/r/p.json"
    public = ps._public(command, work, native)
    assert public == "python -m gamma_rt.bench.peer_speed --work WORK --native NATIVE --out p.json"
    assert str(tmp_path) not in public
