"""``gamma-rt plan`` arithmetic (gamma_rt/plan.py) against numbers worked out by hand for the tiny GaMMA and
Music Flamingo bundles and the full preset."""

from __future__ import annotations

import shutil

import pytest

from gamma_rt.cli import main
from gamma_rt.errors import GammaError
from gamma_rt.export.families.gamma.family import COMPONENTS as GAMMA_COMPONENTS
from gamma_rt.manifest import Manifest
from gamma_rt.plan import (GB, budget, context_tokens, device_named, kv_cache_bytes, plan, sizes_from_bundle,
                           sizes_from_preset)

from flamingo_fixtures import mf_bundle, mf_folder  # noqa: F401  (session fixtures)


@pytest.fixture(scope="module")
def bundle(tiny_bundle_onnx, tiny_checkpoint, tmp_path_factory):
    """Tiny fp32 audio graphs and an F16 decoder in one bundle."""
    from gamma_rt.export.gguf_export import export_gguf

    folder = tmp_path_factory.mktemp("plan") / "bundle"
    shutil.copytree(tiny_bundle_onnx, folder)
    export_gguf(tiny_checkpoint, folder, "f16", progress=lambda items, **_: items)
    return folder


def test_tiny_bundle_sizes_come_from_the_manifest_and_gguf_header(bundle):
    s = sizes_from_bundle(bundle)
    m = Manifest.load(bundle)
    assert s.audio_params == sum(m.component(n).bytes for n in GAMMA_COMPONENTS) / 4
    assert (s.enc_tokens, s.d_audio, s.n_encoders, s.tokens_per_second) == (1500, 64, 2, 25.0)
    assert (s.n_layer, s.n_kv_heads, s.head_dim, s.n_vocab) == (2, 2, 16, 1024)
    f16 = m.component("decoder.f16").bytes
    assert s.gguf_bytes["f16"] == f16 and s.gguf_bytes["q4_k_m"] == pytest.approx(f16 * 4.89 / 16)


def test_tiny_bundle_budget_parts_by_hand(bundle):
    s = sizes_from_bundle(bundle)
    assert context_tokens(s, 30) == 750 + 256 + 512
    # K and V x 2 layers x 1518 positions x 2 KV heads x 16 dims x 2 bytes
    assert kv_cache_bytes(s, 30) == 2 * 2 * 1518 * 2 * 16 * 2 == 388_608
    parts = budget(s, "fp16", "f16", 30)
    # per expert: 1 head x 1500^2 scores + 6 hidden copies of 1500x64 + a 1500x256 FFN, 2 bytes each; 2 experts
    assert parts["audio_activations"] == 2 * (1500**2 * 2 + 6 * 1500 * 64 * 2 + 1500 * 256 * 2) == 12_840_000
    assert parts["audio_weights"] == s.audio_params * 2
    assert parts["overhead"] == 1e9 + 1024 * 512 * 4
    assert parts["total"] == pytest.approx(sum(v for k, v in parts.items() if k != "total"))


def test_full_preset_decoder_sizes_match_the_reference_figures():
    s = sizes_from_preset("full")
    # ../shared/REFERENCE.md section 2: Qwen3-8B weights F16 16.4 GB, Q8_0 8.7 GB, Q4_K_M 5.0 GB
    assert s.gguf_bytes["f16"] / GB == pytest.approx(16.4, rel=0.01)
    assert s.gguf_bytes["q8_0"] / GB == pytest.approx(8.7, rel=0.01)
    assert s.gguf_bytes["q4_k_m"] / GB == pytest.approx(5.0, rel=0.01)
    # two Whisper-large-v3 encoders (~637 M each) + fusion + projector
    assert s.audio_params / 1e9 == pytest.approx(1.32, rel=0.01)
    # 10 min of audio: 15000 audio tokens + prompt + answer; 36 layers x 8 KV heads x 128 dims x f16
    assert kv_cache_bytes(s, 600) == 2 * 36 * 15768 * 8 * 128 * 2


@pytest.mark.parametrize("text,name,budget_gb", [
    ("Orin Nano 8GB", "Jetson Orin Nano 8GB", (8 - 1.5) * 0.9),
    ("orin-nx 16gb", "Jetson Orin NX 16GB", (16 - 1.5) * 0.9),
    ("AGX Orin 64GB", "Jetson AGX Orin 64GB", (64 - 2) * 0.9),
    ("24GB", "GPU with 24 GB", (24 - 0.5) * 0.9),
])
def test_devices_are_named_or_given_in_gb(text, name, budget_gb):
    d = device_named(text)
    assert d.name == name and d.budget / GB == pytest.approx(budget_gb)


