"""The manifest as the runtime reads it: typed sections, untrusted file entries, the audio chain, the chat
template prompt, the token-count rules and the audio length limit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from gamma_rt.errors import BundleError
from gamma_rt.audio_chain import SCHEMA_1_CHAIN
from gamma_rt.manifest import AudioSection, Component, Manifest
from gamma_rt.runtime.prompt import TemplatePrompt, prompt_from_manifest
from gamma_rt.runtime.windows import Window

# A ChatML template of the kind Qwen2 checkpoints carry, where an audio content item renders "<sound>".
CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are helpful.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'audio' %}<sound>{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TEMPLATE_PROMPT = {"chat_template": CHATML, "audio_placeholder": "<sound>", "audio_start": "<|sound_bos|>",
                   "audio_end": "<|sound_eos|>", "stop": ["<|im_end|>", "<|endoftext|>"]}


def copy_bundle(src, dst):
    shutil.copytree(src, dst)
    return dst


def edit_manifest(bundle, change) -> None:
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# --- file entries are untrusted ------------------------------------------------------------------------

def test_a_file_entry_outside_the_bundle_is_refused_even_with_a_matching_hash(tiny_bundle, tmp_path):
    bundle = copy_bundle(tiny_bundle, tmp_path / "bundle")
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.move(bundle / "projector.onnx", outside / "projector.onnx")  # same bytes, so the sha256 matches
    edit_manifest(bundle, lambda m: m["components"]["projector"].update(file="../outside/projector.onnx"))
    with pytest.raises(BundleError, match=r"components\.projector\.file is '\.\./outside/projector\.onnx'"):
        Manifest.load(bundle)


def test_an_absolute_file_entry_is_refused(tiny_bundle, tmp_path):
    bundle = copy_bundle(tiny_bundle, tmp_path / "bundle")
    target = str((bundle / "fusion.onnx").resolve())
    edit_manifest(bundle, lambda m: m["components"]["fusion"].update(file=target))
    with pytest.raises(BundleError, match=r"components\.fusion\.file .*plain relative name"):
        Manifest.read(bundle)


def test_a_symlink_that_leaves_the_bundle_is_refused(tiny_bundle, tmp_path):
    bundle = copy_bundle(tiny_bundle, tmp_path / "bundle")
    outside = tmp_path / "elsewhere.onnx"
    shutil.move(bundle / "fusion.onnx", outside)
    os.symlink(outside, bundle / "fusion.onnx")
    with pytest.raises(BundleError, match=r"components\.fusion\.file is 'fusion\.onnx', a link that leaves"):
        Manifest.load(bundle)


def test_a_symlink_inside_the_bundle_is_fine(tiny_bundle, tmp_path):
    bundle = copy_bundle(tiny_bundle, tmp_path / "bundle")
    (bundle / "graphs").mkdir()
    shutil.move(bundle / "fusion.onnx", bundle / "graphs" / "fusion.onnx")
    os.symlink(bundle / "graphs" / "fusion.onnx", bundle / "fusion.onnx")
    Manifest.load(bundle)


# --- typed sections ------------------------------------------------------------------------------------

def test_schema_1_bundles_get_gammas_chain_and_keep_their_recorded_fields():
    audio = AudioSection.from_dict({"sample_rate": 16000, "n_mels": 128, "tokens_per_window": 750,
                                    "pool_stride": 2, "window_frames": 3000}, "m.json")
    assert audio.chain == SCHEMA_1_CHAIN
    assert audio.components == ("temporal_encoder", "global_encoder", "fusion", "projector")
    assert audio.to_dict()["pool_stride"] == 2


@pytest.mark.parametrize("change,message", [
    ({"n_mels": 0}, r"audio.n_mels must be an integer in \[1, 1024\], got 0"),
    ({"token_count": "mystery"}, "audio.token_count is 'mystery'"),
    ({"hop_length": 320}, "audio.window_frames is 3000"),
    ({"chain": [{"component": "projector", "inputs": {"fused": "fused"}, "outputs": {"embeddings": "embeddings"}}]},
     r"audio.chain\[0\].inputs.fused reads 'fused'"),
    ({"chain": [{"component": "encoder", "inputs": {"mel": "mel"}, "outputs": {"hidden": "hidden"}}]},
     "makes no 'embeddings'"),
    ({"max_seconds": -1}, r"audio.max_seconds must be a finite number in \(0, 604800\], got -1"),
])
def test_a_bad_audio_section_is_refused_naming_the_field(change, message):
    with pytest.raises(BundleError, match=message):
        AudioSection.from_dict({**AudioSection().to_dict(), **change}, "m.json")


# --- the chat template prompt --------------------------------------------------------------------------

def test_template_prompt_splits_at_the_audio_and_matches_the_whole_render():
    from gamma_rt.runtime.prompt import render_chat_template

    p = prompt_from_manifest(TEMPLATE_PROMPT)
    assert isinstance(p, TemplatePrompt)
    assert p.head() == "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n<|sound_bos|>"
    assert p.tail("Genre?") == "<|sound_eos|>Genre?<|im_end|>\n<|im_start|>assistant\n"
    messages = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Genre?"}]}]
    whole = render_chat_template(CHATML, messages, {}, "m.json")
    assert whole.replace("<sound>", "<|sound_bos|>AUDIO<|sound_eos|>") == p.head() + "AUDIO" + p.tail("Genre?")


def test_template_prompt_follow_up_is_what_the_template_puts_after_an_answer():
    p = prompt_from_manifest(TEMPLATE_PROMPT)
    assert p.follow_up("And the key?") == "<|im_end|>\n<|im_start|>user\nAnd the key?<|im_end|>\n<|im_start|>assistant\n"
    assert p.marker(3, 90.0) == ""


def test_a_template_that_puts_the_question_first_or_drops_the_audio_is_refused():
    question_first = CHATML.replace(
        "{% for item in message['content'] %}", "{% for item in message['content'] | reverse %}")
    with pytest.raises(BundleError, match="puts the question before the audio"):
        prompt_from_manifest({**TEMPLATE_PROMPT, "chat_template": question_first}).tail("Genre?")
    no_audio = CHATML.replace("<sound>", "")
    with pytest.raises(BundleError, match="renders the audio placeholder '<sound>' 0 times"):
        prompt_from_manifest({**TEMPLATE_PROMPT, "chat_template": no_audio})
    with pytest.raises(BundleError, match="does not render"):
        prompt_from_manifest({**TEMPLATE_PROMPT, "chat_template": "{% if %}"})


# --- token counts --------------------------------------------------------------------------------------

def _window(n_valid: int) -> Window:
    return Window(0, 0.0, n_valid / 16000, np.zeros(480000, np.float32), n_valid)


@pytest.mark.parametrize("seconds", [30.0, 10.0, 5.0, 7.3, 0.5, 12.345, 29.99])
def test_conv_pool_count_equals_the_audio_flamingo_processor(seconds):
    torch = pytest.importorskip("torch")
    from transformers import AudioFlamingo3Processor

    n = int(seconds * 16000)
    frames = torch.tensor([-(-n // 160)])  # WhisperFeatureExtractor's attention mask: ceil(n / hop) frames
    expected = int(AudioFlamingo3Processor._get_audio_token_length(None, frames)[0])
    assert _window(n).valid_tokens(750, "conv_pool", 160) == expected


# --- the audio length limit ----------------------------------------------------------------------------

def test_audio_past_max_seconds_is_cut_with_one_line_on_stderr(tiny_bundle, tmp_path):
    bundle = copy_bundle(tiny_bundle, tmp_path / "bundle")
    edit_manifest(bundle, lambda m: m["audio"].update(max_seconds=60))
    script = (
        "import numpy as np\n"
        "from gamma_rt.runtime import Pipeline\n"
        f"with Pipeline.open({str(bundle)!r}, threads=1) as p:\n"
        "    audio = (0.1 * np.sin(np.arange(16000 * 75) / 7)).astype(np.float32)\n"
        "    print(len(list(p.embed(audio))))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "2"
    note = [line for line in out.stderr.splitlines() if line.startswith("gamma-rt:")]
    assert note == ["gamma-rt: audio longer than the model's 60 s (manifest audio.max_seconds); using the first 60 s"]


# --- the public API ------------------------------------------------------------------------------------

def test_the_public_runtime_api_imports_from_the_package():
    from gamma_rt import runtime
    from gamma_rt.runtime import Answer, Conversation, Pipeline, RuntimeOptions, Sampling, open_audio

    assert set(runtime.__all__) == {"Pipeline", "Answer", "Conversation", "Sampling", "RuntimeOptions", "open_audio"}
    assert Pipeline.open and Conversation.say and Answer and Sampling and open_audio
    assert RuntimeOptions(threads=2).replace(gpu_layers=0) == RuntimeOptions(threads=2, gpu_layers=0)


# --- which decoder runs --------------------------------------------------------------------------------

def _gguf(file: str) -> dict:
    return {"kind": "gguf", "file": file, "sha256": "", "bytes": 0, "precision": ""}


@pytest.mark.parametrize("names,expected", [
    (["decoder.q4_k_m", "decoder.f16"], "decoder.f16"),
    (["decoder.q4_k_m", "decoder", "decoder.q8_0"], "decoder"),
    (["decoder.q4_k_m", "decoder.q8_0"], "decoder.q8_0"),
    (["decoder.q4_k_m"], "decoder.q4_k_m"),
])
def test_auto_decoder_is_the_most_faithful_the_bundle_has(names, expected, tmp_path):
    from gamma_rt.runtime.pipeline import best_decoder

    m = Manifest(audio={}, prompt={}, components={n: Component.from_dict(_gguf(f"{n}.gguf"), n) for n in names})
    assert best_decoder(m, tmp_path) == expected


def test_a_bundle_without_a_decoder_says_to_export_one(tmp_path):
    from gamma_rt.runtime.pipeline import best_decoder

    with pytest.raises(BundleError, match="no GGUF decoder.*gamma-rt export gguf"):
        best_decoder(Manifest(audio={}, prompt={}), tmp_path)
