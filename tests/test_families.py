"""The family registry reads a checkpoint folder the way transformers wrote it, or refuses it in one line.

Folders are written by transformers' own save_pretrained (tiny random models); llama.cpp and transformers
are the oracles for the Qwen3 regression (rope theta and chat template taken from the folder).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from flamingo_fixtures import *  # noqa: F401,F403
from flamingo_fixtures import QUIET, chat_inputs
from gamma_rt.cli import main
from gamma_rt.errors import CheckpointError
from gamma_rt.export.families import detect
from gamma_rt.export.families.folder import decoder_shape, rope_theta
from gamma_rt.export.gguf_export import export_gguf
from gamma_rt.export.onnx_export import export_onnx

PUBLISHED_FILES = {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                   "tokenizer_config.json", "processor_config.json", "chat_template.jinja"}


def one_line_error(capsys, argv: list[str], *expected: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err


def copy(folder, tmp_path):
    out = tmp_path / folder.name
    shutil.copytree(folder, out)
    return out


def edit_config(folder, change) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


# --- detection ------------------------------------------------------------------------------------


def test_each_family_is_detected_from_config_json(mf_folder, af3_folder, tiny_checkpoint):
    assert type(detect(mf_folder)).__name__ == "MusicFlamingo"
    assert type(detect(af3_folder)).__name__ == "AudioFlamingo3"
    assert type(detect(tiny_checkpoint)).__name__ == "Gamma"


@pytest.mark.parametrize("arch, model_type", [
    ("Qwen2AudioForConditionalGeneration", "qwen2_audio"),
    ("WhisperForConditionalGeneration", "whisper"),
    ("Qwen2ForCausalLM", "qwen2"),
])
@pytest.mark.parametrize("command", ["gguf", "onnx"])
def test_other_architectures_are_one_line_errors_naming_them_and_the_known_families(
        tmp_path, capsys, arch, model_type, command):
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": [arch], "model_type": model_type}))
    one_line_error(capsys, ["export", command, str(folder), "--out", str(tmp_path / "b")],
                   "config.json", arch, "gamma-rt knows", "musicflamingo", "audioflamingo3", "gamma")


def test_a_shard_the_index_names_but_the_folder_lacks_is_a_one_line_error(mf_folder, tmp_path, capsys):
    folder = copy(mf_folder, tmp_path)
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors",
                                            "audio_tower.conv1.weight": "model.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    one_line_error(capsys, ["export", "gguf", str(folder), "--out", str(tmp_path / "b")],
                   "model.safetensors.index.json", "model-00002-of-00002.safetensors")


@pytest.mark.parametrize("missing, named", [
    ("tokenizer.json", "tokenizer.json: missing"),
    ("tokenizer_config.json", "tokenizer_config.json: missing"),
    ("processor_config.json", "processor_config.json: missing"),
    ("chat_template.jinja", "chat_template.jinja: missing"),
])
def test_missing_tokenizer_processor_or_template_is_a_one_line_error(af3_folder, tmp_path, capsys, missing, named):
    folder = copy(af3_folder, tmp_path)
    (folder / missing).unlink()
    one_line_error(capsys, ["export", "onnx", str(folder), "--out", str(tmp_path / "b")], named)


def test_preprocessor_config_alone_is_read(af3_folder, tmp_path):
    folder = copy(af3_folder, tmp_path)
    processor = json.loads((folder / "processor_config.json").read_text())
    (folder / "preprocessor_config.json").write_text(json.dumps(processor.pop("feature_extractor")))
    (folder / "processor_config.json").write_text(json.dumps(processor))
    assert detect(folder).front_end["n_mels"] == 128


# --- reading config.json -----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", [
    {"rope_theta": 5e5},  # transformers 4
    {"rope_theta": 5e5, "rope_scaling": None},
    {"rope_parameters": {"rope_type": "default", "rope_theta": 5e5}},  # transformers 5
])
def test_rope_theta_is_read_from_either_layout(layout):
    assert rope_theta(layout, "config.json") == 5e5


@pytest.mark.parametrize("layout, field", [
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}}, "rope_parameters.rope_type"),
    ({"rope_theta": 1e6, "rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling.rope_type"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "partial_rotary_factor": 0.5}},
     "partial_rotary_factor"),
    ({}, "rope_theta"),
])
def test_unsupported_or_missing_rope_fields_are_named(layout, field):
    with pytest.raises(CheckpointError, match=field):
        rope_theta(layout, "config.json")


def test_unsupported_rope_type_in_a_flamingo_folder_is_a_one_line_error(mf_folder, tmp_path, capsys):
    folder = copy(mf_folder, tmp_path)
    edit_config(folder, lambda c: c["text_config"]["rope_parameters"].update(rope_type="dynamic", factor=2.0))
    one_line_error(capsys, ["export", "gguf", str(folder), "--out", str(tmp_path / "b")],
                   "text_config", "rope_parameters.rope_type", "dynamic")


def test_sliding_window_layers_are_refused_naming_the_fields(mf_folder, tmp_path, capsys):
    folder = copy(mf_folder, tmp_path)
    edit_config(folder, lambda c: c["text_config"].update(
        use_sliding_window=True, sliding_window=64, layer_types=["sliding_attention", "full_attention"]))
    one_line_error(capsys, ["export", "gguf", str(folder), "--out", str(tmp_path / "b")],
                   "use_sliding_window", "sliding-window")
    with pytest.raises(CheckpointError, match="layer_types"):
        decoder_shape({"layer_types": ["full_attention", "sliding_attention"]}, "config.json", "qwen2")


def test_special_token_ids_come_from_the_folder(mf_folder, tmp_path):
    folder = copy(mf_folder, tmp_path)
    edit_config(folder, lambda c: c.update(audio_bos_token_id=c["audio_eos_token_id"]))
    with pytest.raises(CheckpointError, match="audio_bos_token"):
        detect(folder).manifest_sections()


# --- init writes the published layout ------------------------------------------------------------


@pytest.mark.parametrize("family", ["musicflamingo", "audioflamingo3"])
def test_init_writes_the_published_layout_that_the_real_processor_loads(request, family):
    folder = request.getfixturevalue("mf_folder" if family == "musicflamingo" else "af3_folder")
    from transformers import AutoProcessor

    assert PUBLISHED_FILES <= {p.name for p in folder.iterdir()}
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == family and config["text_config"]["model_type"] == "qwen2"
    processor = AutoProcessor.from_pretrained(folder)
    assert type(processor).__name__ == {"musicflamingo": "MusicFlamingoProcessor",
                                        "audioflamingo3": "AudioFlamingo3Processor"}[family]
    inputs = chat_inputs(processor, np.zeros(16000 * 40, dtype=np.float32))
    ids = inputs["input_ids"][0].tolist()
    assert ids.count(config["audio_token_id"]) == 750 + 250  # 40 s: a full window and 10 s
    if family == "musicflamingo":
        sound_bos = ids.index(config["audio_bos_token_id"])
        assert ids[sound_bos + 1] == config["audio_token_id"]
        assert ids[sound_bos + 1001] == config["audio_eos_token_id"]


def test_cli_init_family_and_its_one_line_errors(tmp_path, capsys):
    assert main(["init", "--family", "audioflamingo3", "--out", str(tmp_path / "af3")]) == 0
    assert (tmp_path / "af3" / "chat_template.jinja").is_file()
    capsys.readouterr()
    one_line_error(capsys, ["init", "--family", "mufun", "--preset", "small", "--out", str(tmp_path / "x")],
                   "--preset small", "tiny, full")


def test_full_preset_streams_the_names_and_shapes_save_pretrained_writes(tmp_path):
    """``full`` writes tensor by tensor; on the tiny config the same writer must give save_pretrained's keys."""
    from safetensors import safe_open
    from transformers import MusicFlamingoForConditionalGeneration

    from gamma_rt.export.families.flamingo.writer import _write_streamed, flamingo_config, train_tokenizer

    config = flamingo_config("musicflamingo", "tiny", train_tokenizer(1024))
    _write_streamed(MusicFlamingoForConditionalGeneration, config, tmp_path / "streamed", seed=0)
    MusicFlamingoForConditionalGeneration(config).save_pretrained(tmp_path / "saved")

    def keys(folder):
        with safe_open(folder / "model.safetensors", "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}

    assert keys(tmp_path / "streamed") == keys(tmp_path / "saved")


@pytest.mark.parametrize("family", ["audioflamingo3", "musicflamingo"])
def test_streamed_presets_write_the_config_json_save_pretrained_writes(tmp_path, monkeypatch, family):
    """``small`` and ``full`` save the config without a model; llama.cpp's converter and the family registry
    read its ``architectures``, which only model.save_pretrained fills in by itself."""
    from gamma_rt.export.families.flamingo import writer

    tiny = writer.flamingo_config
    monkeypatch.setattr(writer, "flamingo_config", lambda fam, preset, tok: tiny(fam, "tiny", tok))
    monkeypatch.setattr(writer, "train_tokenizer", lambda vocab_size, stock=writer.train_tokenizer: stock(1024))
    streamed = writer.write_flamingo(family, "small", tmp_path / "streamed")
    saved = writer.write_flamingo(family, "tiny", tmp_path / "saved")

    def config(folder):
        return {k: v for k, v in json.loads((folder / "config.json").read_text()).items()
                if k not in ("transformers_version", "dtype", "torch_dtype")}

    assert config(streamed) == config(saved)
    assert detect(streamed).name == family


def test_small_preset_has_whisper_small_and_qwen2_05b_dimensions():
    from gamma_rt.export.families.flamingo.writer import flamingo_config, train_tokenizer

    config = flamingo_config("audioflamingo3", "small", train_tokenizer(151936))
    audio, text = config.audio_config, config.text_config
    assert (audio.hidden_size, audio.num_hidden_layers, audio.num_attention_heads, audio.intermediate_size) == \
        (768, 12, 12, 3072)
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers, text.num_attention_heads,
            text.num_key_value_heads, text.vocab_size) == (896, 4864, 24, 14, 2, 151936)


