"""``gamma-rt init --family musicflamingo|audioflamingo3``: a random model in the published folder layout.

Written by transformers' own classes (the model's and the processor's ``save_pretrained``): config.json,
model.safetensors (shards + index for ``full``), generation_config.json, tokenizer.json,
tokenizer_config.json, processor_config.json and chat_template.jinja.

The tokenizer is a small byte-level BPE trained here with Qwen2's pre-tokenizer (export/bpe.py), plus
the Qwen and audio special tokens, so llama.cpp's ``qwen2`` pre-tokenizer splits text identically. The chat
template renders what the published ones render (transformers' convert_musicflamingo_to_hf.py /
convert_audioflamingo3_to_hf.py): a default system turn, ChatML turns, and a user turn whose audio items
become one ``<sound>`` before the turn's text. ``full`` is too big to build in memory (Qwen2-7B in bf16 is
15 GB), so its tensors are made and written one at a time under the names save_pretrained writes.
"""

from __future__ import annotations

from pathlib import Path

AF3_SYSTEM = "You are a helpful assistant."
MF_SYSTEM = (
    "You are Music Flamingo, a multimodal assistant for language and music. On each turn you receive an audio "
    "clip which contains music and optional text, you will receive at least one or both; use your world "
    "knowledge and reasoning to help the user with any task. Interpret the entirety of the content any input "
    "music--regardlenss of whether the user calls it audio, music, or sound."
)

# A default system turn unless one is given; in a turn with a content list every audio item is dropped
# and one <sound> is put before the concatenated text items.
TEMPLATE = """\
{%- if messages[0]['role'] != 'system' -%}<|im_start|>system
SYSTEM<|im_end|>
{% endif -%}
{%- for message in messages if message['content'] is not none -%}
<|im_start|>{{ message['role'] }}
{% if message['content'] is string -%}
{{ message['content'] }}
{%- else -%}
{%- set state = namespace(audio=false, text='') -%}
{%- for item in message['content'] -%}
{%- if item.get('type') == 'audio' or 'audio' in item -%}{%- set state.audio = true -%}
{%- elif item.get('type') == 'text' or 'text' in item -%}{%- set state.text = state.text + item['text'] -%}
{%- endif -%}
{%- endfor -%}
{{ '<sound>' if state.audio else '' }}{{ state.text }}
{%- endif -%}
<|im_end|>
{% endfor -%}
{%- if add_generation_prompt -%}<|im_start|>assistant
{% endif -%}"""

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<sound>", "<|sound_bos|>", "<|sound_eos|>"]
# model key prefix -> the prefix transformers' save_pretrained writes (it keeps the legacy layout)
SAVED_PREFIXES = {
    "model.audio_tower.": "audio_tower.",
    "model.language_model.": "language_model.model.",
    "model.multi_modal_projector.": "multi_modal_projector.",
    "lm_head.": "language_model.lm_head.",
}


def chat_template(family: str) -> str:
    return TEMPLATE.replace("SYSTEM", MF_SYSTEM if family == "musicflamingo" else AF3_SYSTEM)


def train_tokenizer(vocab_size: int):
    """Qwen2-style byte-level BPE (export/bpe.py's recipe) with the flamingo special tokens last."""
    from transformers import Qwen2TokenizerFast

    from ...bpe import TRAINING_TEXT, train_qwen2_bpe

    tok = train_qwen2_bpe(TRAINING_TEXT.split("\n\n"), min(vocab_size, 4096) - len(SPECIALS), list(SPECIALS))
    return Qwen2TokenizerFast(tokenizer_object=tok, bos_token=None, eos_token="<|im_end|>",
                              pad_token="<|endoftext|>", unk_token=None)


