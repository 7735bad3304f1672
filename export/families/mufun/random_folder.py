"""``gamma-rt init --family mufun --preset tiny|full``: a random MuFun in the published folder layout.

    config.json                   TinyLlavaConfig's fields (architectures, model_type tinyllava, connector_type
                                  blp_4i_2x, vision_hidden_size, hidden_size, text_config (qwen3, transformers
                                  4.51 keys), vision_config (whisper)), as MuFun's save_pretrained writes them
    model.safetensors             (tiny) or model-0000i-of-0000n.safetensors + model.safetensors.index.json
                                  (full), keys vision_tower._vision_tower.*, connector._connector.*,
                                  language_model.model.*, language_model.lm_head.*
    generation_config.json        Qwen3-8B-Base's (eos <|endoftext|>)
    tokenizer.json, tokenizer_config.json, vocab.json, merges.txt
                                  a small Qwen2-style byte-level BPE with Qwen's special tokens (MuFun loads the
                                  tokenizer with use_fast=False, which reads vocab.json and merges.txt)

``tiny`` keeps Whisper's 32 layers (MuFun reads hidden state 32) at width 32, and a 2-layer Qwen3 of width 64;
``full`` is Whisper-large-v3 + Qwen3-8B-Base in bf16 (16.4 GB), written one tensor at a time.
"""

from __future__ import annotations

import json
from pathlib import Path

from gamma_rt.errors import CheckpointError

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen3's ChatML template, as Qwen3-8B-Base's tokenizer_config.json carries one; MuFun does not use it
# (its conversation is qwen2_instruct, prompt.py), and gamma-rt must not either.
CHATML = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

PRESETS = {
    "tiny": {
        "whisper": dict(d_model=32, encoder_layers=32, encoder_attention_heads=4, encoder_ffn_dim=64,
                        decoder_layers=2, decoder_attention_heads=4, decoder_ffn_dim=64),
        "qwen3": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, vocab_size=1024),
        "dtype": "float32", "std": 0.2,
    },
    "full": {  # Whisper-large-v3 and Qwen3-8B-Base
        "whisper": dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120,
                        decoder_layers=32, decoder_attention_heads=20, decoder_ffn_dim=5120),
        "qwen3": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                      num_key_value_heads=8, head_dim=128, vocab_size=151936),
        "dtype": "bfloat16", "std": 0.02,
    },
}


def text_config(dims: dict, ids: dict[str, int]) -> dict:
    """Qwen3-8B-Base's config.json fields at ``dims`` (transformers 4.51 layout: rope_theta)."""
    return {
        "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|endoftext|>"], "hidden_act": "silu",
        "initializer_range": 0.02, "max_position_embeddings": 32768, "max_window_layers": dims["num_hidden_layers"],
        "model_type": "qwen3", "rms_norm_eps": 1e-6, "rope_scaling": None, "rope_theta": 1000000.0,
        "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
        "use_sliding_window": False, **dims,
    }


def vision_config(dims: dict) -> dict:
    from transformers import WhisperConfig

    config = WhisperConfig(num_mel_bins=128, max_source_positions=1500, vocab_size=51866, **dims).to_dict()
    config.pop("transformers_version", None)
    return config


