"""What the small GaMMA's decoder learns from frozen audio features, one change at a time (issue 26).

``gamma-rt train`` encodes its songs once with the frozen, listening-initialized audio side and then trains
the projector and decoder. This probe splits the two so that many changes can be tried on one encoding:

    encode  CACHE   the training songs (a ``--rendered`` share through FluidSynth) and 100 held-out songs,
                    pooled features as ``gamma-rt train`` computes them (``--rhythm`` or not), fp16
    train   CACHE   train a fresh projector and decoder on the cached features, as ``gamma-rt train`` does
                    (same init, batches, schedule; no aux heads), after a ``--variant``; then ask the 100
                    held-out songs the five scored questions greedily and score them as ``gamma-rt eval``
    linear  CACHE   linear probes on song-mean features: key from the listening channels, tempo and meter
                    from the rhythm banks' magnitudes, fitted on the training songs, scored on the held-out

A variant is a comma-separated list of changes to the cached features: ``listen=K`` ``banks=K`` ``rand=K``
multiply the listening channels and clock (0-32), the bank channels, or those above the banks by K;
``meanmix=K`` adds K times the song's mean of the listening channels (0-31) to every token;
``pool=K`` averages K tokens into one; ``banktokens=K`` keeps the banks on the last K tokens only and the
listening channels and clock on the others only; ``hidden=K`` trains a fresh projector of hidden width K at
PyTorch's default init; ``as224`` puts a d 48 cache's channels into the d 224 layout (listening channels and
clock in place, its random projections above the banks, zeros in the banks) and trains the d 224 model's
projector on them; ``tokennorm`` scales each token's 32 listening channels to one
norm (TOKEN_NORM); ``synth`` trains on the additive-synth songs only; ``plainproj``
starts the projector from PyTorch's default init instead of the listening one; ``none`` changes nothing.

example:
    python -m gamma_rt.bench.feature_probe encode --out /tmp/feats.pt --songs 2000 --rendered 0.5 --threads 2
    python -m gamma_rt.bench.feature_probe train /tmp/feats.pt --variant banks=0 --steps 3000 \\
        --json bench/results/feature_probe.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from gamma_rt.errors import GammaError

from .entry import run_module, write_json

EVAL_SONGS = 100
SCALED = ("listen", "banks", "rand")
MIXED = ("meanmix",)
FLAGS = ("synth", "plainproj", "tokennorm", "as224", "none")
SIZED = ("pool", "hidden", "banktokens")
TOKEN_NORM = 5.0  # tokennorm: the 32 listening channels' norm per token, about the d 48 features' own


def _model(rhythm: bool, seed: int = 0):
    """The model ``gamma-rt train`` starts from: listening init, weights rounded to fp16."""
    import torch

    from gamma_rt.export.families.gamma.listening import listen_init
    from gamma_rt.export.families.gamma.model import GammaModel
    from gamma_rt.export.families.gamma.train import synthetic_config

    torch.manual_seed(seed)
    cfg = synthetic_config(rhythm=rhythm)
    model = GammaModel(cfg)
    listen_init(model, cfg, rhythm)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(param.half().float())
    return model.eval(), cfg


def encode(out: Path, songs: int, rendered: float, rhythm: bool, held_out: int = EVAL_SONGS) -> dict:
    import torch

    from gamma_rt.export.families.gamma.train import encode_songs
    from gamma_rt.synthetic_tasks import eval_song, train_song

    model, cfg = _model(rhythm)
    start = time.perf_counter()
    train = encode_songs(model, cfg, [train_song(i) for i in range(songs)], rendered=rendered)
    held_out = encode_songs(model, cfg, [eval_song(i) for i in range(held_out)])
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"train": train.half(), "eval": held_out.half(), "songs": songs, "rendered": rendered,
                "rhythm": rhythm}, out)
    return {"cache": str(out), "songs": songs, "rendered": rendered, "rhythm": rhythm,
            "seconds": round(time.perf_counter() - start, 1)}


def parse_variant(text: str) -> dict:
    """``"listen=3,synth"`` -> {"listen": 3.0, "synth": True}; a clear error for anything else."""
    out: dict = {}
    for part in filter(None, text.split(",")):
        name, _, value = part.partition("=")
        if name in FLAGS and not value:
            out[name] = True
        elif name in SCALED + MIXED + SIZED and value:
            try:
                out[name] = int(value) if name in SIZED else float(value)
            except ValueError:
                raise GammaError(f"--variant {text!r}: {name} takes a number, not {value!r}") from None
            if name in SIZED and out[name] < 1:
                raise GammaError(f"--variant {text!r}: {name} is 1 or more")
        else:
            raise GammaError(f"--variant {text!r}: {part!r} is none of "
                             + " ".join([f"{n}=K" for n in SCALED + MIXED + SIZED] + list(FLAGS)))
    return out


def _changed(feats, variant: dict):
    """(n, tokens, d) features after the variant's scales and pooling."""
    import torch

    from gamma_rt.export.families.gamma.listening import BANKS_END, RAMP

    if variant.get("as224"):
        if feats.shape[-1] != 48:
            raise GammaError(f"--variant as224 takes a d 48 cache, not d {feats.shape[-1]}")
        wide = torch.zeros(*feats.shape[:-1], 224, dtype=feats.dtype)
        wide[..., :RAMP + 1] = feats[..., :RAMP + 1]
        wide[..., BANKS_END:BANKS_END + 48 - RAMP - 1] = feats[..., RAMP + 1:]
        feats = wide
    scale = torch.ones(feats.shape[-1])
    for name, part in zip(SCALED, (slice(0, RAMP + 1), slice(RAMP + 1, BANKS_END), slice(BANKS_END, None))):
        scale[part] *= variant.get(name, 1.0)
    feats = feats.float() * scale
    if k := variant.get("meanmix"):  # what an expert attending evenly over the song would add to each token
        feats[..., :RAMP] += k * feats[..., :RAMP].mean(dim=-2, keepdim=True)
    if variant.get("tokennorm"):  # each token's listening channels to one norm, as a per-frame LayerNorm of
        # them alone would (the d 48 experts' does, as those channels dominate it; the d 224's is the banks')
        x = feats[..., :RAMP]
        feats[..., :RAMP] = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6) * TOKEN_NORM
    if (k := variant.get("pool", 1)) > 1:
        feats = torch.nn.functional.avg_pool1d(feats.transpose(1, 2), k, k, ceil_mode=True).transpose(1, 2)
    if k := variant.get("banktokens"):  # what a router that sends the last K tokens to the rhythm expert would
        # hand on: the banks on those tokens alone, the listening channels and clock on the others alone
        if k >= feats.shape[-2]:
            raise GammaError(f"--variant banktokens={k}: the features have only {feats.shape[-2]} tokens")
        feats[..., :-k, RAMP + 1:BANKS_END] = 0.0
        feats[..., -k:, :RAMP + 1] = 0.0
    return feats


