"""``gamma-rt train``: teach a small GaMMA the labelled synthetic songs of ``gamma_rt.synthetic_tasks``.

The model has the family's shape (two Whisper experts, fusion, pooling projector, Qwen3 decoder) sized to
fit 8 MB in fp16 and to learn on two CPU cores:

- the audio side is *listening-initialized* (listening.py) and frozen: each expert's first convolution
  starts as a bank of fixed filters over the 128 mel bins (pitch classes, band energies, band onsets), one
  channel is a clock, and (``--rhythm``) the temporal expert's attention is a periodogram of the onsets
  at beat and bar rates, in channels the global (listening) expert leaves empty, read phase-free by the
  projector's first rows. The fused features carry chroma, timbre, onsets, time, beat and bar. Frozen,
  they are computed once per clip;
- the songs: ``--rendered`` of them (none by default) composed as MIDI and rendered through a GM soundfont
  with augmentation (gamma_rt.render: real instrument timbres), the rest from the additive synth; labels
  from the same seeds, below the held-out ones;
- the projector and the decoder learn, by teacher-forced cross-entropy on the answer tokens only, from a
  BPE vocabulary of 512 trained on the questions and answers;
- ``--end-to-end``: the experts and the fusion learn too, from the same start, each step's songs run through
  them from their log-mel windows (kept in memory in fp16) instead of from features computed once.

Seeded: the same ``--seed``, ``--clips`` and ``--steps`` give the same weights. ``--minutes`` caps the wall
time (a capped run says where it stopped). The output is an ordinary checkpoint folder (fp16 safetensors,
config.json, tokenizer) that ``gamma-rt export onnx|gguf`` take as they are.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from .listening import RHYTHM_POOL, listen_init

VOCAB_SIZE = 512
QUESTION_WEIGHTS = {"key": 3, "tempo": 3, "instruments": 3, "meter": 3, "event": 3}  # the rest: 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a small GaMMA on labelled synthetic or rendered music (2 CPU cores: 15-30 min)",
        description="Train a small GaMMA (two experts, fusion, projector, Qwen3 decoder; 1.1M parameters, or 3.2M "
        "with --rhythm) to answer questions about labelled songs, from the additive synth or (--rendered) rendered "
        "through a GM soundfont: key, tempo, meter, instruments, an event time. Writes a checkpoint folder for "
        "`gamma-rt export onnx|gguf`.\n\n"
        "example: gamma-rt train --out ckpt --threads 2   (the built-in's recipe: about 15 min on 2 cores)\n"
        "         gamma-rt train --out ckpt --rhythm --rendered 0.5 --aux 0.3 --clips 3000 --steps 5000 --threads 2\n"
        "         (beat and bar banks, half the songs rendered through FluidSynth: about 30 min)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="checkpoint folder to write")
    # The defaults are the built-in's recipe (gamma_rt/builtin/train_record.json).
    p.add_argument("--clips", type=int, default=1500, help="training songs, each encoded once (default 1500)")
    p.add_argument("--steps", type=int, default=4000, help="optimizer steps (default 4000)")
    p.add_argument("--batch", type=int, default=16, help="(song, question) pairs per step (default 16)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default 3e-3)")
    p.add_argument("--minutes", type=float, default=None, help="stop training after this wall time")
    p.add_argument("--seed", type=int, default=0, help="seed of the songs, the init and the batches (default 0)")
    p.add_argument("--aux", type=float, default=0.0,
                   help="weight of the training-only tempo/meter/event heads on the projector (default 0: off)")
    p.add_argument("--rhythm", action=argparse.BooleanOptionalAction, default=False,
                   help="d 224 experts whose first attention is a periodogram of the onsets (beat and bar banks), "
                   "pooled to 8.3 tokens a second, the banks on the first 12 tokens of each window and the listening "
                   "channels on the rest (default --no-rhythm: the d 48 listening experts, 3.3 a second)")
    p.add_argument("--end-to-end", action="store_true",
                   help="train the experts and the fusion too, from each song's log-mel window (kept in memory, "
                   "fp16: 0.75 MB a song), instead of freezing the listening-initialized audio side")
    p.add_argument("--rendered", type=float, default=0.0, metavar="SHARE",
                   help="share of the training songs composed as MIDI and rendered through FluidSynth with a GM "
                   "soundfont, augmented (0-1; default 0: all from the additive synth; needs fluidsynth and "
                   "fluid-soundfont-gm)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=cmd_train)


def synthetic_config(vocab_size: int = VOCAB_SIZE, rhythm: bool = False):
    """The trained built-in's shape: d 48 experts of one layer, pool 15 (3.3 tokens/s), a 4-layer d 128 Qwen3.
    ``rhythm``: d 224 experts with room for both rhythm banks (rhythm_init) above the listening channels
    and 33 random mel projections above the banks,
    pool 6 (8.3 tokens/s, so the tokens resolve beats) and a projector wide enough for the banks' magnitudes."""
    import dataclasses

    from gamma_rt.decoder_shape import DecoderShape

    from .config import ExpertConfig, FusionConfig, GammaConfig, ProjectorConfig

    width = dict(d_model=224, encoder_ffn_dim=192) if rhythm else dict(d_model=48, encoder_ffn_dim=96)
    expert = ExpertConfig(encoder_layers=1, encoder_attention_heads=1, **width)
    return GammaConfig(
        preset="synthetic", temporal=expert, global_=dataclasses.replace(expert),
        fusion=FusionConfig(n_blocks=1, n_heads=1, ffn_dim=64, injector_gate_init=0.1),
        projector=ProjectorConfig(pool_stride=RHYTHM_POOL if rhythm else 15, hidden_dim=640 if rhythm else 128),
        llm=DecoderShape(vocab_size=vocab_size, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=4096,
                         tie_word_embeddings=True),
    )

