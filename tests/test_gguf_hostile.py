"""Hostile GGUFs (issue 23): files that passed the old header check, with the manifest's sha256 updated to
match, and aborted llama.cpp (SIGABRT) or Python (RecursionError). Each is built for real from the tiny
decoder; where it is cheap, a raw llama.cpp load in a subprocess shows the abort; then runtime/gguf_check.py,
`gamma-rt ask` and `gamma-rt serve` must refuse it in one line naming the key."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gamma_rt.bench.fuzz import QUIET_ABORTS, run_command
from gamma_rt.bench.fuzz_bundle import GGUFLayout, gguf_string, rerecord
from gamma_rt.errors import BundleError
from gamma_rt.runtime.gguf_check import check_gguf

# llama.cpp loads the model, then (when the abort comes later, in a kernel) decodes one token.
RAW_LLAMA = """
import sys, llama_cpp
llama_cpp.llama_backend_init()
model = llama_cpp.llama_model_load_from_file(sys.argv[1].encode(), llama_cpp.llama_model_default_params())
assert model, "llama.cpp refused the file cleanly"
params = llama_cpp.llama_context_default_params()
params.n_ctx = 64
ctx = llama_cpp.llama_init_from_model(model, params)
llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one((llama_cpp.llama_token * 1)(1), 1))
"""


def set_value(layout: GGUFLayout, label: str, value) -> bytes:
    offset, fmt = next((o, f) for name, o, f in layout.slots if name == label)
    data = bytearray(layout.data)
    struct.pack_into("<" + fmt, data, offset, value)
    return bytes(data)


def alignment(layout: GGUFLayout, value: int) -> bytes:
    return layout.insert_kv(gguf_string("general.alignment") + struct.pack("<II", 4, value), value)


def duplicate_token(layout: GGUFLayout) -> bytes:
    a, n = layout.tokens[300]
    b, _ = next(t for t in layout.tokens if t[1] == n and t[0] != a)
    data = bytearray(layout.data)
    data[b:b + n] = data[a:a + n]
    return bytes(data)


def nested(layout: GGUFLayout, depth: int) -> bytes:
    value = struct.pack("<IQ", 9, 1) * depth + struct.pack("<IQI", 4, 1, 7)
    return layout.insert_kv(gguf_string("fuzz.nested") + struct.pack("<I", 9) + value)


def f16_norm(src: Path) -> bytes:
    """The same model written whole by gguf-py, its first norm weight stored as F16 (a correct layout)."""
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(src)
    out = src.with_name("f16-norm.gguf")
    writer = gguf.GGUFWriter(out, reader.fields["general.architecture"].contents())
    for f in reader.fields.values():
        if not f.name.startswith("GGUF.") and f.name != "general.architecture":
            if f.types[0] == gguf.GGUFValueType.ARRAY:
                writer.add_array(f.name, f.contents())
            else:
                writer.add_key_value(f.name, f.contents(), f.types[0])
    for t in reader.tensors:
        data = np.array(t.data).reshape([int(d) for d in reversed(t.shape)])
        writer.add_tensor(t.name, data.astype(np.float16) if t.name == "blk.0.attn_norm.weight" else data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = out.read_bytes()
    out.unlink()
    return data


# name -> (the hostile file from the pristine layout, what the one-line refusal names, llama.cpp aborts on it)
CASES = {
    "block_count_0": (lambda L, src: set_value(L, "qwen3.block_count", 0), "qwen3.block_count is 0", True),
    "block_count_2^32-1": (lambda L, src: set_value(L, "qwen3.block_count", 2**32 - 1), "qwen3.block_count is 4294967295", True),
    "rms_eps_nan": (lambda L, src: set_value(L, "qwen3.attention.layer_norm_rms_epsilon", float("nan")),
                    "qwen3.attention.layer_norm_rms_epsilon is nan", True),
    "rms_eps_-1": (lambda L, src: set_value(L, "qwen3.attention.layer_norm_rms_epsilon", -1.0),
                   "qwen3.attention.layer_norm_rms_epsilon is -1.0", True),
    "alignment_1": (lambda L, src: alignment(L, 1), "general.alignment is 1", True),
    "alignment_48": (lambda L, src: alignment(L, 48), "general.alignment is 48; it must be a power of two", False),
    "f16_norm_weight": (lambda L, src: f16_norm(src), "'blk.0.attn_norm.weight' is 1-D in ggml type 1", True),
    "unknown_tensor_type": (lambda L, src: set_value(L, "output.weight.type", 99), "ggml type 99", False),
    "duplicate_tokens": (lambda L, src: duplicate_token(L), "tokenizer.ggml.tokens lists the token", True),
    "arrays_nested_5000_deep": (lambda L, src: nested(L, 5000), "fuzz.nested holds arrays of arrays", False),
}


@pytest.fixture(scope="module")
def hostile(tiny_bundle_gguf, tmp_path_factory) -> dict[str, Path]:
    src = tiny_bundle_gguf / "decoder-f32.gguf"
    layout = GGUFLayout(src)
    folder = tmp_path_factory.mktemp("hostile_gguf")
    files = {}
    for name, (build, _, _) in CASES.items():
        files[name] = folder / f"{name}.gguf"
        files[name].write_bytes(build(layout, src))
    return files


@pytest.fixture(scope="module")
def bundles(hostile, tiny_bundle, tmp_path_factory) -> dict[str, Path]:
    """A complete bundle per case: the tiny bundle's files hard-linked, the decoder replaced, its sha256
    and size re-recorded in the manifest (the attacker's bundle, not a damaged one)."""
    root = tmp_path_factory.mktemp("hostile_bundles")
    out = {}
    for name, gguf in hostile.items():
        bundle = root / name
        bundle.mkdir()
        for f in tiny_bundle.iterdir():
            if f.is_file() and f.name not in ("decoder-f32.gguf", "manifest.json"):
                os.link(f, bundle / f.name)
        (bundle / "manifest.json").write_bytes((tiny_bundle / "manifest.json").read_bytes())
        (bundle / "decoder-f32.gguf").write_bytes(gguf.read_bytes())
        rerecord(bundle, "decoder")
        out[name] = bundle
    return out


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c[2]])
def test_llama_cpp_itself_aborts_on_it(name, hostile):
    outcome, rc, text = run_command([sys.executable, "-c", RAW_LLAMA, hostile[name]], 120,
                                    env={**os.environ, **QUIET_ABORTS})
    assert rc == -signal.SIGABRT, text[-800:]


