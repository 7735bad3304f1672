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

from .config import GammaConfig

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")

# Qwen2's pre-tokenizer split, copied from Qwen2's tokenizer.json; llama.cpp's "qwen2" pre-tokenizer uses it too.
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"

# The Qwen chat template (ChatML), without Qwen3's tool-calling and thinking branches.
QWEN_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Training text for the built-in BPE: enough music-description English that common words become single tokens.
TRAINING_TEXT = """\
This track is an upbeat pop song in a major key with a steady four-on-the-floor drum beat at about 120 beats
per minute. The verse is sparse, with a clean electric guitar and a soft female vocal; the chorus opens up
with layered synthesizers, a driving bass line and backing harmonies. The bridge drops to a quiet piano
passage before the final chorus returns with more energy. Overall the mood is bright, happy and energetic.

A slow jazz ballad played by a piano trio. The upright bass walks gently under brushed drums while the
piano states the melody with rich extended chords. The tempo is around 70 BPM in 4/4 time, the key is
B flat major, and the song follows a classic AABA form. The solo section features the piano improvising
over the changes; the mood is calm, warm, late-night and romantic.

An aggressive heavy metal song with distorted guitars, double-kick drums and a harsh male vocal. The riff
is built on a low-tuned power chord pattern in E minor. The tempo is fast, roughly 180 beats per minute.
After the second chorus there is a breakdown with half-time drums, followed by a shredding guitar solo.

This is an ambient electronic piece with long evolving pads, a distant reverb-heavy piano and field
recordings of rain. There are no drums and no vocals. The harmony moves slowly between two chords, and
the texture is wide, soft and dreamy. It would suit meditation, study or a film scene at dawn.

A classical string quartet in a minor key. The first violin carries a lyrical melody, the second violin and
viola play repeated eighth notes, and the cello holds a sustained bass. The movement starts quietly, builds
to a dramatic climax in the middle and fades out at the end. The instrumentation is acoustic and the
recording sounds like a concert hall.

A hip hop beat with a boom bap drum pattern, a sampled soul vocal chopped into short phrases, vinyl crackle
and a deep sub bass. A male rapper delivers fast verses; the hook is sung. The tempo is about 90 BPM and
the song structure is intro, verse, hook, verse, hook, outro.

Reggae with an offbeat guitar skank, a heavy bass line, one drop drums and an organ bubble. The vocal is
relaxed and the lyrics are about love and unity. The tempo is slow and the groove is laid back.

A folk song with an acoustic guitar, a harmonica and a gentle male voice. The singer tells a story in
several verses, with a short chorus after each. The recording is intimate and dry, with little reverb.

Electronic dance music: a house track at 124 BPM with a pumping side-chained bass, crisp hi-hats, claps on
two and four and a filtered vocal sample. The drop arrives after a sixteen-bar build with a rising riser
and snare roll. The key is F minor and the energy is high throughout.

Question: What genre is this song? Answer: rock. Question: What is the tempo? Answer: 128 BPM.
Question: Which instruments can you hear? Answer: drums, bass, electric guitar, piano and vocals.
Question: Describe the structure of the song. Answer: intro, verse, chorus, verse, chorus, bridge,
chorus, outro. Question: What is the mood? Answer: melancholic, sad, nostalgic, tense, joyful, peaceful.
Question: When does the chorus start? Answer: at 0:45, and again at 1:50 and 2:40 seconds.
Question: Is there a singer? Answer: yes, a female singer with a breathy voice; no, it is instrumental.
The key signature, time signature, chord progression, timbre, dynamics, rhythm, meter and genre tags are:
blues, country, soul, funk, disco, techno, trance, dubstep, drum and bass, lo-fi, orchestral, cinematic.
"""


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


def train_qwen2_bpe(texts, bpe_size: int, specials: list[str]):
    """A byte-level BPE of ``bpe_size`` entries trained on ``texts``, with Qwen2's pre-tokenizer, then the
    ``specials`` after it (as in Qwen: 151643 = <|endoftext|>), so llama.cpp's ``qwen2`` pre-tokenizer splits
    text as it does. The one recipe behind the tiny GaMMA, flamingo and trained tokenizers."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    # The same two-stage pre-tokenizer as Qwen2's tokenizer.json: regex split, then bytes -> printable chars.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=bpe_size, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tokenizer


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
