"""A Qwen2-style byte-level BPE, trained offline, for the random folders ``gamma-rt init`` writes.

Its pre-tokenizer is Qwen2's regex split followed by byte-level mapping, which llama.cpp's ``qwen2``
pre-tokenizer reproduces, so llama.cpp and transformers split text into the same ids. The Qwen special
tokens and the ChatML template are Qwen facts shared by every Qwen-decoder family; each family adds its
own audio tokens as ``specials``.
"""

from __future__ import annotations

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