# --- tokenizer ------------------------------------------------------------------------------------------

def train_tokenizer(folder: Path, cfg):
    """A byte-level BPE (Qwen2 split) of ``cfg.llm.vocab_size`` on the task's text; writes the tokenizer files."""
    from gamma_rt.synthetic_tasks import corpus

    from ...bpe import train_qwen2_bpe
    from .tokenizer import _write_tokenizer_config, special_tokens

    specials = special_tokens(cfg)
    tok = train_qwen2_bpe(corpus(), cfg.llm.vocab_size - len(specials), specials)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    _write_tokenizer_config(folder, tok, cfg)
    return tok

# --- data -----------------------------------------------------------------------------------------------

def clip_mels(songs, cfg) -> np.ndarray:
    """(B, n_mels, 3000) float32: each song rendered, zero-padded to the 30 s window as the runtime does."""
    from gamma_rt.runtime.mel import log_mel_spectrogram, pad_or_trim
    from gamma_rt.synth import render

    return np.stack([log_mel_spectrogram(pad_or_trim(render(s, cfg.audio.sample_rate), cfg.audio.window_samples))
                     for s in songs])


def is_rendered(index: int, rendered: float) -> bool:
    """Whether training clip ``index`` comes from FluidSynth (a ``rendered`` share of them, spread evenly)."""
    return math.floor((index + 1) * rendered) > math.floor(index * rendered)


def training_mels(songs, cfg, rendered: float = 0.0, batch: int = 8):
    """Yield (first index, (b, n_mels, 3000) float32 log-mels) over ``songs`` in order: the ``rendered`` share
    of them composed as MIDI and rendered through a GM soundfont with augmentation (gamma_rt.render), the rest
    from the additive synth."""
    from gamma_rt.runtime.mel import log_mel_spectrogram, pad_or_trim

    picked = [i for i in range(len(songs)) if is_rendered(i, rendered)]
    renders = iter(())
    if picked:
        from gamma_rt.render import rendered_songs

        renders = rendered_songs([songs[i].seed for i in picked], songs[0].seconds)
    for start in range(0, len(songs), batch):
        rows = []
        for i in range(start, min(start + batch, len(songs))):
            if is_rendered(i, rendered):
                audio, song = next(renders)
                assert song == songs[i], (song, songs[i])
                rows.append(log_mel_spectrogram(pad_or_trim(audio, cfg.audio.window_samples)))
            else:
                rows.append(clip_mels([songs[i]], cfg)[0])
        yield start, np.stack(rows)


def valid_tokens(song, cfg) -> int:
    """LLM tokens of the song's one window, by the manifest's ``proportional`` rule."""
    n = int(round(song.seconds * cfg.audio.sample_rate))
    return max(1, min(cfg.tokens_per_window, math.ceil(n * cfg.tokens_per_window / cfg.audio.window_samples)))


def pooled_features(model, mel, grad: bool = False):
    """(B, n_mels, 3000) -> (B, tokens_per_window, d_expert): the audio side up to the projector's pool
    (``mel`` a numpy array or a tensor); ``grad``: with autograd, for training the audio side end to end."""
    import torch
    from torch.nn import functional as F

    with torch.set_grad_enabled(grad):
        x = torch.as_tensor(mel, dtype=torch.float32)
        fused = model.fusion(model.temporal_encoder(x).last_hidden_state, model.global_encoder(x).last_hidden_state)
        stride = model.projector.pool_stride
        return F.avg_pool1d(fused.transpose(1, 2), stride, stride).transpose(1, 2)