def mufun_config(preset: str, ids: dict[str, int]) -> dict:
    """config.json: TinyLlavaConfig's fields as its to_dict writes them (tinyllava/model/configuration_tinyllava.py)."""
    p = PRESETS[preset]
    text, vision = text_config(p["qwen3"], ids), vision_config(p["whisper"])
    return {
        "architectures": ["TinyLlavaForConditionalGeneration"],
        "auto_map": {"AutoConfig": "configuration_tinyllava.TinyLlavaConfig",
                     "AutoModelForCausalLM": "modeling_tinyllava.TinyLlavaForConditionalGeneration"},
        "model_type": "tinyllava",
        "llm_model_name_or_path": "Qwen/Qwen3-8B-Base",
        "tokenizer_name_or_path": "Qwen/Qwen3-8B-Base",
        "vision_model_name_or_path": "openai/whisper-large-v3",
        "vision_model_name_or_path2": "",
        "connector_type": "blp_4i_2x",
        "hidden_size": text["hidden_size"],
        "vocab_size": text["vocab_size"],
        "vision_hidden_size": vision["d_model"],
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "patch",
        "image_aspect_ratio": "audio",
        "ignore_index": -100,
        "image_token_index": -200,
        "pad_token": "<|endoftext|>",
        "pad_token_id": ids["<|endoftext|>"],
        "tokenizer_padding_side": "right",
        "tokenizer_model_max_length": 4096,
        "tokenizer_use_fast": False,
        "use_cache": False,
        "cache_dir": None,
        "resampler_hidden_size": None, "num_queries": None, "num_resampler_layers": None,
        "tune_type_llm": "full", "tune_type_connector": "full", "tune_type_vision_tower": "full",
        "tune_vision_tower_from_layer": 0,
        "text_config": text,
        "vision_config": vision,
        "torch_dtype": p["dtype"],
        "transformers_version": "4.51.3",
    }


def write_tokenizer(out: Path, vocab_size: int) -> dict[str, int]:
    """The tokenizer files; returns the special tokens' ids."""
    from tokenizers import Tokenizer
    from transformers import Qwen2TokenizerFast

    from ...bpe import TRAINING_TEXT, train_qwen2_bpe

    bpe: Tokenizer = train_qwen2_bpe(TRAINING_TEXT.split("\n\n"), min(vocab_size, 4096) - len(SPECIALS), SPECIALS)
    tok = Qwen2TokenizerFast(tokenizer_object=bpe, bos_token=None, eos_token="<|endoftext|>",
                             pad_token="<|endoftext|>", unk_token=None)
    tok.chat_template = CHATML
    tok.save_pretrained(out)
    bpe.model.save(str(out))  # vocab.json + merges.txt, for the slow tokenizer MuFun loads (use_fast=False)
    return {t: bpe.token_to_id(t) for t in SPECIALS}


def weight_shapes(preset: str, config: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(stored name, shape) of every tensor, in the order MuFun's modules hold them."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM, WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from .graphs import Connector

    vision = WhisperConfig(**{k: v for k, v in config["vision_config"].items() if k != "model_type"})
    text = Qwen3Config(**{k: v for k, v in config["text_config"].items() if k != "model_type"})
    ix, hx = (int(part[:-1]) for part in config["connector_type"].split("_")[1:3])  # blp_<ix>i_<hx>x
    with torch.device("meta"):
        parts = {
            "vision_tower._vision_tower.": WhisperEncoder(vision),
            "connector._connector.": Connector(vision.d_model * ix, hx, text.hidden_size),
            "language_model.": Qwen3ForCausalLM(text),
        }
    return [(prefix + k, tuple(v.shape)) for prefix, m in parts.items() for k, v in m.state_dict().items()]


def write_mufun(preset: str, out: Path, seed: int = 0, progress=None) -> Path:
    """Write a random MuFun of ``preset`` into ``out``; returns ``out``."""
    import torch

    from ...weights import ShardWriter, random_tensor, sinusoids

    if preset not in PRESETS:
        raise CheckpointError(f"unknown preset {preset!r} for mufun; choose {', '.join(PRESETS)}")
    p = PRESETS[preset]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer(out, p["qwen3"]["vocab_size"])
    config = mufun_config(preset, ids)
    dtype = getattr(torch, p["dtype"])
    writer = ShardWriter(out)
    shapes = weight_shapes(preset, config)
    for name, shape in (progress or (lambda it, **_: it))(shapes, description="weights"):
        if name.endswith("embed_positions.weight"):
            tensor = sinusoids(*shape)
        else:
            tensor = random_tensor(name, shape, seed, p["std"])
        writer.add(name, tensor.to(dtype).contiguous())
    writer.close()
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|endoftext|>"],
                  "max_new_tokens": 2048, "transformers_version": "4.51.3"}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return out