def _load(cache: Path) -> dict:
    import torch

    if not cache.is_file():
        raise GammaError(f"{cache}: no feature cache (make one with `feature_probe encode --out {cache}`)")
    return torch.load(cache)


def train(cache: Path, variant_text: str, steps: int, seed: int = 0, say=print) -> dict:
    """Train projector + decoder on the cache's features after the variant; the held-out accuracy."""
    import tempfile

    import torch

    from gamma_rt.evaluation import MAX_ANSWER_TOKENS
    from gamma_rt.export.families.gamma import train as T
    from gamma_rt.synthetic_tasks import ATTRIBUTES, QUESTIONS, SCORED_QUESTIONS, answers, eval_song, score, train_song

    variant = parse_variant(variant_text)
    c = _load(cache)
    feats, held_out = _changed(c["train"], variant), _changed(c["eval"], variant)
    n = c["songs"]
    model, cfg = _model(c["rhythm"] or bool(variant.get("as224")), seed)
    rng = np.random.default_rng(seed)
    if variant.get("plainproj"):
        model.projector.linear_1.reset_parameters()
        model.projector.linear_2.reset_parameters()
    if "hidden" in variant:
        import dataclasses

        from gamma_rt.export.families.gamma.model import Projector

        cfg.projector = dataclasses.replace(cfg.projector, hidden_dim=variant["hidden"])
        model.projector = Projector(feats.shape[-1], cfg.llm.hidden_size, cfg.projector)
    keep = np.array([i for i in range(n) if not (variant.get("synth") and T.is_rendered(i, c["rendered"]))])
    with tempfile.TemporaryDirectory() as tmp:
        prompter = T.Prompter(T.train_tokenizer(Path(tmp), cfg), cfg)
    songs = [train_song(i) for i in range(n)]
    cached: dict = {}
    answers_of = lambda i: cached.setdefault(i, answers(songs[i]))  # noqa: E731
    names = [q.name for q in QUESTIONS]
    weights = np.array([T.QUESTION_WEIGHTS.get(x, 1) for x in names], float)
    trainable = list(model.projector.parameters()) + list(model.llm.parameters())
    opt, sched = T.optimizer(trainable, 3e-3, steps)
    model.llm.train()
    losses, start = [], time.perf_counter()
    for step in range(steps):
        picks = [(int(i), names[int(q)]) for i, q in zip(keep[rng.integers(0, len(keep), 16)],
                                                         rng.choice(len(names), 16, p=weights / weights.sum()))]
        x, y = T.make_batch(model, prompter, feats, songs, picks, answers_of)
        losses.append(T.optimizer_step(T.answer_loss(model, x, y), opt, sched, trainable))
        if step % 250 == 0:
            say(f"step {step:5d}  loss {np.mean(losses[-50:]):.4f}  ({time.perf_counter() - start:.0f} s)")
    model.llm.eval()
    embed = model.llm.get_input_embeddings()
    replies = []
    with torch.no_grad():
        for f in held_out:
            audio = model.projector.linear_2(torch.nn.functional.gelu(model.projector.linear_1(f)))
            head = torch.cat([embed(torch.tensor(prompter.head)), audio])
            replies.append(dict(zip(ATTRIBUTES, [T._greedy(model, prompter, torch.cat(
                [head, embed(torch.tensor(prompter.tail(q)))]), MAX_ANSWER_TOKENS) for q in SCORED_QUESTIONS])))
    scores = [score(eval_song(i), r) for i, r in enumerate(replies)]
    return {"variant": variant_text, "steps": steps, "seed": seed, "train_songs": int(len(keep)),
            "rendered": c["rendered"], "rhythm": c["rhythm"], "held_out": len(replies),
            "final_loss": round(float(np.mean(losses[-50:])), 4) if losses else None,
            "seconds": round(time.perf_counter() - start, 1),
            "accuracy": {a: round(sum(s[a] for s in scores) / max(1, len(scores)), 3) for a in ATTRIBUTES},
            "key_replies": [r["key"] for r in replies[:8]]}