def audio_side(model) -> list:
    """The parameters training end to end adds: both experts and the fusion."""
    return [p for part in (model.temporal_encoder, model.global_encoder, model.fusion) for p in part.parameters()]


def encode_songs(model, cfg, songs, batch: int = 8, rendered: float = 0.0, say=print):
    """(n, tokens, d_expert) float32 pooled features of ``songs`` (all of one length; ``rendered``: the share
    heard through FluidSynth, training_mels)."""
    import torch

    n_tok = valid_tokens(songs[0], cfg)
    out = torch.empty(len(songs), n_tok, cfg.temporal.d_model)
    start = time.perf_counter()
    for i, mels in training_mels(songs, cfg, rendered, batch):
        out[i:i + len(mels)] = pooled_features(model, mels)[:, :n_tok]
        if (i // batch) % 25 == 0:
            say(f"  encoded {i + len(mels)}/{len(songs)} songs ({time.perf_counter() - start:.0f} s)")
    return out


class Prompter:
    """Token ids of the runtime's prompt pieces: head, then the audio, then tail(question), then the answer."""

    def __init__(self, tokenizer, cfg):
        p = cfg.prompt
        before, after = p.user_template.split("{audio}")
        self.tok = tokenizer
        self.head = self.ids(before + p.audio_start)
        self.after = after
        self.audio_end = p.audio_end
        self.stop = self.ids(p.stop[0])

    def ids(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def tail(self, question: str) -> list[int]:
        return self.ids(self.audio_end + self.after.replace("{question}", question))


def make_batch(model, prompter, feats, songs, picks, answers_of):
    """Input embeddings (B, T, d_llm), labels (B, T) with -100 off the answers, for pairs (song index, question)."""
    import torch

    from gamma_rt.synthetic_tasks import QUESTION_OF

    embed = model.llm.get_input_embeddings()
    rows, labels = [], []
    for song_i, name in picks:
        tail = prompter.tail(QUESTION_OF[name].text)
        answer = prompter.ids(answers_of(song_i)[name]) + prompter.stop
        text = torch.tensor(prompter.head), torch.tensor(tail + answer)
        feature = feats[song_i]  # a row of the frozen features, or of this step's (a dict by song)
        rows.append(torch.cat([embed(text[0]), model.projector.linear_2(
            torch.nn.functional.gelu(model.projector.linear_1(feature))), embed(text[1])]))
        n_before = len(prompter.head) + len(feature) + len(tail)
        labels.append(torch.tensor([-100] * n_before + answer))
    length = max(len(r) for r in rows)
    x = torch.zeros(len(rows), length, rows[0].shape[1])
    y = torch.full((len(rows), length), -100)
    for i, (r, lab) in enumerate(zip(rows, labels)):
        x[i, :len(r)], y[i, :len(lab)] = r, lab
    return x, y


def answer_loss(model, x, y):
    """Cross-entropy of the next token at answer positions only (the lm_head runs on those alone)."""
    import torch

    hidden = model.llm.model(inputs_embeds=x).last_hidden_state[:, :-1]
    target = y[:, 1:]
    keep = target != -100
    return torch.nn.functional.cross_entropy(model.llm.lm_head(hidden[keep]), target[keep])


class AuxHeads:
    """Training-only heads on the projector's output (never saved, so the checkpoint keeps GaMMA's shape):
    the song's tempo (one class per BPM) and meter from the mean over its tokens, and per token whether the
    event instrument sounds there. They pull the projector towards what the decoder must read out."""

    def __init__(self, d_llm: int):
        import torch

        from gamma_rt.synth import BPM_RANGE

        self.bpm_lo = BPM_RANGE[0]
        self.song = torch.nn.Linear(d_llm, BPM_RANGE[1] - BPM_RANGE[0] + 1 + 2)
        self.token = torch.nn.Linear(d_llm, 1)

    def parameters(self):
        return list(self.song.parameters()) + list(self.token.parameters())

    def loss(self, audio, songs, seconds_per_token: float):
        """``audio`` (B, T, d_llm) projector outputs of ``songs``: the summed cross-entropies."""
        import torch
        from torch.nn import functional as F

        n_bpm = self.song.out_features - 2
        logits = self.song(audio.mean(1))
        bpm = torch.tensor([s.bpm - self.bpm_lo for s in songs])
        meter = torch.tensor([int(s.beats_per_bar == 4) for s in songs])
        t = (torch.arange(audio.shape[1]) + 0.5) * seconds_per_token
        sounding = torch.stack([(t >= s.event_second) if s.event == "enters" else (t < s.event_second)
                                for s in songs]).float()
        return (F.cross_entropy(logits[:, :n_bpm], bpm) + F.cross_entropy(logits[:, n_bpm:], meter)
                + F.binary_cross_entropy_with_logits(self.token(audio)[..., 0], sounding))


def optimizer(trainable: list, lr: float, steps: int):
    """AdamW and its schedule: a linear warmup over the first 5 % of ``steps``, then a cosine to zero."""
    import torch

    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    schedule = lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))  # noqa: E731
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


