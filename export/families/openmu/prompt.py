"""OpenMU's prompt (LLaVA's ``conv_vicuna_v3``, which its ``llama_3`` mode names) and a tiny Llama 3 tokenizer.

conv_vicuna_v3 is LLaVA's SeparatorStyle.TWO with sep " " and sep2 ``<|reserved_special_token_250|>``:

    {system} USER: <image>\\n{instruction} ASSISTANT: {answer}<|reserved_special_token_250|>USER: ... ASSISTANT:

``<image>`` stands for the audio tokens (LLaVA's sentinel id -200); LLaVA tokenizes the text on each side of
it on its own, with one BOS first, which is what the runtime does with the text around the placeholder.

The tokenizer for ``gamma-rt init``: a byte-level BPE trained here with Llama 3's pre-tokenizer split (which
llama.cpp's ``llama-bpe`` pre-tokenizer splits identically) and Llama 3's 256 special tokens after it, laid
out as Meta-Llama-3-8B-Instruct's: begin_of_text, end_of_text, reserved 0-3, start/end_header_id,
reserved 4, eot_id, reserved 5-250.
"""

from __future__ import annotations

SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
          "The assistant gives helpful, detailed, and polite answers to the user's questions.")
IMAGE = "<image>"  # LLaVA's DEFAULT_IMAGE_TOKEN: where the audio tokens go
SEP2 = "<|reserved_special_token_250|>"
BOS, EOS, EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"

# conv_vicuna_v3 as a chat template. A message's audio item becomes "<image>\n" before its text, as
# OpenMU's eval scripts build the first question (DEFAULT_IMAGE_TOKEN + "\n" + instruction).
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- if messages[0]['role'] == 'system' -%}{{- messages[0]['content'] + ' ' -}}"
    "{%- else -%}{{- '" + SYSTEM.replace("'", "\\'") + " ' -}}{%- endif -%}"
    "{%- for message in messages if message['role'] != 'system' -%}"
    "{%- if message['role'] == 'user' -%}{{- 'USER: ' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for item in message['content'] if item['type'] == 'audio' -%}{{- '" + IMAGE + "\\n' -}}{%- endfor -%}"
    "{%- for item in message['content'] if item['type'] == 'text' -%}{{- item['text'] -}}{%- endfor -%}"
    "{%- endif -%}{{- ' ' -}}"
    "{%- else -%}{{- 'ASSISTANT: ' + message['content'] + '" + SEP2 + "' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)

# Llama 3's pre-tokenizer split, as in Meta-Llama-3's tokenizer.json (llama.cpp: "llama-bpe").
LLAMA3_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def special_tokens() -> list[str]:
    """Llama 3 Instruct's 256 special tokens in id order."""
    named = {0: BOS, 1: EOS, 6: "<|start_header_id|>", 7: "<|end_header_id|>", 9: EOT}
    out, reserved = [], 0
    for i in range(256):
        if i in named:
            out.append(named[i])
        else:
            out.append(f"<|reserved_special_token_{reserved}|>")
            reserved += 1
    return out


def train_llama3_bpe(bpe_size: int, vocab_size: int):
    """(tokenizers.Tokenizer, id of the first special token): BPE of ``bpe_size`` tokens, ids up to
    vocab_size - 256 unused, then the 256 specials (ids vocab_size - 256 ..), as in Llama 3."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from ...bpe import TRAINING_TEXT

    tokenizer = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=bpe_size, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tokenizer.train_from_iterator(TRAINING_TEXT.split("\n\n"), trainer=trainer)
    first_special = vocab_size - 256
    trained = tokenizer.get_vocab_size()
    if trained > first_special:
        raise ValueError(f"BPE of {trained} tokens does not fit below id {first_special}")
    # pad the ids between the BPE and the specials with unused tokens, so the specials sit where Llama 3's do
    tokenizer.add_tokens([AddedToken(f"<|unused_{i}|>", special=True, normalized=False)
                          for i in range(trained, first_special)])
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens()])
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B:1", special_tokens=[(BOS, first_special)])
    return tokenizer, first_special