@pytest.mark.parametrize("name", CASES)
def test_the_gguf_check_refuses_it_in_one_line_naming_the_key(name, hostile):
    with pytest.raises(BundleError) as e:
        check_gguf(hostile[name])
    message = str(e.value)
    assert "\n" not in message and message.startswith(str(hostile[name]))
    assert CASES[name][1] in message, message


def _one_line_refusal(argv: list, needle: str, timeout: float = 180) -> None:
    r = subprocess.run([sys.executable, "-m", "gamma_rt.cli", *map(str, argv)], capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, **QUIET_ABORTS})
    lines = r.stderr.strip().splitlines()
    assert r.returncode > 0, (r.returncode, r.stderr[-800:])  # an exit code, not a signal
    assert "Traceback" not in r.stderr and lines and lines[-1].startswith("gamma-rt: error:"), r.stderr[-800:]
    assert needle in lines[-1], lines[-1]
    assert [line for line in lines if "error" in line] == [lines[-1]], r.stderr


@pytest.mark.parametrize("name", CASES)
def test_ask_refuses_it_in_one_line(name, bundles, song_file):
    _one_line_refusal(["ask", bundles[name], song_file, "-q", "Genre?", "--max-tokens", 2, "--threads", 1],
                      CASES[name][1])


@pytest.mark.parametrize("name", CASES)
def test_serve_refuses_it_at_startup(name, bundles):
    _one_line_refusal(["serve", bundles[name], "--port", 0, "--threads", 1], CASES[name][1])


@pytest.fixture(scope="module")
def song_file(tmp_path_factory) -> Path:
    from gamma_rt.synth import Music, write

    return write(tmp_path_factory.mktemp("song") / "song.flac", Music(seconds=2.0, rate=16000, channels=1))


def test_a_pristine_decoder_and_its_f16_variant_pass(tiny_bundle_gguf):
    for name in ("decoder-f32.gguf", "decoder-f16.gguf"):
        header = check_gguf(tiny_bundle_gguf / name)
        assert header.metadata["qwen3.block_count"] == 2 and len(header.tensors) == header.n_tensors
