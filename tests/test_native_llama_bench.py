"""The native llama.cpp build (native/build.sh, CMakeLists.txt) and bench/llama_bench.py on a tiny random GGUF.

Tests that need the build skip with the reason when native-build/*/bin/llama-bench is absent
(build it with `native/build.sh cpu`, a few minutes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gamma_rt.bench.llama_bench import decode_weight_bytes, find_llama_bench, parse_records, run_llama_bench
from gamma_rt.bench.random_gguf import write_random_qwen3_gguf
from gamma_rt.decoder_shape import DecoderShape
from gamma_rt.errors import GammaError

REPO = Path(__file__).resolve().parents[1]


def _native_bin() -> Path:
    try:
        return find_llama_bench(search_root=REPO).parent
    except GammaError as e:
        pytest.skip(f"no native llama.cpp build ({e})")


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    return write_random_qwen3_gguf(tmp_path_factory.mktemp("gguf") / "tiny-f16.gguf", DecoderShape.tiny())


def test_random_gguf_has_the_qwen3_shape_llama_cpp_expects(tiny_gguf):
    from gguf import GGUFReader

    reader = GGUFReader(str(tiny_gguf))
    shapes = {t.name: tuple(int(x) for x in t.shape) for t in reader.tensors}
    # GGUF lists dimensions innermost first: (n_embd, n_vocab) for the embedding table
    assert shapes["token_embd.weight"] == (64, 1024)
    assert shapes["blk.1.attn_k.weight"] == (64, 2 * 16)
    assert shapes["blk.0.ffn_down.weight"] == (128, 64)
    assert len([n for n in shapes if n.startswith("blk.")]) == 2 * 11


def test_decode_weight_bytes_leaves_out_the_embedding_table(tiny_gguf):
    s = DecoderShape.tiny()
    per_layer = (2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128) * 2 + (2 * 64 + 2 * 16) * 4  # F16 matrices; F32 attn/ffn and q/k norms
    expected = s.num_hidden_layers * per_layer + 1024 * 64 * 2 + 64 * 4  # + output head and final norm
    assert decode_weight_bytes(tiny_gguf) == expected


def test_llama_bench_json_is_parsed_into_records():
    text = json.dumps([{"model_type": "qwen3 8B F16", "model_size": 16, "n_prompt": 0, "n_gen": 128,
                        "n_gpu_layers": 99, "n_threads": 4, "avg_ts": 200.0, "stddev_ts": 1.0}])
    (r,) = parse_records(text)
    assert r.kind == "decode" and r.ms_per_token == pytest.approx(5.0)


@pytest.mark.parametrize("text", ["not json", "{}", json.dumps([{"n_gen": 1}])])
def test_malformed_llama_bench_output_raises_gamma_error(text):
    with pytest.raises(GammaError, match="llama-bench"):
        parse_records(text)


def test_missing_llama_bench_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.delenv("GAMMA_RT_NATIVE", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(GammaError, match="native/build.sh cpu"):
        find_llama_bench(search_root=tmp_path)


def test_llama_bench_measures_prefill_and_decode_of_a_tiny_gguf(tiny_gguf):
    binary = _native_bin() / "llama-bench"
    records = run_llama_bench(tiny_gguf, n_prompt=16, n_gen=8, repetitions=2, threads=1, binary=binary)
    assert [(r.kind, r.n_prompt, r.n_gen) for r in records] == [("prefill", 16, 0), ("decode", 0, 8)]
    assert all(r.tokens_per_s > 0 and "qwen3" in r.model_type for r in records)
    # llama-bench reports the tensor bytes: the file less its header and vocab
    assert 0 < records[0].model_bytes < tiny_gguf.stat().st_size


_GREEDY = """
import sys, llama_cpp
m = llama_cpp.Llama(sys.argv[1], n_ctx=64, n_threads=1, seed=0, verbose=False)
out = m.create_completion("t5 t9", max_tokens=6, temperature=0.0)
print(llama_cpp.llama_cpp._lib._name)
print(out["choices"][0]["text"])
"""


def test_llama_cpp_python_on_the_native_libs_decodes_like_the_pip_wheel(tiny_gguf):
    """The shared libraries are the same llama.cpp as the pinned wheel: same greedy tokens."""
    lib_dir = _native_bin()
    if not (lib_dir / "libllama.so").is_file():
        pytest.skip(f"{lib_dir} has no libllama.so")
    env = {k: v for k, v in os.environ.items() if k != "LLAMA_CPP_LIB_PATH"}
    wheel = subprocess.run([sys.executable, "-c", _GREEDY, str(tiny_gguf)], capture_output=True, text=True, env=env, check=True)
    native = subprocess.run([sys.executable, "-c", _GREEDY, str(tiny_gguf)], capture_output=True, text=True,
                            env={**env, "LLAMA_CPP_LIB_PATH": str(lib_dir)}, check=True)
    wheel_lib, wheel_text = wheel.stdout.splitlines()[:2]
    native_lib, native_text = native.stdout.splitlines()[:2]
    assert native_lib.startswith(str(lib_dir)) and not wheel_lib.startswith(str(lib_dir))
    assert native_text == wheel_text and native_text.strip()


def test_kv_bytes_read_counts_k_and_v_of_every_layer_at_the_depth(tiny_gguf):
    from gamma_rt.bench.llama_bench import kv_bytes_read

    # K and V x 2 layers x 32 cached tokens x 2 KV heads x 16 dims x 2 bytes (f16)
    assert kv_bytes_read(tiny_gguf, 32) == 2 * 2 * 32 * 2 * 16 * 2 == 8192
    assert kv_bytes_read(tiny_gguf, 0) == 0
