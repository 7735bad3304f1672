"""``gamma-rt bench serve BUNDLE``: the load generator against a real ``gamma-rt serve`` subprocess on 127.0.0.1."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi", reason="gamma-rt bench serve needs the serve extra")

from gamma_rt.bench import serve_steps  # noqa: E402
from gamma_rt.bench.serve_load import percentiles, request_kind  # noqa: E402
from gamma_rt.cli import main  # noqa: E402


def test_bench_serve_runs_both_ways_and_writes_json_and_a_plot(tiny_bundle, tmp_path, capsys):
    code = main(["bench", "serve", str(tiny_bundle), "--clients", "2", "--requests", "6", "--audio-seconds", "3",
                 "--answer-tokens", "4", "--bad-fraction", "0.4", "--threads", "1", "--decoder", "decoder",
                 "--out", str(tmp_path)])
    assert code == 0
    [path] = tmp_path.glob("serve-*.json")
    result = json.loads(path.read_text())
    assert path.with_suffix(".png").is_file()
    for name, concurrency in (("sequential", 1), ("concurrent", 2)):
        run = result["runs"][name]
        assert run["concurrency"] == concurrency and run["requests"] == 6
        assert run["errors"] == 0 and run["server_errors_5xx"] == 0
        assert run["hostile"] > 0 and run["hostile_answered_4xx"] == run["hostile"]
        assert set(run["ttft_ms"]) == {"p50", "p95", "p99", "mean"} and run["tokens_per_s"] > 0
    same = result["same_answers"]
    assert same["compared"] > 0 and same["different"] == 0
    assert same["tokens_compared"] == sum(o["tokens"] for o in result["runs"]["sequential"]["per_request"]
                                          if o["kind"] == "good")  # every token's bytes came back
    assert result["rss_mib"]["samples"] and "same answers" in capsys.readouterr().out
    # the served bundle's limits fit the load, and its runtime flags are the command's
    assert result["inputs"]["server_args"] == ["--max-tokens", "16", "--max-audio-seconds", "3", "--decoder", "decoder"]


def test_bench_serve_refuses_runtime_flags_for_a_server_it_did_not_start(capsys):
    assert main(["bench", "serve", "http://127.0.0.1:9", "--decoder", "decoder.f16"]) != 0
    assert "--decoder applies to a BUNDLE target" in capsys.readouterr().err


def test_percentiles_are_nearest_rank_in_ms_and_request_kinds_are_fixed_by_index():
    assert percentiles([0.001 * i for i in range(1, 101)]) == {"p50": 50.0, "p95": 95.0, "p99": 99.0, "mean": 50.5}
    assert percentiles([]) is None
    kinds = [request_kind(i, 0.3) for i in range(1000)]
    assert kinds == [request_kind(i, 0.3) for i in range(1000)]
    assert 250 < sum(k != "good" for k in kinds) < 350
    assert all(request_kind(i, 0.0) == "good" for i in range(100))


def test_serve_steps_writes_step_prefill_and_encode_costs_and_the_ratio_they_allow(tiny_bundle, tmp_path, capsys):
    assert serve_steps.main([str(tiny_bundle), "--threads", "1", "--cells", "16", "--steps", "1", "--windows", "1",
                             "--out", str(tmp_path)]) == 0
    [path] = tmp_path.glob("serve-steps-*.json")
    result = json.loads(path.read_text())
    for layout in ("own_cells", "shared_cells"):
        assert set(result[layout]["step_ms"]) == {"1", "2", "4", "8"} and result[layout]["prefill_ms_per_token"] > 0
    assert set(result["own_cells"]["batch_order_ms"]) == {"increasing", "decreasing", "one_missing"}
    assert "batch_order_ms" not in result["shared_cells"]  # one pool of cells: llama.cpp never splits by order
    assert result["encoders"]["window_s"] > 0 and result["encoders"]["at_once"]["steps_of_8"] >= 1
    assert set(result["predicted"]["ratio_at_8"]) == {"3s", "10s", "30s"} and result["decoder"] == "decoder"
    assert "best ratio at 8" in capsys.readouterr().out


def test_the_predicted_ratio_is_the_fixed_cost_plus_steps_one_at_a_time_over_batched():
    # 1 s window, 10 ms/token prefill, 100 ms a step alone, 200 ms a step of 8 (25 ms each)
    p = serve_steps.predict(1.0, 10.0, {"1": 100.0, "8": 200.0}, tokens_per_second=25.0)
    fixed = 1.0 + (75 + serve_steps.PROMPT_TOKENS) * 0.01  # 3 s of audio: 75 tokens
    assert p["ratio_at_8"]["3s"]["256"] == round((fixed + 25.6) / (fixed + 6.4), 2) and p["limit"] == 4.0
    need = p["answer_tokens_for_2.5x"]["3s"]
    ratio = lambda tokens: (fixed + tokens * 0.1) / (fixed + tokens * 0.025)  # noqa: E731
    assert ratio(need) >= 2.5 > ratio(need - 1)
    assert serve_steps.predict(1.0, 10.0, {"1": 100.0, "8": 400.0}, 25.0)["answer_tokens_for_2.5x"]["3s"] is None
