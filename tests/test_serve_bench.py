"""``gamma-rt bench serve BUNDLE``: the load generator against a real ``gamma-rt serve`` subprocess on 127.0.0.1."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi", reason="gamma-rt bench serve needs the serve extra")

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
    assert result["same_answers"]["compared"] > 0 and result["same_answers"]["different"] == 0
    assert result["rss_mib"]["samples"] and "same answers" in capsys.readouterr().out
    assert result["inputs"]["server_args"][-2:] == ["--decoder", "decoder"]  # the served bundle's runtime flags


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