def optimizer_step(loss, opt, sched, trainable: list) -> float:
    """One step on ``loss`` (gradients clipped to norm 1); the loss as a float."""
    import torch

    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, 1.0)
    opt.step()
    sched.step()
    return loss.item()


# --- the run --------------------------------------------------------------------------------------------

def train(out: Path, clips: int = 800, steps: int = 700, batch: int = 16, lr: float = 3e-3,
          minutes: float | None = None, seed: int = 0, aux: float = 0.0, rhythm: bool = False,
          end_to_end: bool = False, rendered: float = 0.0, command: str | None = None, say=print) -> dict:
    """Train and write the checkpoint folder ``out``; returns the training record (also out/train_record.json)."""
    import torch

    from gamma_rt.synthetic_tasks import QUESTIONS, answers, train_song

    from .model import GammaModel

    started = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfg = synthetic_config(rhythm=rhythm)
    tokenizer = train_tokenizer(out, cfg)
    model = GammaModel(cfg)
    listen_init(model, cfg, rhythm)
    with torch.no_grad():  # train on the weights that ship: the checkpoint is fp16
        for param in model.parameters():
            param.copy_(param.half().float())
    model.eval()
    songs = [train_song(i, seed) for i in range(clips)]
    if end_to_end:  # the log-mel windows, each step's songs through the audio side with autograd
        say(f"rendering {clips} training songs to log-mel windows")
        mels = torch.cat([torch.from_numpy(m).half() for _, m in training_mels(songs, cfg, rendered)])
        n_tok = valid_tokens(songs[0], cfg)
    else:
        say(f"encoding {clips} training songs with the frozen audio side")
        feats = encode_songs(model, cfg, songs, rendered=rendered, say=say)
    encode_s = time.perf_counter() - started
    prompter = Prompter(tokenizer, cfg)
    cached: dict[int, dict[str, str]] = {}
    answers_of = lambda i: cached.setdefault(i, answers(songs[i]))  # noqa: E731
    names = [q.name for q in QUESTIONS]
    weights = np.array([QUESTION_WEIGHTS.get(n, 1) for n in names], float)
    heads = AuxHeads(cfg.llm.hidden_size)
    trainable = list(model.projector.parameters()) + list(model.llm.parameters()) + (heads.parameters() if aux else [])
    trainable += audio_side(model) if end_to_end else []
    seconds_per_token = cfg.audio.window_seconds / cfg.tokens_per_window
    opt, sched = optimizer(trainable, lr, steps)
    model.llm.train()
    losses, done = [], 0
    for step in range(steps):
        if minutes is not None and time.perf_counter() - started > minutes * 60:
            say(f"stopped at step {step} of {steps}: --minutes {minutes} reached")
            break
        picks = [(int(i), names[int(q)]) for i, q in
                 zip(rng.integers(0, clips, batch), rng.choice(len(names), batch, p=weights / weights.sum()))]
        chosen = sorted({i for i, _ in picks})
        if end_to_end:
            pooled = pooled_features(model, mels[chosen].float(), grad=True)[:, :n_tok]
            feats = dict(zip(chosen, pooled))
        x, y = make_batch(model, prompter, feats, songs, picks, answers_of)
        loss = answer_loss(model, x, y)
        if aux:
            rows = torch.stack([feats[i] for i in chosen])
            audio = model.projector.linear_2(torch.nn.functional.gelu(model.projector.linear_1(rows)))
            loss = loss + aux * heads.loss(audio, [songs[i] for i in chosen], seconds_per_token)
        losses.append(optimizer_step(loss, opt, sched, trainable))
        done = step + 1
        if step % 20 == 0 or step == steps - 1:
            say(f"step {step:5d}  loss {np.mean(losses[-20:]):.4f}  ({time.perf_counter() - started:.0f} s)")
    record = {"command": command, "clips": clips, "steps": steps, "steps_done": done, "batch": batch, "lr": lr,
              "seed": seed, "aux": aux, "rhythm": rhythm, "end_to_end": end_to_end, "rendered": rendered,
              "encode_s": round(encode_s, 1), "total_s": round(time.perf_counter() - started, 1),
              "first_loss": round(float(np.mean(losses[:10])), 4) if losses else None,
              "final_loss": round(float(np.mean(losses[-20:])), 4) if losses else None,
              "threads": torch.get_num_threads(), "losses": [round(v, 4) for v in losses]}
    write_checkpoint(model, cfg, out)
    (out / "train_record.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def write_checkpoint(model, cfg, out: Path) -> Path:
    """config.json + model.safetensors (fp16; the tied lm_head left out) into ``out``."""
    import torch
    from safetensors.torch import save_file

    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()
             if not (cfg.llm.tie_word_embeddings and k == "llm.lm_head.weight")}
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out)
    tmp = out / "model.safetensors.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.rename(out / "model.safetensors")
    return out


