"""Thread defaults that hold under load (issue 23): the cores a process may use, what the decoder and ONNX
Runtime run with when --threads is not given, and the bench that compares the default with every count."""

from __future__ import annotations

import json
import os

import llama_cpp
import pytest

from gamma_rt.machine import DECODER_THREADS_MAX, available_cores, cpu_quota, default_decoder_threads


def _cgroup(tmp_path, own: str, files: dict[str, str]):
    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (tmp_path / "self_cgroup").write_text(own)
    return root, tmp_path / "self_cgroup"


def test_cgroup_v2_cpu_max_is_the_quota_in_cores(tmp_path):
    root, own = _cgroup(tmp_path, "0::/box.slice/job\n", {"box.slice/job/cpu.max": "150000 100000\n"})
    assert cpu_quota(root, own) == 1.5


def test_cgroup_v2_without_a_limit_has_no_quota(tmp_path):
    root, own = _cgroup(tmp_path, "0::/job\n", {"job/cpu.max": "max 100000\n"})
    assert cpu_quota(root, own) is None


def test_cgroup_v1_quota_over_period_is_the_quota(tmp_path):
    root, own = _cgroup(tmp_path, "4:cpu,cpuacct:/docker/abc\n",
                        {"cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "300000\n",
                         "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n"})
    assert cpu_quota(root, own) == 3.0


def test_cgroup_v1_unlimited_and_no_cgroup_have_no_quota(tmp_path):
    root, own = _cgroup(tmp_path, "4:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"})
    assert cpu_quota(root, own) is None
    assert cpu_quota(tmp_path / "none", tmp_path / "none_either") is None


def test_available_cores_are_the_affinity_cut_to_the_quota(monkeypatch):
    import gamma_rt.machine as machine

    assert 1 <= available_cores() <= len(os.sched_getaffinity(0))
    monkeypatch.setattr(machine, "affinity_cores", lambda: 16)
    monkeypatch.setattr(machine, "cpu_quota", lambda: 2.5)
    assert machine.available_cores() == 3  # 2.5 cores of time still runs 3 threads at once
    monkeypatch.setattr(machine, "cpu_quota", lambda: 0.2)
    assert machine.available_cores() == 1


@pytest.mark.parametrize("cores, threads", [(1, 1), (2, 1), (3, 1), (4, 2), (16, 8), (64, DECODER_THREADS_MAX)])
def test_the_decoder_takes_half_the_cores_by_default(cores, threads):
    assert default_decoder_threads(cores) == threads


def test_a_decoder_session_without_threads_runs_the_default(tiny_bundle):
    from gamma_rt.runtime.decoder import DecoderSession

    with DecoderSession(tiny_bundle / "decoder-f32.gguf", n_ctx=64) as s:
        assert llama_cpp.llama_n_threads(s._ctx) == default_decoder_threads()
        assert llama_cpp.llama_n_threads_batch(s._ctx) == default_decoder_threads()
    with DecoderSession(tiny_bundle / "decoder-f32.gguf", n_ctx=64, n_threads=3) as s:
        assert llama_cpp.llama_n_threads(s._ctx) == 3


def test_onnx_runtime_sessions_do_not_spin_and_take_every_available_core(tiny_bundle):
    from gamma_rt.runtime.pipeline import Pipeline

    with Pipeline.open(tiny_bundle) as pipe:
        for session in pipe.backend.sessions.values():
            options = session.get_session_options()
            assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
            assert options.intra_op_num_threads == available_cores()
        assert llama_cpp.llama_n_threads(pipe.session._ctx) == default_decoder_threads()


def test_threads_help_says_what_the_default_picks_on_2_and_16_cores():
    from gamma_rt.runtime.options import THREADS_HELP

    assert f"{default_decoder_threads(2)} decoder thread and 2 encoder threads on 2 cores" in THREADS_HELP
    assert f"{default_decoder_threads(16)} and 16 on 16 cores" in THREADS_HELP


def test_bench_compares_the_default_with_every_count_idle_and_busy(tiny_bundle, tmp_path, capsys):
    from gamma_rt.bench.thread_defaults import main

    out = tmp_path / "results"
    assert main(["--bundle", str(tiny_bundle), "--work", str(tmp_path / "work"), "--repeats", "2",
                 "--max-tokens", "4", "--out", str(out)]) == 0
    (path,) = out.glob("thread-defaults-bundle-*.json")
    result = json.loads(path.read_text())
    configs = {"default", *(f"threads={n}" for n in range(1, available_cores() + 1))}
    for condition in ("idle", "busy"):
        c = result["conditions"][condition]
        assert set(c["timings"]) == configs
        assert all(len(t["total_ms"]["samples"]) == 2 for t in c["timings"].values())
        assert c["best_explicit"] in configs - {"default"}
        assert c["default_over_best"] == pytest.approx(c["default_ms"] / c["best_explicit_ms"], rel=1e-3)
    assert result["default_picks"]["16_cores"]["decoder_threads"] == 8
    assert result["default_picks"]["2_cores"]["decoder_threads"] == 1
    assert "idle: default" in capsys.readouterr().out


def test_bench_refuses_zero_repeats_in_one_line(tmp_path, capsys):
    from gamma_rt.bench.thread_defaults import main

    assert main(["--repeats", "0", "--work", str(tmp_path)]) != 0
    assert "--repeats must be at least 1" in capsys.readouterr().err