def test_unknown_device_lists_the_known_ones():
    with pytest.raises(GammaError, match="Orin Nano 8GB.*<N>GB"):
        device_named("Xavier")


def test_recommendation_is_the_best_quality_that_fits():
    s = sizes_from_preset("full")
    _, best = plan(s, device_named("AGX Orin 64GB"), 600)
    assert (best["audio"], best["decoder"]) == ("fp16", "f16")
    rows, best = plan(s, device_named("Orin NX 16GB"), 600)
    assert (best["audio"], best["decoder"]) == ("fp16", "q5_k_m")
    assert not next(r for r in rows if r["decoder"] == "q6_k")["fits"]


def test_full_model_on_orin_nano_says_nothing_fits(capsys):
    assert main(["plan", "--preset", "full", "--device", "Orin Nano 8GB"]) == 1
    out = capsys.readouterr().out
    assert "nothing fits on Jetson Orin Nano 8GB" in out and "recommended" not in out


def test_plan_cli_prints_the_table_and_recommendation_for_a_bundle(bundle, capsys):
    assert main(["plan", str(bundle), "--device", "8GB", "--seconds", "30"]) == 0
    out = capsys.readouterr().out
    assert "1518 tokens of context" in out and "recommended: audio engines fp16, decoder F16" in out


def test_plan_needs_exactly_one_of_bundle_or_preset(capsys):
    assert main(["plan", "--device", "8GB"]) == 2
    assert "give a BUNDLE folder or --preset" in capsys.readouterr().err


def test_flamingo_bundle_sizes_come_from_its_chain_and_qwen2_header(mf_bundle):
    s = sizes_from_bundle(mf_bundle)
    m = Manifest.load(mf_bundle)
    assert m.audio.components == ("encoder", "projector") and m.llm.arch == "qwen2"
    assert s.audio_params == (m.component("encoder").bytes + m.component("projector").bytes) / 4
    # one encoder that attends over 1500 positions and pools to 750 tokens inside its graph
    assert (s.enc_tokens, s.d_audio, s.n_encoders, s.tokens_per_second) == (1500, 64, 1, 25.0)
    # qwen2.* keys: 2 layers, 4 heads over n_embd 64 (no key_length key) -> head_dim 16, 2 KV heads
    assert (s.n_layer, s.n_kv_heads, s.head_dim, s.n_vocab) == (2, 2, 16, 1024)
    assert s.gguf_bytes["f32"] == m.component("decoder").bytes
    assert s.gguf_bytes["f16"] == pytest.approx(m.component("decoder").bytes / 2)


def test_flamingo_budget_counts_one_encoder_and_caps_the_context_at_max_seconds(mf_bundle):
    s = sizes_from_bundle(mf_bundle)
    assert s.max_seconds == 1200
    # 1200 s at 25 tokens/s, however long the song: the runtime cuts the rest
    assert context_tokens(s, 3600) == context_tokens(s, 1200) == 30000 + 256 + 512
    parts = budget(s, "fp16", "f16", 30)
    assert parts["audio_activations"] == 1500**2 * 2 + 6 * 1500 * 64 * 2 + 1500 * 256 * 2 == 6_420_000
    assert parts["kv_cache"] == 2 * 2 * 1518 * 2 * 16 * 2


def test_plan_cli_reads_a_flamingo_bundle(mf_bundle, capsys):
    assert main(["plan", str(mf_bundle), "--device", "Orin Nano 8GB", "--seconds", "240"]) == 0
    out = capsys.readouterr().out
    assert "6768 tokens of context" in out and "recommended: audio engines fp16, decoder F16" in out


def test_a_preset_plan_asks_the_family_and_a_family_without_one_says_so():
    assert sizes_from_preset("full", "gamma") == sizes_from_preset("full")
    with pytest.raises(GammaError, match="plan --preset knows no mufun presets; export a bundle and plan that"):
        sizes_from_preset("full", "mufun")
    with pytest.raises(GammaError, match="unknown family 'nope'"):
        sizes_from_preset("full", "nope")
