"""Qwen3 -> GGUF: the file llama.cpp loads computes what transformers' Qwen3ForCausalLM computes.

The oracle is transformers with the same weights, fed inputs_embeds made of token embeddings with the audio
embeddings at the placeholder positions; llama.cpp gets the same prompt as tokens + embeddings.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from gamma_rt.cli import main
from gamma_rt.errors import BundleError, CheckpointError
from gamma_rt.export.families.gamma.checkpoint import Checkpoint
from gamma_rt.export.gguf_export import export_gguf
from gamma_rt.manifest import Component, Manifest, TensorSpec
from gamma_rt.runtime.decoder import DecoderSession

gguf = pytest.importorskip("gguf")

QUIET = dict(progress=lambda items, **_: items)
PRE = "<|im_start|>user\n<|audio_start|>"
POST = "<|audio_end|>\nWhat genre is this song? Describe the tempo.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    """(transformers Qwen3ForCausalLM, HF tokenizer) of the tiny checkpoint."""
    from transformers import AutoTokenizer

    return Checkpoint(tiny_checkpoint).model().llm, AutoTokenizer.from_pretrained(tiny_checkpoint)


@pytest.fixture(scope="module")
def audio():
    """Ten audio embeddings, as the projector would give them: (10, 64) float32."""
    return np.random.default_rng(7).standard_normal((10, 64)).astype(np.float32)


def reference_logits(llm, tok, audio: np.ndarray, continuation: list[int] = ()) -> np.ndarray:
    """transformers' next-token logits for PRE + audio + POST + continuation."""
    pre, post = tok(PRE)["input_ids"], tok(POST)["input_ids"] + list(continuation)
    embed = llm.model.embed_tokens
    with torch.no_grad():
        x = torch.cat([embed(torch.tensor(pre)), torch.from_numpy(audio), embed(torch.tensor(post))])[None]
        return llm(inputs_embeds=x).logits[0, -1].numpy()


def llama_prompt(session: DecoderSession, audio: np.ndarray) -> None:
    session.eval_tokens(session.tokenize(PRE))
    session.eval_embeddings(audio)
    session.eval_tokens(session.tokenize(POST))


def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("file, bound", [("decoder-f32.gguf", 1e-4), ("decoder-f16.gguf", 1e-2)])
def test_logits_with_audio_embeddings_match_transformers(tiny_bundle_gguf, reference, audio, file, bound):
    llm, tok = reference
    ref = reference_logits(llm, tok, audio)
    with DecoderSession(tiny_bundle_gguf / file, n_ctx=256) as s:
        llama_prompt(s, audio)
        got = s.logits()
    assert got.shape == ref.shape == (1024,)
    assert relative_error(got, ref) <= bound


def greedy_tokens(session: DecoderSession, n: int) -> list[int]:
    """n argmax tokens, end-of-generation tokens included, so the comparison always spans n positions."""
    out = []
    for _ in range(n):
        out.append(int(np.argmax(session.logits())))
        session.eval_tokens([out[-1]])
    return out


def test_greedy_32_tokens_identical_for_f32_f16_and_transformers(tiny_bundle_gguf, reference, audio):
    runs = {}
    for file in ("decoder-f32.gguf", "decoder-f16.gguf"):
        with DecoderSession(tiny_bundle_gguf / file, n_ctx=256) as s:
            llama_prompt(s, audio)
            runs[file] = greedy_tokens(s, 32)
    llm, tok = reference
    hf = []
    for _ in range(32):
        hf.append(int(np.argmax(reference_logits(llm, tok, audio, hf))))
    assert runs["decoder-f32.gguf"] == runs["decoder-f16.gguf"] == hf


