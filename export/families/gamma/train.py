"""``gamma-rt train``: teach a small GaMMA the labelled synthetic songs of ``gamma_rt.synthetic_tasks``.

The model has the family's shape (two Whisper experts, fusion, pooling projector, Qwen3 decoder) sized to
fit 8 MB in fp16 and to learn on two CPU cores:

- the audio side is *listening-initialized* and frozen: each expert's first convolution starts as a bank of
  fixed filters over the 128 mel bins (12 pitch-class filters, 4 band energies, 4 band onsets, 12 sharp
  pitch classes above 1 kHz where the STFT parts a semitone; the rest random), one channel is a clock (a
  ramp in the position table), the attention and FFN residual branches start near zero, so the fused
  features carry chroma, timbre, onsets and time. Frozen, they are computed once per clip;
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

VOCAB_SIZE = 512
RAMP = 32  # the experts' clock channel (see listen_init)
# The rhythm banks (rhythm_init): log-spaced frequencies (lo Hz, hi Hz, count) of the onsets' periodogram,
# beats of 54-198 BPM in the temporal expert, bars (and half notes) of 12-72 per minute in the global one.
BEAT_BANK_HZ = (0.9, 3.3, 47)
BAR_BANK_HZ = (0.2, 1.2, 47)
RHYTHM_SHARPNESS = 0.5
RHYTHM_GAIN = 3.0
RHYTHM_LOUDNESS = 3.0
QUESTION_WEIGHTS = {"key": 3, "tempo": 3, "instruments": 3, "meter": 3, "event": 3}  # the rest: 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a small GaMMA on labelled synthetic music (CPU: minutes)",
        description="Train a small GaMMA (two experts, fusion, projector, Qwen3 decoder; about 1M parameters) "
        "to answer questions about labelled synthetic songs: key, tempo, meter, instruments, an event time. "
        "Writes a checkpoint folder for `gamma-rt export onnx|gguf`.\n\n"
        "example: gamma-rt train --out ckpt --clips 1500 --steps 4000 --minutes 30",
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
    p.add_argument("--rhythm", action="store_true",
                   help="d 128 experts whose first attention is a periodogram of the onsets (beat and bar banks)")
    p.add_argument("--end-to-end", action="store_true",
                   help="train the experts and the fusion too, from each song's log-mel window (kept in memory, "
                   "fp16: 0.75 MB a song), instead of freezing the listening-initialized audio side")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.set_defaults(func=cmd_train)


def synthetic_config(vocab_size: int = VOCAB_SIZE, rhythm: bool = False):
    """The trained built-in's shape: d 48 experts of one layer, pool 15 (3.3 tokens/s), a 4-layer d 128 Qwen3.
    ``rhythm``: d 128 experts, room for the rhythm banks (rhythm_init) above the listening channels."""
    import dataclasses

    from gamma_rt.decoder_shape import DecoderShape

    from .config import ExpertConfig, FusionConfig, GammaConfig, ProjectorConfig

    width = dict(d_model=128, encoder_ffn_dim=128) if rhythm else dict(d_model=48, encoder_ffn_dim=96)
    expert = ExpertConfig(encoder_layers=1, encoder_attention_heads=1, **width)
    return GammaConfig(
        preset="synthetic", temporal=expert, global_=dataclasses.replace(expert),
        fusion=FusionConfig(n_blocks=1, n_heads=1, ffn_dim=64, injector_gate_init=0.1),
        projector=ProjectorConfig(pool_stride=15, hidden_dim=128),
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


# --- the listening initialization ---------------------------------------------------------------------

def _mel_centres(cfg) -> np.ndarray:
    """Centre frequency (Hz) of each mel bin of the front end."""
    from gamma_rt.runtime.mel import mel_filters

    fb = mel_filters(cfg.audio.n_mels, cfg.audio.sample_rate, cfg.audio.n_fft)  # (n_mels, n_fft // 2 + 1)
    hz = np.fft.rfftfreq(cfg.audio.n_fft, 1 / cfg.audio.sample_rate)
    return hz[np.argmax(fb, axis=1)]


def _chroma(cfg, lo: float, hi: float, width: float) -> np.ndarray:
    """(12, n_mels) pitch-class filters, zero-mean over the classes: how much of each mel bin's passband
    (its STFT bins, by the filter's weights) lies within ``width`` semitones of each class, in [lo, hi) Hz."""
    from gamma_rt.runtime.mel import mel_filters

    fb = mel_filters(cfg.audio.n_mels, cfg.audio.sample_rate, cfg.audio.n_fft)  # (n_mels, n_fft // 2 + 1)
    hz = np.maximum(np.fft.rfftfreq(cfg.audio.n_fft, 1 / cfg.audio.sample_rate), 1.0)
    pitch = 12 * np.log2(hz / 440.0) + 69
    inside = (hz >= lo) & (hz < hi)
    member = np.stack([np.maximum(0, 1 - np.abs((pitch - p + 6) % 12 - 6) / width) * inside for p in range(12)])
    chroma = member @ fb.T / np.maximum(fb.sum(1), 1e-9)  # (12, n_mels)
    chroma = chroma / np.maximum(chroma.sum(1, keepdims=True), 1e-9)
    return chroma - chroma.mean(0, keepdims=True)


def listening_filters(cfg) -> np.ndarray:
    """(32, n_mels, 3) conv1 filters: 12 pitch classes over 200-5000 Hz, 4 band energies, 4 band onsets (next
    frame minus previous), 12 sharp pitch classes over 1-5 kHz, where the STFT's 40 Hz bins part a semitone
    (the major/minor third is heard there)."""
    f = np.maximum(_mel_centres(cfg), 1.0)
    bands = np.stack([(f >= lo) & (f < hi) for lo, hi in ((0, 200), (200, 1000), (1000, 4000), (4000, 9000))])
    bands = bands / np.maximum(bands.sum(1, keepdims=True), 1)
    out = np.zeros((32, len(f), 3))
    out[:12, :, 1] = _chroma(cfg, 200, 5000, 0.5) * 8.0
    out[12:16, :, 1] = bands
    out[16:20, :, 2], out[16:20, :, 0] = bands * 4.0, -bands * 4.0
    out[20:32, :, 1] = _chroma(cfg, 1000, 5000, 0.35) * 6.0
    return out


def listen_init(model, cfg, rhythm: bool = False) -> None:
    """Give both experts the listening filters and near-zero residual branches (see the module docstring);
    ``rhythm``: and the rhythm banks, a periodogram of the onsets at beat and bar rates (rhythm_init)."""
    import torch

    from ...weights import sinusoids

    filters = torch.tensor(listening_filters(cfg), dtype=torch.float32)
    with torch.no_grad():
        for expert in (model.temporal_encoder, model.global_encoder):
            d = expert.conv1.weight.shape[0]
            expert.conv1.weight.normal_(0, 0.02)
            expert.conv1.weight[: len(filters)] = filters
            expert.conv1.bias.zero_()
            expert.conv2.weight.zero_()
            expert.conv2.weight[torch.arange(d), torch.arange(d), 1] = 1.0
            expert.conv2.bias.zero_()
            positions = 0.1 * sinusoids(*expert.embed_positions.weight.shape)
            # A clock: channel RAMP is silent in conv1 and rises 0 -> 2 over the window, so every token knows
            # its time (an event's second is where the instrument's tokens begin or end).
            expert.conv1.weight[RAMP] = 0.0
            positions[:, RAMP] = torch.linspace(0, 2, positions.shape[0])
            expert.embed_positions.weight.copy_(positions)
            for layer in expert.layers:
                layer.self_attn.out_proj.weight.normal_(0, 0.01)
                layer.fc2.weight.normal_(0, 0.01)
        for expert, bank in ((model.temporal_encoder, BEAT_BANK_HZ), (model.global_encoder, BAR_BANK_HZ)):
            if rhythm:
                rhythm_init(expert, np.geomspace(*bank))
        for block in model.fusion.blocks:
            block.injector.out_proj.weight.normal_(0, 0.01)
            block.extractor.out_proj.weight.normal_(0, 0.01)
        model.fusion.ffn[2].weight.normal_(0, 0.01)


def rhythm_init(expert, freqs: np.ndarray, sharpness: float = RHYTHM_SHARPNESS, gain: float = RHYTHM_GAIN,
                loudness: float = RHYTHM_LOUDNESS) -> None:
    """Make the expert's first attention a periodogram of the onsets at ``freqs`` (Hz).

    The position table's free channels (above the clock) hold cos and sin of 2 pi f t at each frequency. The
    attention's query is a constant (its bias), its key the frame's onset strength (the band-onset filters), so
    every token's weights are softmax(sharpness * onset) over the window; the values are the sinusoid
    channels, so each token receives sum_t w_t exp(2 pi i f t): the onset envelope's Fourier coefficient at
    each frequency. Its magnitude peaks at the beat (BEAT_BANK_HZ, temporal expert) and the bar
    (BAR_BANK_HZ, global expert); the rate is 50 Hz, so beats up to 25 Hz are resolved before any pooling.
    """
    import torch

    d = expert.conv1.weight.shape[0]
    channels = torch.arange(RAMP + 1, RAMP + 1 + 2 * len(freqs))
    if channels[-1] >= d:
        raise ValueError(f"{len(freqs)} rhythm frequencies need d_model > {int(channels[-1])}, not {d}")
    seconds = torch.arange(expert.embed_positions.weight.shape[0], dtype=torch.float64) * 0.02  # 50 Hz
    phase = 2 * torch.pi * torch.tensor(freqs)[None] * seconds[:, None]
    layer = expert.layers[0]
    attn = layer.self_attn
    with torch.no_grad():
        expert.embed_positions.weight[:, channels[0::2]] = torch.cos(phase).float()
        expert.embed_positions.weight[:, channels[1::2]] = torch.sin(phase).float()
        attn.q_proj.weight.zero_()
        attn.q_proj.bias.zero_()
        attn.q_proj.bias[0] = sharpness / attn.scaling
        attn.k_proj.weight.zero_()
        attn.k_proj.weight[0, 16:20] = 1.0  # the band onsets (listening_filters)
        attn.k_proj.weight[0, 12:16] = loudness / sharpness  # the band energies: silence (the padding) weighs nothing
        attn.v_proj.weight.zero_()
        attn.v_proj.bias.zero_()
        attn.v_proj.weight[channels, channels] = 1.0
        attn.out_proj.weight.normal_(0, 0.001)
        attn.out_proj.weight[channels, channels] = gain
        attn.out_proj.bias.zero_()


# --- data -----------------------------------------------------------------------------------------------

def clip_mels(songs, cfg) -> np.ndarray:
    """(B, n_mels, 3000) float32: each song rendered, zero-padded to the 30 s window as the runtime does."""
    from gamma_rt.runtime.mel import log_mel_spectrogram, pad_or_trim
    from gamma_rt.synth import render

    return np.stack([log_mel_spectrogram(pad_or_trim(render(s, cfg.audio.sample_rate), cfg.audio.window_samples))
                     for s in songs])


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


def encode_songs(model, cfg, songs, batch: int = 8, say=print):
    """(n, tokens, d_expert) float32 pooled features of ``songs`` (all of one length)."""
    import torch

    n_tok = valid_tokens(songs[0], cfg)
    out = torch.empty(len(songs), n_tok, cfg.temporal.d_model)
    start = time.perf_counter()
    for i in range(0, len(songs), batch):
        out[i:i + batch] = pooled_features(model, clip_mels(songs[i:i + batch], cfg))[:, :n_tok]
        if (i // batch) % 25 == 0:
            say(f"  encoded {i + len(songs[i:i + batch])}/{len(songs)} songs ({time.perf_counter() - start:.0f} s)")
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


# --- the run --------------------------------------------------------------------------------------------

def train(out: Path, clips: int = 800, steps: int = 700, batch: int = 16, lr: float = 3e-3,
          minutes: float | None = None, seed: int = 0, aux: float = 0.0, rhythm: bool = False,
          end_to_end: bool = False, say=print) -> dict:
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
        mels = torch.cat([torch.from_numpy(clip_mels(songs[i:i + 8], cfg)).half() for i in range(0, clips, 8)])
        n_tok = valid_tokens(songs[0], cfg)
    else:
        say(f"encoding {clips} training songs with the frozen audio side")
        feats = encode_songs(model, cfg, songs, say=say)
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
    opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    schedule = lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
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
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        done = step + 1
        if step % 20 == 0 or step == steps - 1:
            say(f"step {step:5d}  loss {np.mean(losses[-20:]):.4f}  ({time.perf_counter() - started:.0f} s)")
    record = {"clips": clips, "steps": steps, "steps_done": done, "batch": batch, "lr": lr, "seed": seed, "aux": aux,
              "rhythm": rhythm, "end_to_end": end_to_end,
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


def cmd_train(args) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.aux < 0:
        from gamma_rt.errors import GammaError

        raise GammaError(f"--aux {args.aux}: a loss weight is 0 or more")
    record = train(args.out, args.clips, args.steps, args.batch, args.lr, args.minutes, args.seed, args.aux, args.rhythm,
                   args.end_to_end)
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