def flamingo_config(family: str, preset: str, tokenizer):
    from transformers import AudioFlamingo3Config, AudioFlamingo3EncoderConfig, MusicFlamingoConfig, Qwen2Config

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIALS}
    if preset == "tiny":
        audio = AudioFlamingo3EncoderConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                            intermediate_size=128)
        text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=1024, max_position_embeddings=32768)
    elif preset == "small":  # big enough that compute dominates a CPU: Whisper-small encoder, Qwen2-0.5B
        audio = AudioFlamingo3EncoderConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                            intermediate_size=3072)
        text = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                    num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768)
    else:  # the published dimensions: Whisper-large-v3 encoder, Qwen2-7B
        audio = AudioFlamingo3EncoderConfig()
        text = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                    num_key_value_heads=4, vocab_size=151936, max_position_embeddings=32768)
    text = Qwen2Config(**text, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                       bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                       pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=False)
    if family == "musicflamingo":
        return MusicFlamingoConfig(audio_config=audio, text_config=text, audio_token_id=ids["<sound>"],
                                   audio_bos_token_id=ids["<|sound_bos|>"], audio_eos_token_id=ids["<|sound_eos|>"])
    return AudioFlamingo3Config(audio_config=audio, text_config=text, audio_token_id=ids["<sound>"])


def write_flamingo(family: str, preset: str, out: Path, seed: int = 0, progress=None) -> Path:
    """Write a random ``family`` model of ``preset`` ("tiny" | "small" | "full") into ``out``; returns ``out``.

    ``small`` is the throughput benchmark's folder: Qwen2-0.5B's shape with its own head (the flamingo
    classes do not tie it), 0.7 B parameters, 1.4 GB of bf16 shards written tensor by tensor as ``full`` is."""
    import torch
    from transformers import (AudioFlamingo3ForConditionalGeneration, AudioFlamingo3Processor, GenerationConfig,
                              MusicFlamingoForConditionalGeneration, MusicFlamingoProcessor, WhisperFeatureExtractor)

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # save_pretrained's own bar; gamma-rt's progress is ``progress``
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(1024 if preset == "tiny" else 151936)
    config = flamingo_config(family, preset, tokenizer)
    model_class, processor_class, max_len = {
        "musicflamingo": (MusicFlamingoForConditionalGeneration, MusicFlamingoProcessor, 1200),
        "audioflamingo3": (AudioFlamingo3ForConditionalGeneration, AudioFlamingo3Processor, 600),
    }[family]
    features = WhisperFeatureExtractor(feature_size=128, return_attention_mask=True)
    processor = processor_class(feature_extractor=features, tokenizer=tokenizer, chat_template=chat_template(family),
                                max_audio_len=max_len)
    processor.save_pretrained(out)
    end = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    generation = GenerationConfig(eos_token_id=end, pad_token_id=end[1], do_sample=False)
    if preset == "tiny":
        torch.manual_seed(seed)
        model = model_class(config).eval()
        _spread(model, seed)
        model.generation_config = generation
        model.save_pretrained(out)
    else:
        _write_streamed(model_class, config, out, seed, progress)
        config.architectures = [model_class.__name__]  # what model.save_pretrained writes; converters read it
        config.save_pretrained(out)
        generation.save_pretrained(out)
    return out


def _spread(model, seed: int, std: float = 0.2) -> None:
    """Wider random weights than transformers' init (std 0.02), so a tiny model's logits are far from ties."""
    import torch

    from ...weights import random_tensor

    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("embed_positions.weight"):
                p.copy_(random_tensor(name, tuple(p.shape), seed, std))


def _write_streamed(model_class, config, out: Path, seed: int, progress=None) -> None:
    """Shards of random bf16 tensors under save_pretrained's names, one tensor in memory at a time."""
    import torch

    from ...weights import ShardWriter, random_tensor, sinusoids
    from ..folder import map_key

    with torch.device("meta"):
        model = model_class(config)
    shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    out.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(out)
    for name, shape in (progress or (lambda it, **_: it))(shapes, description="weights"):
        if name.endswith("embed_positions.weight"):
            tensor = sinusoids(*shape)
        else:
            tensor = random_tensor(name, shape, seed, 0.02)
        writer.add(map_key(name, SAVED_PREFIXES) or name, tensor.to(torch.bfloat16).contiguous())
    writer.close()