def _command(args) -> str:
    """The command line that repeats this run (its output folder as given), every choice spelled out."""
    words = ["gamma-rt", "train", "--out", str(args.out), "--clips", str(args.clips), "--steps", str(args.steps),
             "--batch", str(args.batch), "--lr", str(args.lr), "--seed", str(args.seed), "--aux", str(args.aux),
             "--rhythm" if args.rhythm else "--no-rhythm", "--rendered", str(args.rendered)]
    words += ["--end-to-end"] if args.end_to_end else []
    words += ["--minutes", str(args.minutes)] if args.minutes is not None else []
    words += ["--threads", str(args.threads)] if args.threads else []
    return " ".join(words)


def cmd_train(args) -> int:
    import torch

    from gamma_rt.errors import GammaError

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.aux < 0:
        raise GammaError(f"--aux {args.aux}: a loss weight is 0 or more")
    if not 0.0 <= args.rendered <= 1.0:
        raise GammaError(f"--rendered {args.rendered}: a share of the songs, from 0 to 1")
    if args.rendered:
        from gamma_rt.render import available

        if (why := available()) is not None:
            raise GammaError(f"--rendered needs FluidSynth and a GM soundfont ({why}): apt-get install "
                             "fluidsynth fluid-soundfont-gm")
    record = train(args.out, args.clips, args.steps, args.batch, args.lr, args.minutes, args.seed, args.aux,
                   args.rhythm, args.end_to_end, args.rendered, command=_command(args))
    print(json.dumps(record))
    print(f"wrote {args.out}: next, gamma-rt export onnx {args.out} --out BUNDLE && "
          f"gamma-rt export gguf {args.out} --out BUNDLE")
    return 0


# --- answers of the PyTorch model (gamma-rt eval --checkpoint) ------------------------------------------

def checkpoint_replies(folder: Path, songs, questions: list[str], max_tokens: int = 32) -> list[list[str]]:
    """Per song, the checkpoint's greedy reply to each question: the runtime's prompt and window, in PyTorch."""
    import torch
    from tokenizers import Tokenizer

    from .checkpoint import Checkpoint

    ckpt = Checkpoint(folder)
    model, cfg = ckpt.model(), ckpt.config
    prompter = Prompter(Tokenizer.from_file(str(Path(folder) / "tokenizer.json")), cfg)
    embed = model.llm.get_input_embeddings()
    out = []
    with torch.no_grad():
        for song in songs:
            audio = model.encode_window(torch.from_numpy(clip_mels([song], cfg)))[0, :valid_tokens(song, cfg)]
            head = torch.cat([embed(torch.tensor(prompter.head)), audio])
            out.append([_greedy(model, prompter, torch.cat([head, embed(torch.tensor(prompter.tail(q)))]), max_tokens)
                        for q in questions])
    return out


def _greedy(model, prompter, x, max_tokens: int) -> str:
    """Greedy decoding from embeddings ``x`` (T, d) until the stop token; the decoded text."""
    import torch

    ids, cache = [], None
    step = x[None]
    for _ in range(max_tokens):
        result = model.llm(inputs_embeds=step, past_key_values=cache, use_cache=True)
        cache = result.past_key_values
        token = int(result.logits[0, -1].argmax())
        if token in prompter.stop:
            break
        ids.append(token)
        step = model.llm.get_input_embeddings()(torch.tensor([[token]]))
    return prompter.tok.decode(ids)
