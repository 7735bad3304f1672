"""The checkpoint's tokenizer: a built-in tiny byte-level BPE, or a stock Qwen3 tokenizer plus the audio tokens.

Both are Qwen-shaped, so that llama.cpp reads them the way it reads a real Qwen3 GGUF:

- byte-level BPE whose pre-tokenizer is the Qwen2 regex split (llama.cpp's ``qwen2`` pre-tokenizer splits
  text identically, so llama.cpp and transformers produce the same ids);
- special tokens ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>`` and the prompt's audio tokens;
- the Qwen chat template in ``tokenizer_config.json``.

The files written are ``tokenizer.json`` and ``tokenizer_config.json``; ``transformers.AutoTokenizer`` loads
the folder, and ``gamma-rt export gguf`` copies the vocabulary into the GGUF.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from gamma_rt.errors import CheckpointError

from ...bpe import ENDOFTEXT, IM_END, IM_START, QWEN_CHAT_TEMPLATE, TRAINING_TEXT, train_qwen2_bpe
from .config import GammaConfig

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")

def special_tokens(cfg: GammaConfig) -> list[str]:
    """The control tokens, in id order after the BPE vocabulary."""
    prompt = cfg.prompt
    return [ENDOFTEXT, IM_START, IM_END, prompt.audio_start, prompt.audio_token, prompt.audio_end]


def write_tokenizer(folder: str | Path, cfg: GammaConfig, qwen3_folder: str | Path | None = None) -> Path:
    """Write the tokenizer files into ``folder``; returns the path of ``tokenizer.json``.

    Without ``qwen3_folder`` a tiny byte-level BPE is trained offline on :data:`TRAINING_TEXT`, sized so that
    BPE tokens + specials fit ``cfg.llm.vocab_size``. With it, Qwen3's files are copied and the audio tokens
    are added as special tokens when missing; every id must stay below ``cfg.llm.vocab_size``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if qwen3_folder is None:
        tokenizer = _train_tiny_bpe(cfg)
    else:
        tokenizer = _stock_with_audio_tokens(Path(qwen3_folder), folder, cfg)
    _check_fits(tokenizer, cfg, folder)
    path = folder / "tokenizer.json"
    tokenizer.save(str(path))
    _write_tokenizer_config(folder, tokenizer, cfg)
    return path


def _train_tiny_bpe(cfg: GammaConfig):
    specials = special_tokens(cfg)
    return train_qwen2_bpe(TRAINING_TEXT.split("\n\n"), cfg.llm.vocab_size - len(specials), specials)


def _stock_with_audio_tokens(qwen3: Path, folder: Path, cfg: GammaConfig):
    from tokenizers import AddedToken, Tokenizer

    source = qwen3 / "tokenizer.json"
    if not source.is_file():
        raise CheckpointError(f"{source}: missing; --qwen3-init needs a Qwen3 folder with its tokenizer.json")
    if qwen3.resolve() != folder.resolve():
        for name in TOKENIZER_FILES:
            if (qwen3 / name).is_file():
                shutil.copyfile(qwen3 / name, folder / name)
    tokenizer = Tokenizer.from_file(str(source))
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    missing = [t for t in special_tokens(cfg) if t not in vocab]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
    return tokenizer


def _check_fits(tokenizer, cfg: GammaConfig, folder: Path) -> None:
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    top = max(vocab.values())
    if top >= cfg.llm.vocab_size:
        raise CheckpointError(
            f"{folder / 'tokenizer.json'}: token id {top} does not fit field llm.vocab_size "
            f"{cfg.llm.vocab_size} of config.json"
        )


def _write_tokenizer_config(folder: Path, tokenizer, cfg: GammaConfig) -> None:
    """tokenizer_config.json: the stock one updated, or a Qwen2-style one for the built-in BPE."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    decoder = config.setdefault("added_tokens_decoder", {})
    for token in tokenizer.get_added_tokens_decoder().values():
        tid = tokenizer.token_to_id(token.content)
        decoder.setdefault(
            str(tid),
            {
                "content": token.content,
                "lstrip": token.lstrip,
                "normalized": token.normalized,
                "rstrip": token.rstrip,
                "single_word": token.single_word,
                "special": token.special,
            },
        )
    config.setdefault("tokenizer_class", "Qwen2Tokenizer")
    config.setdefault("bos_token", None)
    config.setdefault("eos_token", IM_END)
    config.setdefault("pad_token", ENDOFTEXT)
    config.setdefault("unk_token", None)
    config.setdefault("add_prefix_space", False)
    config.setdefault("model_max_length", cfg.llm.max_position_embeddings)
    config.setdefault("chat_template", QWEN_CHAT_TEMPLATE)
    extra = config.setdefault("additional_special_tokens", [])
    for t in (IM_START, IM_END, cfg.prompt.audio_start, cfg.prompt.audio_token, cfg.prompt.audio_end):
        if t not in extra:
            extra.append(t)
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
