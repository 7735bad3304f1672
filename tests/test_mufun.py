"""MuFun's published folder layout: what ``gamma-rt init --family mufun`` writes, what reading it refuses, and
the oracle's own steps (export/families/mufun/reference.py: transformers' WhisperEncoder + Qwen3ForCausalLM
under MuFun's key names, following MuFun's code) against the graphs gamma-rt traces.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from gamma_rt.cli import main



@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from gamma_rt.export.families import family_named

    out = tmp_path_factory.mktemp("mufun_tiny") / "mufun"
    family_named("mufun").init("tiny", out, seed=0)
    return out


@pytest.fixture(scope="module")
def reference(folder):
    from gamma_rt.export.families.mufun.reference import MuFunReference

    return MuFunReference(folder)


def one_line_error(capsys, argv: list[str], *expected: str) -> str:
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for text in expected:
        assert text in err, err
    return err


# --- the folder ------------------------------------------------------------------------------------


def test_init_writes_the_published_layout(folder):
    from safetensors import safe_open

    from gamma_rt.export.families import detect

    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["TinyLlavaForConditionalGeneration"]
    assert (config["model_type"], config["connector_type"]) == ("tinyllava", "blp_4i_2x")
    assert config["text_config"]["model_type"] == "qwen3" and config["vision_config"]["model_type"] == "whisper"
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "generation_config.json"):
        assert (folder / name).is_file(), name
    with safe_open(folder / "model.safetensors", "pt") as f:
        keys = list(f.keys())
        assert tuple(f.get_slice("connector._connector.linear1.weight").get_shape()) == (256, 128)
    prefixes = {k.split(".")[0] + "." + k.split(".")[1] for k in keys}
    assert prefixes == {"vision_tower._vision_tower", "connector._connector", "language_model.model",
                        "language_model.lm_head"}
    assert "vision_tower._vision_tower.layers.31.fc2.weight" in keys  # hidden state 32 needs 32 layers
    family = detect(folder)
    assert (family.name, family.front_end["tokens_per_window"], family.feature_width) == ("mufun", 300, 128)


def edit(folder, tmp_path, change):
    out = tmp_path / "edited"
    shutil.copytree(folder, out)
    config = json.loads((out / "config.json").read_text())
    change(config)
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize("change, named", [
    (lambda c: c.update(connector_type="mlp2x_gelu"), "connector_type"),
    (lambda c: c.update(connector_type="blp_2i_2x"), "connector_type"),
    (lambda c: c["text_config"].update(model_type="qwen2"), "text_config.model_type"),
    (lambda c: c["vision_config"].update(model_type="clip_vision_model"), "vision_config.model_type"),
    (lambda c: c.update(vision_hidden_size=1280), "vision_hidden_size"),
    (lambda c: c["vision_config"].update(encoder_layers=24), "vision_config.encoder_layers"),
    (lambda c: c.pop("text_config"), "text_config"),
    (lambda c: c.update(hidden_size=4096), "hidden_size"),
])
def test_a_folder_that_differs_fails_in_one_line_naming_the_field(folder, tmp_path, capsys, change, named):
    edited = edit(folder, tmp_path, change)
    one_line_error(capsys, ["export", "onnx", str(edited), "--out", str(tmp_path / "b")], named, "config.json")


def test_cli_init_writes_a_mufun_folder(tmp_path, capsys):
    assert main(["init", "--family", "mufun", "--preset", "tiny", "--out", str(tmp_path / "m")]) == 0
    assert "mufun tiny" in capsys.readouterr().out
    one_line_error(capsys, ["init", "--family", "mufun", "--preset", "small", "--out", str(tmp_path / "s")],
                   "--preset small", "tiny, full")


# --- the oracle's own steps --------------------------------------------------------------------------


def test_chunks_follow_mufuns_rule():
    from gamma_rt.export.families.mufun.reference import chunks

    rate = 16000
    lengths = lambda seconds: [len(c) for c in chunks(np.zeros(int(seconds * rate), np.float32))]  # noqa: E731
    assert lengths(0.3) == [int(0.3 * rate)]  # one chunk however short
    assert lengths(60.5) == [30 * rate, 30 * rate]  # a 0.5 s tail is dropped
    assert lengths(60.6) == [30 * rate, 30 * rate, int(0.6 * rate)]


def test_the_traced_modules_equal_the_reference_on_a_song(folder, reference):
    """graphs.StackedEncoder + Connector (what export traces) against WhisperEncoder's own hidden_states."""
    import torch

    from gamma_rt.export.families import detect
    from gamma_rt.export.families.mufun.reference import chunks

    samples = np.random.default_rng(0).normal(0, 0.1, 16000 * 45).astype(np.float32)
    mels = torch.cat([reference.features(c) for c in chunks(samples)])
    family = detect(folder)
    with torch.no_grad():
        ours = family.projector_module()(family.encoder_module()(mels))
    want = reference.encode(mels)
    assert ours.shape == want.shape == (2, 300, 64)
    assert (ours - want).abs().max() <= 1e-5 * want.abs().max()


def test_the_chat_template_renders_mufuns_qwen2_instruct_prompt():
    """head + <audio> + tail is the oracle's prompt; a second turn is what Qwen2InstructTemplate._prompt
    writes after an answer: ``ASSISTANT: {a}<|im_end|>USER: {q} ASSISTANT: ``."""
    from gamma_rt.export.families.mufun.prompt import SYSTEM, prompt_section
    from gamma_rt.export.families.mufun.reference import mufun_prompt
    from gamma_rt.runtime.prompt import TemplatePrompt

    prompt = TemplatePrompt.from_manifest(prompt_section(["<|endoftext|>"]))
    question = "Is it 'jazz'? Say \"yes\" or no."
    assert prompt.head() + "<audio>" + prompt.tail(question) == mufun_prompt(question)
    assert prompt.head() == SYSTEM + " USER: "
    assert prompt.follow_up("And the key?") == "<|im_end|>USER: And the key? ASSISTANT: "
    assert prompt.stop == ("<|im_end|>", "<|endoftext|>")
