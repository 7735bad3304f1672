"""The benchmark harness: its result file, its arithmetic, its report and its target verdicts.

Performance is never asserted here: only that the harness measures every field, with sane numbers,
and that tables and verdicts are computed from the JSON.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest

from gamma_rt.bench import report
from gamma_rt.bench.run import BenchOptions, ratios, write_result
from gamma_rt.bench.targets import TARGETS, Target, evaluate
from gamma_rt.bench.timing import measure, percentile, summarize

from flamingo_fixtures import mf_bundle, mf_folder  # noqa: F401  (session fixtures)


@pytest.fixture(scope="module")
def tiny_full_bundle(tiny_checkpoint, tiny_bundle_gguf, tmp_path_factory):
    """A bundle with fp32 + fp16 ONNX audio graphs and F32 + F16 GGUFs of the tiny checkpoint."""
    from gamma_rt.export.onnx_export import export_onnx

    bundle = tmp_path_factory.mktemp("bench_bundle") / "bundle"
    shutil.copytree(tiny_bundle_gguf, bundle)
    export_onnx(tiny_checkpoint, bundle, precision="fp32")
    export_onnx(tiny_checkpoint, bundle, precision="fp16")
    return bundle


@pytest.fixture(scope="module")
def tiny_result(tiny_full_bundle, tiny_checkpoint, tmp_path_factory):
    """One quick run of the whole harness through the CLI: repeat 1, one 35 s input, PyTorch baselines on,
    llama-bench (a native build) left out."""
    out = tmp_path_factory.mktemp("bench_results")
    proc = subprocess.run(
        [sys.executable, "-m", "gamma_rt.cli", "bench", str(tiny_full_bundle), "--baseline", str(tiny_checkpoint),
         "--repeat", "1", "--warmup", "0", "--seconds", "35", "--decode-tokens", "4", "--threads", "1",
         "--skip", "llama_bench", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    files = list(out.glob("*.json"))
    assert len(files) == 1
    return files[0], json.loads(files[0].read_text()), proc.stdout


def _stats_ok(stats: dict) -> None:
    assert set(stats) >= {"median", "p90", "min", "max", "n", "samples"}
    assert stats["n"] == len(stats["samples"]) >= 1
    assert all(math.isfinite(x) and x >= 0 for x in stats["samples"])
    assert stats["min"] <= stats["median"] <= stats["p90"] <= stats["max"]


def test_tiny_run_writes_json_with_every_field_and_sane_numbers(tiny_result):
    path, result, stdout = tiny_result
    assert result["format"] == "gamma-rt/bench"
    machine = result["machine"]
    assert machine["cpu"] and machine["threads"] == 1 and machine["logical_cpus"] >= 1
    assert machine["versions"]["onnxruntime"] != "absent" and machine["versions"]["llama-cpp-python"] != "absent"
    assert isinstance(machine["load_average_start"], list) and isinstance(machine["load_average_end"], list)
    assert result["inputs"]["preset"] == "tiny" and result["inputs"]["repeat"] == 1
    for stage in ("front_end", "temporal_encoder", "global_encoder", "fusion", "projector", "prefill_per_window",
                  "decode_ms_per_token"):
        _stats_ok(result["stages"][stage])
    assert set(result["audio_side"]) == {"onnxruntime-fp32", "onnxruntime-fp16", "pytorch-eager"}
    for way in result["audio_side"].values():
        for stage in ("temporal_encoder", "global_encoder", "fusion", "projector"):
            _stats_ok(way[stage])
    for way in ("llama.cpp-raw-f32", "llama.cpp-raw-f16", "runtime-f32", "runtime-f16", "transformers"):
        _stats_ok(result["decoder"][way]["prefill_ms"])
        _stats_ok(result["decoder"][way]["decode_ms_per_token"])
    for t, kv in (("f32", 0), ("f16", 1)):  # the runtime and its raw loop decode under the very same settings
        runtime, raw = result["decoder"][f"runtime-{t}"]["settings"], result["decoder"][f"llama.cpp-raw-{t}"]["settings"]
        assert {k: v for k, v in runtime.items() if k != "interleaved_with"} == \
            {k: v for k, v in raw.items() if k != "interleaved_with"}
        assert runtime["type_k"] == runtime["type_v"] == kv and runtime["n_threads"] == 1
    row = result["end_to_end"]["runtime"]["35s"]  # the Pipeline, encoding one window ahead
    assert row["windows"] == 2  # 35 s = one full window + a padded one
    for key in ("total_ms", "rtf", "ttft_ms", "stage_sum_ms"):
        _stats_ok(row[key])
    assert row["overhead"] is None  # overlapping stages: overhead is judged on the sequential rows
    assert row["ttft_ms"]["median"] < row["total_ms"]["median"]
    if row["first_piece_after_prefill_ms"] is not None:  # None when the tiny model's 4 tokens print no text
        assert row["first_piece_after_prefill_ms"]["median"] <= row["ttft_ms"]["median"]
    assert math.isclose(row["rtf"]["median"], row["total_ms"]["median"] / 35_000, rel_tol=1e-9)
    assert set(row["parts_ms"]) >= {"read", "front_end", "temporal_encoder", "prefill", "question", "decode"}
    sequential = result["end_to_end"]["runtime-sequential"]["35s"]
    assert sequential["stage_sum_ms"]["median"] <= sequential["total_ms"]["median"]
    assert sequential["overhead"] == result["ratios"]["orchestration_overhead"] >= 0
    assert result["inputs"]["end_to_end"]["decoder"] == "decoder.f16"
    reference = result["end_to_end"]["pytorch-reference"]["35s"]  # export/families/gamma/reference.py, same file and question
    _stats_ok(reference["total_ms"])
    tp = result["throughput"]
    assert tp["songs"] == 2 and tp["prompts"] == 5
    for mode in ("with_prefix_reuse", "without_prefix_reuse"):
        assert tp[mode]["seconds"] > 0 and tp[mode]["songs_per_hour"] > 0
    assert result["ratios"]["throughput_prefix_reuse"] == pytest.approx(
        tp["without_prefix_reuse"]["seconds"] / tp["with_prefix_reuse"]["seconds"])
    assert result["memory"]["runtime_peak_rss_mib"] > 0 and result["memory"]["pytorch_peak_rss_mib"] > 0
    assert result["skipped"]["llama-bench"].startswith("skipped on request")
    assert [t["ratio"] for t in result["targets"]] == [t.ratio for t in TARGETS]
    assert result["ratios"]["audio_eager_over_ort"] > 0 and result["ratios"]["decode_runtime_over_raw"] > 0
    assert "targets (ratios within this run)" in stdout
    assert "/work/" not in path.read_text() and "/tmp/" not in json.dumps(result["inputs"])


@pytest.fixture(scope="module")
def mf_result(mf_bundle, mf_folder, tmp_path_factory):
    """One quick run on a tiny Music Flamingo bundle (encoder + projector with RoTE, qwen2 decoder) through
    the CLI: one 30 s input, repeat 1, transformers' own MusicFlamingoForConditionalGeneration as the
    baseline, no llama-bench."""
    out = tmp_path_factory.mktemp("bench_mf")
    proc = subprocess.run(
        [sys.executable, "-m", "gamma_rt.cli", "bench", str(mf_bundle), "--baseline", str(mf_folder), "--seconds",
         "30", "--repeat", "1", "--warmup", "0", "--decode-tokens", "4", "--threads", "1", "--gpu-layers", "0",
         "--skip", "llama_bench", "--skip", "reference_10min", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (path,) = out.glob("*.json")
    return path, json.loads(path.read_text())


def test_flamingo_bundle_bench_times_its_own_chain_and_qwen2_decoder(mf_result):
    path, result = mf_result
    inputs = result["inputs"]
    assert (inputs["family"], inputs["audio_chain"], inputs["llm_arch"]) == ("musicflamingo", ["encoder", "projector"],
                                                                            "qwen2")
    asked = {"backend": "auto", "precision": "auto", "threads": 1, "gpu_layers": 0, "cache_dir": None,
             "overlap": True, "decoder": "auto"}
    assert {k: inputs["runtime"][k] for k in asked} == asked  # the whole RuntimeOptions is recorded
    assert inputs["threads"] == 1 and result["machine"]["threads"] == 1
    assert "CPUExecutionProvider" in inputs["audio_backends"]["onnxruntime-fp32"]
    for stage in ("front_end", "encoder", "projector", "prefill_per_window", "decode_ms_per_token"):
        _stats_ok(result["stages"][stage])
    assert set(result["audio_side"]) == {"onnxruntime-fp32", "pytorch-eager"}
    assert set(result["audio_side"]["onnxruntime-fp32"]) == {"encoder", "projector"}
    _stats_ok(result["audio_side"]["pytorch-eager"]["get_audio_features"])  # transformers runs it as one call
    for way in ("llama.cpp-raw-f32", "runtime-f32", "transformers"):
        _stats_ok(result["decoder"][way]["prefill_ms"])
        _stats_ok(result["decoder"][way]["decode_ms_per_token"])
    row = result["end_to_end"]["runtime"]["30s"]
    assert row["windows"] == 1
    for key in ("total_ms", "rtf", "ttft_ms", "stage_sum_ms"):
        _stats_ok(row[key])
    assert 0 < row["ttft_ms"]["median"] < row["total_ms"]["median"]
    assert set(row["parts_ms"]) >= {"read", "front_end", "encoder", "projector", "prefill", "question", "decode"}
    assert result["inputs"]["end_to_end"]["decoder"] == "decoder"  # the bundle's only GGUF: F32
    assert result["inputs"]["end_to_end"]["backend"] == "ort-cpu fp32"
    tp = result["throughput"]
    assert tp["prompts"] == 5 and tp["with_prefix_reuse"]["songs_per_hour"] > 0
    assert result["ratios"]["throughput_prefix_reuse"] > 0 and result["ratios"]["decode_runtime_over_raw"] > 0
    assert result["ratios"]["audio_eager_over_ort"] > 0 and result["ratios"]["decode_llamacpp_over_transformers"] > 0
    reference = result["end_to_end"]["pytorch-reference"]["30s"]  # the processor + generate on the same file
    _stats_ok(reference["total_ms"])
    assert set(reference["parts_ms"]) == {"processor", "generate"}
    assert result["memory"]["pytorch_peak_rss_mib"] > 0
    assert set(result["skipped"]) == {"llama-bench", "reference_10min"}
    table = report.table(result, path.stem)
    assert "| way | encoder | projector | get_audio_features | sum |" in table and "musicflamingo preset" in table


def test_baseline_of_another_kind_than_the_bundle_is_one_line_of_error(mf_bundle, tmp_path, capsys):
    from gamma_rt.cli import main

    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    ckpt.mkdir()
    assert main(["bench", str(mf_bundle), "--baseline", str(ckpt), "--out", str(out)]) == 2
    assert "config.json: missing; --baseline takes the checkpoint folder" in capsys.readouterr().err
    (ckpt / "config.json").write_text("{}")  # GaMMA's own format names no model_type
    assert main(["bench", str(mf_bundle), "--baseline", str(ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model_type is None" in err[0] and "musicflamingo bundle" in err[0]
    assert not out.exists()  # refused before anything was measured


def test_bench_takes_the_runtime_options_with_its_own_thread_default(tmp_path, capsys):
    import argparse

    from gamma_rt.bench.commands import register
    from gamma_rt.cli import main
    from gamma_rt.runtime.options import RuntimeOptions

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["bench", "b", "--backend", "ort-cpu", "--precision", "fp16", "--decoder", "decoder.f16"])
    assert RuntimeOptions.from_args(args) == RuntimeOptions(backend="ort-cpu", precision="fp16", threads=2,
                                                            decoder="decoder.f16")
    assert main(["bench", str(tmp_path), "--cache-dir", str(tmp_path)]) == 2
    assert "--cache-dir: the bench times the encoders" in capsys.readouterr().err
    assert BenchOptions(tmp_path).runtime.threads == 2


def test_plots_are_written_beside_the_json(tiny_result):
    import matplotlib.image

    path, _, _ = tiny_result
    for kind in ("stages", "length"):
        png = path.with_name(f"{path.stem}-{kind}.png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = matplotlib.image.imread(png)  # decodes the whole file: a truncated PNG raises
        height, width = pixels.shape[:2]
        assert 300 <= width <= 5000 and 200 <= height <= 5000, (kind, pixels.shape)
        assert pixels[..., :3].std() > 0.01, f"{png.name} is blank"


def test_report_table_is_generated_from_the_json(tiny_result, tmp_path):
    path, result, _ = tiny_result
    shutil.copy(path, tmp_path / path.name)
    # change one figure in the JSON: the regenerated table must show the new value, so nothing is typed by hand
    result["stages"]["front_end"]["median"] = 12345.6
    (tmp_path / path.name).write_text(json.dumps(result))
    (tmp_path / "notes.json").write_text('{"not": "a result"}')
    readme = report.write_readme(tmp_path)
    text = readme.read_text()
    assert text.startswith("# Benchmark results")
    assert f"## {path.stem}" in text
    assert "| front_end | 12345.6 (" in text
    assert "notes" not in text
    for t in result["targets"]:
        assert t["what"] in text


def test_cli_report_subcommand_rebuilds_readme(tmp_path):
    from gamma_rt.cli import main

    assert main(["bench", "report", "--out", str(tmp_path)]) == 0
    assert "No results yet" in (tmp_path / "README.md").read_text()


def test_median_and_p90_follow_linear_interpolation():
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 90) == pytest.approx(4.6)  # rank 3.6 between 4 and 5
    assert percentile([1.0, 2.0], 50) == 1.5
    assert percentile([7.0], 90) == 7.0
    for q in (50, 90):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    s = summarize(values)
    assert (s.median, s.min, s.max, s.n) == (3.0, 1.0, 5.0, 5)
    with pytest.raises(ValueError):
        percentile([], 50)


def test_measure_runs_warmups_untimed_then_repeats():
    calls = []
    stats = measure(lambda: calls.append(1), repeat=3, warmup=2)
    assert len(calls) == 5 and stats.n == 3


def _result_with(**figures) -> dict:
    ms = lambda x: {"median": x, "p90": x}  # noqa: E731
    return {
        "audio_side": {
            "pytorch-eager": {s: ms(figures["eager"] / 4) for s in ("temporal_encoder", "global_encoder", "fusion",
                                                                     "projector")},
            "onnxruntime-fp32": {s: ms(figures["ort"] / 4) for s in ("temporal_encoder", "global_encoder", "fusion",
                                                                      "projector")},
        },
        "decoder": {
            "transformers": {"decode_ms_per_token": ms(figures["hf"])},
            "llama.cpp-raw-f16": {"decode_ms_per_token": ms(figures["raw"])},
            "runtime-f16": {"decode_ms_per_token": ms(figures["runtime"])},
        },
        "end_to_end": {"runtime": {"30s": {"ttft_ms": ms(figures["ttft30"]), "overhead": None},
                                   "600s": {"ttft_ms": ms(figures["ttft600"]), "overhead": None}},
                       "runtime-sequential": {"30s": {"overhead": figures["overhead"]}}},
        "throughput": {"speedup": figures["speedup"]},
    }


def test_targets_pass_when_every_ratio_is_on_the_right_side():
    r = ratios(_result_with(eager=260, ort=100, hf=30, raw=10, runtime=10.5, ttft30=100, ttft600=120,
                            overhead=0.03, speedup=3.5))
    assert r["audio_eager_over_ort"] == pytest.approx(2.6)
    assert r["decode_llamacpp_over_transformers"] == pytest.approx(3.0)
    assert r["decode_runtime_over_raw"] == pytest.approx(10 / 10.5)
    assert r["ttft_10min_over_30s"] == pytest.approx(1.2)
    assert r["orchestration_overhead"] == pytest.approx(0.03)
    assert [v.status for v in evaluate(r)] == ["PASS"] * len(TARGETS)


def test_targets_miss_when_ratios_fall_short_and_unmeasured_is_never_a_pass():
    r = ratios(_result_with(eager=120, ort=100, hf=20, raw=10, runtime=12, ttft30=100, ttft600=140,
                            overhead=0.08, speedup=2.0))
    verdicts = {v.target.ratio: v.status for v in evaluate(r)}
    assert set(verdicts.values()) == {"MISS"}
    assert verdicts["decode_runtime_over_raw"] == "MISS"  # 10/12 = 0.83 < 0.9
    none = evaluate({})
    assert {v.status for v in none} == {"n/a"}


def test_target_comparison_direction_is_read_from_the_target():
    at_most = Target("x", "a cost ratio", "<=", 1.3)
    at_least = Target("x", "a speed ratio", ">=", 1.3)
    assert evaluate({"x": 1.3}, (at_most,))[0].status == "PASS"
    assert evaluate({"x": 1.31}, (at_most,))[0].status == "MISS"
    assert evaluate({"x": 1.29}, (at_least,))[0].status == "MISS"


def test_bench_refuses_bad_arguments_with_one_line(tmp_path, capsys):
    from gamma_rt.cli import main

    assert main(["bench", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bundle folder not found" in err[0]
    assert main(["bench", str(tmp_path), "--repeat", "0"]) == 2
    assert "--repeat must be at least 1" in capsys.readouterr().err


def test_write_result_names_file_by_preset_and_time(tmp_path):
    result = {"created": "2026-01-02T03:04:05+00:00", "inputs": {"preset": "small"}}
    path = write_result(result, tmp_path)
    assert path.name == "bench-small-20260102T030405.json"
    assert json.loads(path.read_text()) == result


def test_bench_options_default_lengths_are_30s_4min_10min(tmp_path):
    assert BenchOptions(tmp_path).lengths() == (30.0, 240.0, 600.0)
    assert BenchOptions(tmp_path, seconds=12).lengths() == (12,)


def test_process_gpu_memory_is_read_from_nvidia_smi_compute_apps_output():
    from gamma_rt.machine import DeviceMemoryWatch, process_gpu_mib

    listing = "4242, 1536\n777, 80\n4242, 512\n"  # one process on two GPUs, and another process
    assert process_gpu_mib(listing, 4242) == 2048.0
    assert process_gpu_mib(listing, 9) is None
    assert process_gpu_mib("No running processes found", 4242) is None
    assert process_gpu_mib(None, 4242) is None
    import shutil

    with DeviceMemoryWatch(interval=0.05) as watch:
        pass
    if shutil.which("nvidia-smi") is None:  # nothing to sample here: no figure rather than a made-up one
        assert watch.peak_mib is None and watch.source is None
    else:
        assert watch.peak_mib is not None and watch.source