def _softmax_probe(x, y, held_out, classes: int, decay: float, iters: int = 600):
    """Predicted classes of ``held_out`` from a multinomial logistic regression on standardized ``x``."""
    import torch

    mu, sd = x.mean(0), x.std(0) + 1e-6
    w = torch.zeros(x.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    for _ in range(iters):
        loss = torch.nn.functional.cross_entropy((x - mu) / sd @ w + b, y) + decay * w.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return ((held_out - mu) / sd @ w + b).argmax(1)


def linear(cache: Path) -> dict:
    """Held-out accuracy of linear probes on song-mean features: what a decoder could read at best linearly."""
    import torch

    from gamma_rt.export.families.gamma.listening import RAMP, bank_channels
    from gamma_rt.synthetic_tasks import TEMPO_TOLERANCE, eval_song, train_song

    c = _load(cache)
    songs = [train_song(i) for i in range(c["songs"])]
    held = [eval_song(i) for i in range(len(c["eval"]))]
    keys = sorted({s.key for s in songs} | {s.key for s in held})
    x, e = c["train"].float(), c["eval"].float()
    out = {}
    key = _softmax_probe(x.mean(1)[:, :RAMP], torch.tensor([keys.index(s.key) for s in songs]),
                         e.mean(1)[:, :RAMP], len(keys), 1e-3)
    out["key_from_listening_channels"] = round(float(np.mean([keys[k] == s.key for k, s in zip(key, held)])), 3)
    if c["rhythm"]:
        channels = np.concatenate([ch for _, ch in bank_channels().values()])
        mags = lambda f: f[..., channels].reshape(*f.shape[:-1], -1, 2).norm(dim=-1).mean(1)  # noqa: E731
        lo = min(s.bpm for s in songs)
        bpm = _softmax_probe(mags(x), torch.tensor([s.bpm - lo for s in songs]), mags(e),
                             max(s.bpm for s in songs) - lo + 1, 1e-4, 800)
        out["tempo_from_bank_magnitudes"] = round(float(np.mean(
            [abs(int(p) + lo - s.bpm) <= TEMPO_TOLERANCE * s.bpm for p, s in zip(bpm, held)])), 3)
        meter = _softmax_probe(mags(x), torch.tensor([int(s.beats_per_bar == 4) for s in songs]), mags(e), 2, 1e-4)
        out["meter_from_bank_magnitudes"] = round(float(np.mean(
            [int(p) == int(s.beats_per_bar == 4) for p, s in zip(meter, held)])), 3)
    return {"cache": str(cache), "songs": c["songs"], "rendered": c["rendered"], "rhythm": c["rhythm"],
            "held_out": len(held), "accuracy": out}


def _append(path: Path | None, record: dict) -> None:
    """Add ``record`` to the JSON file's "runs" (the machine and versions once), or print it."""
    print(json.dumps(record))
    if path is None:
        return
    import platform

    import torch

    result = json.loads(path.read_text()) if path.is_file() else {
        "format": "gamma-rt-feature-probe/1", "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__, "runs": []}
    result["runs"].append(record)
    write_json(path, result)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gamma_rt.bench.feature_probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="stage", required=True)
    e = sub.add_parser("encode", help="encode training and held-out songs once into a feature cache")
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--songs", type=int, default=2000)
    e.add_argument("--rendered", type=float, default=0.5)
    e.add_argument("--held-out", type=int, default=EVAL_SONGS)
    e.add_argument("--rhythm", action=argparse.BooleanOptionalAction, default=True)
    t = sub.add_parser("train", help="train projector + decoder on a cache after a variant; held-out accuracy")
    t.add_argument("cache", type=Path)
    t.add_argument("--variant", default="none")
    t.add_argument("--steps", type=int, default=3000)
    t.add_argument("--seed", type=int, default=0)
    lin = sub.add_parser("linear", help="linear probes on song-mean features")
    lin.add_argument("cache", type=Path)
    for s in (e, t, lin):
        s.add_argument("--threads", type=int, default=None)
        s.add_argument("--json", type=Path, default=None, help="add the record to this JSON file's runs")
    args = p.parse_args(argv)

    def job(command: str) -> None:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        if args.stage == "encode":
            if not 0 <= args.rendered <= 1:
                raise GammaError(f"--rendered {args.rendered}: a share of the songs, from 0 to 1")
            record = encode(args.out, args.songs, args.rendered, args.rhythm, args.held_out)
        elif args.stage == "train":
            record = train(args.cache, args.variant, args.steps, args.seed)
        else:
            record = linear(args.cache)
        _append(args.json, {"command": command, "stage": args.stage, **record})

    return run_module("feature_probe", argv, job)


if __name__ == "__main__":
    raise SystemExit(main())