def test_llama_cpp_tokenizes_like_the_hf_tokenizer(tiny_bundle_gguf, reference):
    _, tok = reference
    texts = [
        "What genre is this song?",
        "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
        "<|audio_start|><|audio_pad|><|audio_pad|><|audio_end|>",
        "Tempo: 128 BPM, 4/4 time; key B\u266d major.  Double  spaces\n\n\ttabs",
        "Café déjà vu — naïve 日本語 🎵 it's we'll THEY'RE",
        "12345 3.14159 0:45-1:50",
    ]
    with DecoderSession(tiny_bundle_gguf / "decoder-f32.gguf", n_ctx=256) as s:
        for text in texts:
            ids = s.tokenize(text)
            assert ids == tok(text)["input_ids"], text
            assert s.detokenize(ids, special=True) == text


def test_gguf_carries_qwen3_hyperparameters_and_full_tokenizer(tiny_bundle_gguf, tiny_checkpoint):
    reader = gguf.GGUFReader(tiny_bundle_gguf / "decoder-f32.gguf")
    field = {k: f.contents() for k, f in reader.fields.items()}
    assert field["general.architecture"] == "qwen3"
    assert field["qwen3.embedding_length"] == 64
    assert field["qwen3.block_count"] == 2
    assert field["qwen3.attention.head_count"] == 4 and field["qwen3.attention.head_count_kv"] == 2
    assert field["qwen3.attention.key_length"] == 16
    assert field["qwen3.context_length"] == 32768
    assert field["qwen3.rope.freq_base"] == 1e6
    assert field["tokenizer.ggml.model"] == "gpt2" and field["tokenizer.ggml.pre"] == "qwen2"
    tokens, types = field["tokenizer.ggml.tokens"], field["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == 1024
    vocab = json.loads((tiny_checkpoint / "tokenizer.json").read_text())
    n_used = len(vocab["model"]["vocab"]) + len(vocab["added_tokens"])
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_start|>", "<|audio_pad|>"):
        assert types[tokens.index(special)] == gguf.TokenType.CONTROL
    assert tokens[n_used:] == [f"[PAD{i}]" for i in range(n_used, 1024)]
    assert set(types[n_used:]) == {gguf.TokenType.UNUSED}
    assert field["tokenizer.ggml.eos_token_id"] == tokens.index("<|im_end|>")
    assert field["tokenizer.ggml.padding_token_id"] == tokens.index("<|endoftext|>")
    assert len(field["tokenizer.ggml.merges"]) == len(vocab["model"]["merges"])
    assert "<|im_start|>" in field["tokenizer.chat_template"]
    names = {t.name: t.tensor_type.name for t in reader.tensors}
    assert names["blk.1.attn_k_norm.weight"] == "F32" and names["token_embd.weight"] == "F32"


def test_manifest_records_each_type_with_hash_and_width(tiny_bundle_gguf):
    m = Manifest.load(tiny_bundle_gguf)  # verifies sizes and sha256 of every file
    assert m.components["decoder"].file == "decoder-f32.gguf"
    f16 = m.components["decoder.f16"]
    assert (f16.kind, f16.precision, f16.file) == ("gguf", "f16", "decoder-f16.gguf")
    assert f16.extra == {"arch": "qwen3", "n_embd": 64, "n_vocab": 1024, "n_layer": 2, "n_ctx_train": 32768, "type": "f16"}


def test_projector_width_other_than_n_embd_is_refused(tiny_bundle_gguf, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_gguf, bundle)
    m = Manifest.read(bundle)
    proj = bundle / "projector.onnx"
    proj.write_bytes(b"a projector from another model")
    m.add_file(bundle, "projector", Component(
        kind="onnx", file="projector.onnx", sha256="", bytes=0, precision="fp32",
        outputs=[TensorSpec("embeddings", ["batch", "tokens", 96], "float32")],
    ))
    m.write(bundle)
    with pytest.raises(BundleError, match=r"components\.decoder\S*\.extra\.n_embd is 64 .* 96-wide"):
        Manifest.load(bundle)


@pytest.mark.parametrize("gguf_type, weight_type", [("bf16", "BF16"), ("q8_0", "Q8_0")])
def test_bf16_and_q8_0_exports_load_and_stay_close(tiny_checkpoint, tmp_path, reference, audio, gguf_type, weight_type):
    export_gguf(tiny_checkpoint, tmp_path, gguf_type, **QUIET)
    path = tmp_path / f"decoder-{gguf_type}.gguf"
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert types["blk.0.ffn_up.weight"] == weight_type and types["output_norm.weight"] == "F32"
    llm, tok = reference
    with DecoderSession(path, n_ctx=256) as s:
        llama_prompt(s, audio)
        assert relative_error(s.logits(), reference_logits(llm, tok, audio)) <= 5e-2


def test_plain_qwen3_folder_converts_with_audio_tokens_added(tiny_checkpoint, tmp_path, reference, audio):
    llm, tok = reference
    stock = tmp_path / "qwen3"
    llm.save_pretrained(stock)
    tokenizer = json.loads((tiny_checkpoint / "tokenizer.json").read_text())
    tokenizer["added_tokens"] = [t for t in tokenizer["added_tokens"] if "audio" not in t["content"]]
    (stock / "tokenizer.json").write_text(json.dumps(tokenizer))
    shutil.copy(tiny_checkpoint / "tokenizer_config.json", stock)
    export_gguf(stock, tmp_path / "bundle", "f32", **QUIET)
    with DecoderSession(tmp_path / "bundle" / "decoder-f32.gguf", n_ctx=256) as s:
        assert len(s.tokenize("<|audio_start|><|audio_pad|><|audio_end|>")) == 3
        llama_prompt(s, audio)
        assert relative_error(s.logits(), reference_logits(llm, tok, audio)) <= 1e-4


def test_cli_exports_and_reports_one_line(tiny_checkpoint, tmp_path, capsys):
    assert main(["export", "gguf", str(tiny_checkpoint), "--out", str(tmp_path / "b"), "--type", "f16"]) == 0
    assert "decoder-f16.gguf" in capsys.readouterr().out
    assert "decoder.f16" in Manifest.load(tmp_path / "b").components


def test_non_qwen3_checkpoint_is_refused_naming_the_field(tmp_path, capsys):
    folder = tmp_path / "llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    with pytest.raises(CheckpointError, match=r"architectures.*LlamaForCausalLM.*gamma-rt knows.*musicflamingo"):
        export_gguf(folder, tmp_path / "bundle", **QUIET)
    assert main(["export", "gguf", str(folder), "--out", str(tmp_path / "bundle")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "config.json" in err and "Traceback" not in err


def test_checkpoint_without_tokenizer_is_refused(tiny_checkpoint, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"tokenizer\.json: missing"):
        export_gguf(folder, tmp_path / "bundle", **QUIET)
    assert not (tmp_path / "bundle" / "decoder-f32.gguf").exists()


def test_tensor_outside_the_qwen3_name_table_is_refused(tiny_checkpoint, tmp_path):
    from safetensors.torch import save_file

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    save_file({"llm.model.vision_tower.weight": torch.zeros(4, 4)}, str(folder / "extra.safetensors"))
    with pytest.raises(CheckpointError, match=r"llm\.model\.vision_tower\.weight has no name in gguf's qwen3 table"):
        export_gguf(folder, tmp_path / "bundle", **QUIET)


def test_tokenizer_that_cannot_fit_vocab_size_is_refused(tmp_path):
    import dataclasses

    from gamma_rt.export.families.gamma.config import GammaConfig
    from gamma_rt.export.families.gamma.tokenizer import write_tokenizer

    cfg = GammaConfig.tiny()
    cfg.llm = dataclasses.replace(cfg.llm, vocab_size=200)  # fewer ids than the 256 byte tokens alone
    with pytest.raises(CheckpointError, match=r"token id \d+ does not fit field llm.vocab_size 200"):
        write_tokenizer(tmp_path, cfg)


def test_source_id_equals_the_checkpoint_hash_so_onnx_and_gguf_share_a_bundle(tiny_checkpoint, tmp_path):
    from safetensors.torch import save_file

    from gamma_rt.export.families import detect

    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, folder)
    # a second shard holding only audio-side weights still identifies the checkpoint
    save_file({"fusion.extra_scale": torch.ones(3)}, str(folder / "model-extra.safetensors"))
    assert detect(folder).hash() == Checkpoint(folder).hash()