# --- the Qwen3 regression: theta and chat template from the folder -----------------------------


@pytest.fixture(scope="module")
def qwen3_folder(tmp_path_factory):
    """A tiny Qwen3ForCausalLM saved by transformers 5 (rope in rope_parameters, theta 10000) with its own
    chat_template.jinja, and the tiny Qwen-style tokenizer."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from gamma_rt.export.families.gamma.config import GammaConfig
    from gamma_rt.export.families.gamma.tokenizer import write_tokenizer

    folder = tmp_path_factory.mktemp("qwen3") / "qwen3"
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False)
    model = Qwen3ForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    model.save_pretrained(folder)
    write_tokenizer(folder, GammaConfig.tiny())
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n\n</think>\n\n{% endif %}")
    return folder, model


def test_qwen3_folder_gguf_takes_theta_and_template_from_the_folder(qwen3_folder, tmp_path):
    import gguf

    folder, _ = qwen3_folder
    assert "rope_theta" not in json.loads((folder / "config.json").read_text())  # transformers 5 layout
    export_gguf(folder, tmp_path / "b", "f32", **QUIET)
    reader = gguf.GGUFReader(tmp_path / "b" / "decoder-f32.gguf")
    assert reader.fields["qwen3.rope.freq_base"].contents() == 10000.0
    assert reader.fields["tokenizer.chat_template"].contents() == (folder / "chat_template.jinja").read_text()


def test_qwen3_folder_logits_equal_transformers_at_60_positions(qwen3_folder, tmp_path):
    import torch

    from gamma_rt.runtime.decoder import DecoderSession

    folder, model = qwen3_folder
    export_gguf(folder, tmp_path / "b", "f32", **QUIET)
    tokens = np.random.default_rng(1).integers(0, 590, 60).tolist()
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([tokens])).logits[0].numpy()
    with DecoderSession(tmp_path / "b" / "decoder-f32.gguf", n_ctx=128) as s:
        for i, t in enumerate(tokens):
            s.eval_tokens([t])
            got = s.logits()
            assert np.abs(got - expected[i]).max() / np.abs(expected[i]).max() <= 1e-4, f"position {i}"


def test_onnx_export_of_a_decoder_only_folder_says_there_is_no_audio_side(qwen3_folder, tmp_path):
    with pytest.raises(CheckpointError, match="no audio side"):
        export_onnx(qwen3_folder[0], tmp_path / "b")
