"""quant/: llama.cpp quantization of the decoder GGUF, importance matrices, and the fidelity report.

k-quants need 256-wide rows, so besides the tiny bundle (64-wide: llama.cpp falls back to legacy types)
these tests build a "tiny but 256 wide" decoder whose tensors really become Q4_K/Q5_K/Q6_K.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import struct

import numpy as np
import pytest

from gamma_rt.cli import main
from gamma_rt.errors import BundleError, GammaError
from gamma_rt.manifest import Manifest
from gamma_rt.quant.gguf_quant import load_imatrix, quantize
from gamma_rt.runtime.decoder import DecoderSession

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def wide_bundle(tmp_path_factory):
    """A tiny-preset model whose LLM is 256 wide (ffn 512, 4 heads of 64), exported to an F32 GGUF."""
    from gamma_rt.export.families.gamma.checkpoint import write_random_checkpoint
    from gamma_rt.export.families.gamma.config import GammaConfig
    from gamma_rt.export.gguf_export import export_gguf
    from gamma_rt.export.families.gamma.tokenizer import write_tokenizer

    cfg = GammaConfig.tiny()
    cfg.llm = dataclasses.replace(cfg.llm, hidden_size=256, intermediate_size=512, head_dim=64)
    ckpt = tmp_path_factory.mktemp("wide_checkpoint")
    write_random_checkpoint(cfg, ckpt, seed=1, std=0.05)
    write_tokenizer(ckpt, cfg)
    bundle = tmp_path_factory.mktemp("wide_bundle")
    export_gguf(ckpt, bundle, "f32", progress=lambda items, **_: items)
    return bundle


@pytest.fixture()
def bundle_copy(tiny_bundle_gguf, tmp_path):
    shutil.copytree(tiny_bundle_gguf, tmp_path / "bundle")
    return tmp_path / "bundle"


def tensor_types(path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}


def prompt_logits(path) -> np.ndarray:
    with DecoderSession(path, n_ctx=256, kv_type="f32") as s:
        s.eval_tokens(s.tokenize("<|im_start|>user\n<|audio_start|>"))
        s.eval_embeddings(np.random.default_rng(0).standard_normal((8, s.n_embd)).astype(np.float32))
        s.eval_tokens(s.tokenize("<|audio_end|>\nWhat genre is this?<|im_end|>\n<|im_start|>assistant\n"))
        return s.logits()


@pytest.mark.parametrize("qtype, expected", [("Q4_K_M", {"Q4_K", "Q6_K"}), ("Q5_K_M", {"Q5_K", "Q6_K"}), ("Q6_K", {"Q6_K"})])
def test_256_wide_rows_become_real_k_quants_recorded_in_the_manifest(wide_bundle, qtype, expected):
    path = quantize(wide_bundle, qtype)
    types = tensor_types(path)
    assert expected <= set(types.values())
    assert types["blk.0.attn_norm.weight"] == "F32"
    component = Manifest.load(wide_bundle).components[f"decoder.{qtype.lower()}"]
    assert component.file == path.name and component.precision == qtype.lower()
    assert component.extra["n_embd"] == 256 and component.extra["quantized_from"] == "decoder-f32.gguf"
    assert path.stat().st_size < (wide_bundle / "decoder-f32.gguf").stat().st_size / 4
    assert np.isfinite(prompt_logits(path)).all()


def test_more_bits_give_logits_closer_to_f32(wide_bundle, tmp_path):
    ref = prompt_logits(wide_bundle / "decoder-f32.gguf")
    errors = {}
    for qtype in ("Q8_0", "Q6_K", "Q4_K_M"):
        got = prompt_logits(quantize(wide_bundle / "decoder-f32.gguf", qtype, out=tmp_path / f"{qtype}.gguf"))
        errors[qtype] = float(np.abs(got - ref).max() / np.abs(ref).max())
    assert errors["Q8_0"] < errors["Q6_K"] < errors["Q4_K_M"] < 0.5, errors
    assert errors["Q8_0"] < 0.05, errors  # llama.cpp also rounds the activations to 8 bits in Q8_0 matmuls


def test_64_wide_rows_fall_back_to_legacy_types_and_still_run(bundle_copy):
    path = quantize(bundle_copy, "Q4_K_M")
    types = set(tensor_types(path).values())
    assert not {"Q4_K", "Q5_K", "Q6_K"} & types
    assert {"Q5_0", "Q8_0"} & types  # llama.cpp's fallbacks for Q4_K and Q6_K
    assert np.isfinite(prompt_logits(path)).all()


def test_a_gguf_file_input_writes_beside_it_or_to_out(tiny_bundle_gguf, tmp_path):
    src = tmp_path / "model.gguf"
    shutil.copy(tiny_bundle_gguf / "decoder-f16.gguf", src)
    assert quantize(src, "q8_0") == tmp_path / "model-q8_0.gguf"
    assert main(["quantize", "gguf", str(src), "--type", "q4_0", "--out", str(tmp_path / "small.gguf")]) == 0
    assert "Q4_0" in tensor_types(tmp_path / "small.gguf").values()


def write_gguf_imatrix(path, importance: dict[str, np.ndarray], count: float = 10.0) -> None:
    """An imatrix in llama-imatrix's GGUF layout: per tensor, summed squared activations and a call count."""
    w = gguf.GGUFWriter(path, arch="")
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", ["synthetic"])
    w.add_uint32("imatrix.chunk_count", int(count))
    w.add_uint32("imatrix.chunk_size", 512)
    for name, values in importance.items():
        w.add_tensor(f"{name}.in_sum2", (values * count).astype(np.float32)[None, :])
        w.add_tensor(f"{name}.counts", np.array([[count]], np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def weighted_error(original: np.ndarray, quantized_path, name: str, importance: np.ndarray) -> float:
    t = next(t for t in gguf.GGUFReader(quantized_path).tensors if t.name == name)
    restored = gguf.quants.dequantize(t.data, t.tensor_type).reshape(original.shape)
    return float(np.sum(importance[None, :] * (original - restored) ** 2))


def test_imatrix_lowers_the_error_on_important_columns(wide_bundle, tmp_path):
    reader = gguf.GGUFReader(wide_bundle / "decoder-f32.gguf")
    weights = {t.name: np.array(t.data) for t in reader.tensors if t.name.startswith("blk.") and t.data.ndim == 2}
    rng = np.random.default_rng(5)
    # a few columns (input channels) carry almost all the activation energy, as outlier channels do in real LLMs
    importance = {n: np.where(rng.random(w.shape[1]) < 0.05, 1000.0, 0.01).astype(np.float32) for n, w in weights.items()}
    write_gguf_imatrix(tmp_path / "imatrix.gguf", importance)
    plain = quantize(wide_bundle / "decoder-f32.gguf", "Q4_K_M", out=tmp_path / "plain.gguf")
    guided = quantize(wide_bundle / "decoder-f32.gguf", "Q4_K_M", tmp_path / "imatrix.gguf", out=tmp_path / "guided.gguf")
    name = "blk.0.ffn_gate.weight"
    assert tensor_types(guided)[name] == "Q4_K"
    assert weighted_error(weights[name], guided, name, importance[name]) < 0.8 * weighted_error(
        weights[name], plain, name, importance[name]
    )


def test_gguf_and_legacy_imatrix_files_load_to_the_same_means(tmp_path):
    values = {"blk.0.attn_q.weight": np.arange(1, 9, dtype=np.float32), "output.weight": np.full(4, 2.0, np.float32)}
    write_gguf_imatrix(tmp_path / "m.gguf", values, count=4)
    legacy = struct.pack("<i", len(values))
    for name, v in values.items():
        legacy += struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", 4, v.size) + (v * 4).tobytes()
    (tmp_path / "m.dat").write_bytes(legacy + struct.pack("<i", 10))
    for loaded in (load_imatrix(tmp_path / "m.gguf"), load_imatrix(tmp_path / "m.dat")):
        assert set(loaded) == set(values)
        for name, v in values.items():
            np.testing.assert_allclose(loaded[name], v)


def test_fidelity_reports_f32_exact_and_q8_0_close(bundle_copy, tmp_path, capsys):
    quantize(bundle_copy, "Q8_0")
    assert main(["quantize", "fidelity", str(bundle_copy), "--out", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    assert "| decoder.q8_0 | q8_0 |" in out and "top-1 agreement" in out
    record = json.loads((tmp_path / "results" / "gguf_fidelity-tiny.json").read_text())
    rows = {r["variant"]: r for r in record["results"]}
    assert rows["decoder"]["top1_agreement"] == 1.0 and rows["decoder"]["mean_kl"] == 0.0
    assert 0 < rows["decoder.f16"]["mean_kl"] < rows["decoder.q8_0"]["mean_kl"] < 0.05
    assert rows["decoder.q8_0"]["top1_agreement"] >= 0.75
    assert record["machine"]["versions"] and record["inputs"]["audio_tokens"] > 0


def test_bad_quantize_inputs_are_one_line_errors(tiny_bundle_gguf, tmp_path, capsys):
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    with pytest.raises(BundleError, match="notes.gguf: not a valid GGUF file"):
        quantize(text, "Q4_0")
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"\xff\xff\xff\x7f garbage")
    with pytest.raises(GammaError, match="junk.dat: not a readable imatrix file"):
        quantize(tiny_bundle_gguf / "decoder-f32.gguf", "Q4_0", junk, out=tmp_path / "x.gguf")
    empty = tmp_path / "empty_bundle"
    empty.mkdir()
    m = Manifest.read(tiny_bundle_gguf)
    m.components = {}
    m.write(empty)
    assert main(["quantize", "gguf", str(empty), "--type", "Q8_0"]) == 2
    err = capsys.readouterr().err
    assert "no f32/f16/bf16 decoder component" in err and err.count("\n") == 1
