"""Music Flamingo and Audio Flamingo 3 bundles compute what transformers' own classes compute.

The oracle is MusicFlamingoForConditionalGeneration / AudioFlamingo3ForConditionalGeneration with their
processor, loaded from tiny folders that transformers' save_pretrained wrote (tests/flamingo_fixtures.py).
The audio is 70 s: three 30 s windows, the last one partial, so the per-window mask and RoTE's window
index 0, 1, 2 are all exercised.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from flamingo_fixtures import *  # noqa: F401,F403
from flamingo_fixtures import QUIET, chat_inputs, flamingo_reference
from gamma_rt.manifest import Manifest
from gamma_rt.runtime.decoder import DecoderSession

ort = pytest.importorskip("onnxruntime")
FAMILIES = ["mf", "af3"]


@pytest.fixture(scope="module")
def song():
    """70 s of noisy harmonic audio at 16 kHz mono (float32)."""
    rng = np.random.default_rng(3)
    t = np.arange(70 * 16000) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 0.5 * t) + 0.05 * rng.standard_normal(t.size)
            ).astype(np.float32)


@pytest.fixture(scope="module", params=FAMILIES)
def case(request, song):
    """(folder, bundle, model, processor, processor inputs, reference audio embeddings (n_tokens, n_embd))."""
    folder = request.getfixturevalue(f"{request.param}_folder")
    bundle = request.getfixturevalue(f"{request.param}_bundle")
    model, processor = flamingo_reference(folder)
    inputs = chat_inputs(processor, song)
    kwargs = {"input_ids": inputs["input_ids"]} if request.param == "mf" else {}
    with torch.no_grad():
        ref = model.get_audio_features(inputs["input_features"], inputs["input_features_mask"], **kwargs)
    return folder, bundle, model, processor, inputs, ref.pooler_output.numpy()


def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def run_chain(bundle, inputs, precision: str = "fp32") -> np.ndarray:
    """encoder then projector over all windows in one batch; the valid tokens of each window, concatenated."""
    suffix = "" if precision == "fp32" else ".fp16"
    encoder = ort.InferenceSession(str(bundle / f"encoder{suffix}.onnx"))
    projector = ort.InferenceSession(str(bundle / f"projector{suffix}.onnx"))
    mel = inputs["input_features"].numpy()
    mask = inputs["input_features_mask"].numpy().astype(np.int64)
    hidden = encoder.run(None, {"mel": mel, "mel_mask": mask})[0]
    feeds = {"hidden": hidden}
    if "window_index" in [i.name for i in projector.get_inputs()]:
        feeds["window_index"] = np.arange(len(mel), dtype=np.int64)
    embeddings = projector.run(None, feeds)[0]
    conv = (mask.sum(-1) - 1) // 2 + 1
    tokens = (conv - 2) // 2 + 1
    return np.concatenate([embeddings[k, : tokens[k]] for k in range(len(mel))])


def test_three_windows_with_a_partial_last(case):
    inputs = case[4]
    assert inputs["input_features"].shape == (3, 128, 3000)
    assert inputs["input_features_mask"].sum(-1).tolist() == [3000, 3000, 1000]


def test_fp32_audio_embeddings_match_transformers_get_audio_features(case):
    _, bundle, _, _, inputs, ref = case
    got = run_chain(bundle, inputs)
    assert got.shape == ref.shape == (750 + 750 + 250, 64)
    assert relative_error(got, ref) <= 1e-4


def test_fp16_audio_embeddings_match_transformers_get_audio_features(case, tmp_path):
    folder, bundle, _, _, inputs, ref = case
    from gamma_rt.export.onnx_export import export_onnx

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    export_onnx(folder, copy, precision="fp16")
    assert relative_error(run_chain(copy, inputs, "fp16"), ref) <= 1e-2


def test_encoder_attention_with_padding_mask_is_fused(case):
    bundle = case[1]
    fusions = Manifest.read(bundle).components["encoder"].extra["fusions"]
    assert fusions.get("MultiHeadAttention") == 2  # one per layer of the tiny encoder


def test_rote_depends_on_the_window_index(mf_bundle):
    projector = ort.InferenceSession(str(mf_bundle / "projector.onnx"))
    hidden = np.random.default_rng(0).standard_normal((1, 750, 64)).astype(np.float32)
    a, b = (projector.run(None, {"hidden": hidden, "window_index": np.array([k])})[0] for k in (0, 5))
    assert relative_error(a, b) > 1e-2


def decoder_prompt(inputs, audio_token_id: int) -> tuple[list[int], int, list[int]]:
    """input_ids split around the run of audio placeholders: (before, how many, after)."""
    ids = inputs["input_ids"][0].tolist()
    first, last = ids.index(audio_token_id), len(ids) - ids[::-1].index(audio_token_id)
    return ids[:first], last - first, ids[last:]


def test_first_answer_logits_through_the_f32_gguf_match_transformers(case):
    _, bundle, model, _, inputs, ref = case
    with torch.no_grad():
        expected = model(**inputs).logits[0, -1].numpy()
    pre, n, post = decoder_prompt(inputs, model.config.audio_token_id)
    assert n == len(ref)
    with DecoderSession(bundle / "decoder-f32.gguf", n_ctx=4096) as s:
        s.eval_tokens(pre)
        s.eval_embeddings(ref)
        s.eval_tokens(post)
        got = s.logits()
    assert relative_error(got, expected) <= 1e-4


def test_text_only_logits_and_24_greedy_tokens_equal_transformers(case):
    _, bundle, model, processor, _, _ = case
    lm = model.model.language_model if hasattr(model.model, "language_model") else model.language_model
    ids = processor.tokenizer("<|im_start|>user\nDescribe a slow jazz ballad.<|im_end|>\n<|im_start|>assistant\n")[
        "input_ids"]
    ref_tokens, ref_logits, x = [], [], list(ids)
    with torch.no_grad():
        for _ in range(24):
            logits = model.lm_head(lm(input_ids=torch.tensor([x])).last_hidden_state)[0, -1].numpy()
            ref_logits.append(logits)
            ref_tokens.append(int(np.argmax(logits)))
            x.append(ref_tokens[-1])
    with DecoderSession(bundle / "decoder-f32.gguf", n_ctx=512) as s:
        assert s.tokenize(processor.tokenizer.decode(ids)) == ids
        s.eval_tokens(ids)
        got_tokens = []
        for i in range(24):
            logits = s.logits()
            assert relative_error(logits, ref_logits[i]) <= 1e-4
            got_tokens.append(int(np.argmax(logits)))
            s.eval_tokens([got_tokens[-1]])
    assert got_tokens == ref_tokens


def test_manifest_sections_follow_the_contract(mf_bundle, af3_bundle, mf_folder):
    mf, af3 = Manifest.read(mf_bundle), Manifest.read(af3_bundle)
    assert mf.audio.token_count.name == af3.audio.token_count.name == "conv_pool"
    assert (mf.audio.max_seconds, af3.audio.max_seconds) == (1200, 600)
    assert (mf.audio.n_mels, mf.audio.window_frames, mf.audio.tokens_per_window) == (128, 3000, 750)
    written = json.loads((mf_bundle / "manifest.json").read_text())["audio"]["chain"]
    assert written == [
        {"component": "encoder", "inputs": {"mel": "mel", "mel_mask": "mel_mask"}, "outputs": {"hidden": "hidden"}},
        {"component": "projector", "inputs": {"hidden": "hidden", "window_index": "window_index"},
         "outputs": {"embeddings": "embeddings"}},
    ]
    assert mf.audio.components == af3.audio.components == ("encoder", "projector")
    assert "window_index" not in af3.audio.chain[1].inputs
    assert mf.prompt["chat_template"] == (mf_folder / "chat_template.jinja").read_text()
    assert (mf.prompt["audio_start"], mf.prompt["audio_end"]) == ("<|sound_bos|>", "<|sound_eos|>")
    assert (af3.prompt["audio_start"], af3.prompt["audio_end"]) == ("", "")
    assert mf.prompt["audio_placeholder"] == "<sound>" and mf.prompt["stop"] == ["<|im_end|>", "<|endoftext|>"]
    assert (mf.llm.arch, mf.llm.n_embd, mf.llm.n_vocab, mf.llm.n_layer) == ("qwen2", 64, 1024, 2)
    assert (mf.source["family"], af3.source["family"]) == ("musicflamingo", "audioflamingo3")
    assert mf.components["projector"].inputs[1].name == "window_index"


def test_gguf_is_qwen2_with_biases_and_the_folders_template(mf_bundle, mf_folder):
    import gguf

    reader = gguf.GGUFReader(mf_bundle / "decoder-f32.gguf")
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.tokens")
              and not k.startswith("tokenizer.ggml.merges") and not k.startswith("tokenizer.ggml.token_type")}
    assert fields["general.architecture"] == "qwen2"
    assert fields["qwen2.rope.freq_base"] == 1e6
    assert fields["tokenizer.ggml.pre"] == "qwen2"
    assert fields["tokenizer.chat_template"] == (mf_folder / "chat_template.jinja").read_text()
    names = {t.name for t in reader.tensors}
    assert {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.0.attn_v.bias"} <= names
    config = json.loads((mf_folder / "config.json").read_text())
    assert fields["tokenizer.ggml.eos_token_id"] == config["text_config"]["eos_token_id"]


def test_onnx_and_gguf_exports_share_one_bundle(mf_folder, tmp_path):
    from gamma_rt.export.gguf_export import export_gguf
    from gamma_rt.export.onnx_export import export_onnx

    export_gguf(mf_folder, tmp_path / "b", "f16", **QUIET)
    export_onnx(mf_folder, tmp_path / "b")
    m = Manifest.load(tmp_path / "b")
    assert {"decoder.f16", "encoder", "projector"} <= set(m.components)
