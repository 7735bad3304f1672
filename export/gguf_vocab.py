"""The tokenizer half of a Qwen3 GGUF, written the way llama.cpp's HF converter writes it.

- ``tokenizer.ggml.model`` "gpt2" (byte-level BPE) with pre-tokenizer "qwen2";
- one token per id up to the model's vocab size; ids the tokenizer does not use become ``[PAD<id>]``
  tokens of type UNUSED (Qwen3's embedding has 151936 rows for 151669 tokens);
- special added tokens are CONTROL tokens, other added tokens USER_DEFINED;
- merges and eos/pad/bos ids come through gguf-py's ``SpecialVocab``; the chat template is the one the
  checkpoint folder holds (chat_template.jinja or a config), passed in by the family.
"""

from __future__ import annotations

from pathlib import Path

from gamma_rt.errors import CheckpointError

from .bpe import ENDOFTEXT


def vocab_tokens(tokenizer_folder: Path, vocab_size: int) -> tuple[list[str], list[int]]:
    """(token texts, gguf.TokenType values), both of length ``vocab_size``."""
    import gguf
    from tokenizers import Tokenizer

    path = tokenizer_folder / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; the GGUF needs the tokenizer")
    tokenizer = Tokenizer.from_file(str(path))
    by_id = {i: t for t, i in tokenizer.get_vocab(with_added_tokens=True).items()}
    if max(by_id) >= vocab_size:
        raise CheckpointError(f"{path}: token id {max(by_id)} does not fit the model's vocab_size {vocab_size}")
    added = tokenizer.get_added_tokens_decoder()
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def add_vocab(writer, tokenizer_folder: Path, vocab_size: int, chat_template: str | None = None,
              pre: str = "qwen2") -> None:
    """Add the full tokenizer to a ``gguf.GGUFWriter``; ``chat_template`` is the checkpoint folder's own,
    ``pre`` llama.cpp's pre-tokenizer (``qwen2``, or ``llama-bpe`` for Llama 3, whose BOS the folder names)."""
    import gguf

    tokens, types = vocab_tokens(tokenizer_folder, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)

    special = gguf.SpecialVocab(tokenizer_folder, load_merges=True, n_vocab=vocab_size)
    if not special.merges:
        raise CheckpointError(f"{tokenizer_folder / 'tokenizer.json'}: no BPE merges found")
    if "eos" not in special.special_token_ids:
        raise CheckpointError(f"{tokenizer_folder / 'tokenizer_config.json'}: field 'eos_token' missing")
    if pre == "qwen2":
        # Qwen has no BOS; llama.cpp's default BOS for gpt2 vocabularies (id 11) would name an arbitrary token.
        special.special_token_ids.setdefault("bos", tokens.index(ENDOFTEXT) if ENDOFTEXT in tokens else 0)
        special.add_special_token["bos"] = False
    elif "bos" not in special.special_token_ids:
        raise CheckpointError(f"{tokenizer_folder / 'tokenizer_config.json'}: field 'bos_token' missing")
    special.chat_template = chat_template
    special.add_to_gguf(writer, quiet=True)
