"""``gamma-rt demo``: the whole path on the built-in tiny model, from nothing but a fresh install.

1. write the tiny checkpoint (random weights, built-in tokenizer);  2. export the audio side to ONNX and
the decoder to GGUF;  3. synthesize 20 s of music (chords over a beat) and write it as a FLAC;  4. ask
about it through the runtime;  5. print the answer and a per-stage timing table.

It lives outside runtime/ because step 1-2 import export/ (torch); the runtime never does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gamma_rt.synth import G_MAJOR_I_VI_IV_V, Music

DEMO_QUESTION = "What genre is this song, and which instruments can you hear?"
DEMO_MUSIC = Music(seconds=20.0, rate=44100, channels=2, bpm=110, chords=G_MAJOR_I_VI_IV_V)

DESCRIPTION = """\
Run everything once on a tiny random-weight model, in --workdir (default ./gamma-rt-demo):
make the checkpoint, export it (ONNX audio graphs + GGUF decoder), synthesize 20 s of music,
ask a question about it and print the answer with a per-stage timing table.
The weights are random, so the answer is nonsense: the demo shows the machinery, not the model.
Run it again and it reuses what it built (--fresh rebuilds).

Examples:
  gamma-rt demo
  gamma-rt demo --workdir /tmp/gamma-demo --threads 2 --fresh
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="build a tiny model, export it, and ask it about synthesized music",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("gamma-rt-demo"),
                   help="folder for the checkpoint, bundle and music (default ./gamma-rt-demo)")
    p.add_argument("--fresh", action="store_true", help="rebuild the checkpoint and bundle even if present")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default all cores)")
    p.set_defaults(func=cmd_demo)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def build_bundle(workdir: Path, fresh: bool) -> Path:
    """The tiny checkpoint and its bundle (ONNX fp32 audio graphs + F32 GGUF) under ``workdir``."""
    from gamma_rt.export.checkpoint import write_random_checkpoint
    from gamma_rt.export.config import GammaConfig
    from gamma_rt.export.gguf_export import export_gguf
    from gamma_rt.export.onnx_export import export_onnx
    from gamma_rt.export.tokenizer import write_tokenizer
    from gamma_rt.manifest import Manifest
    from gamma_rt.progress import track

    ckpt, bundle = workdir / "checkpoint", workdir / "bundle"
    if not fresh and (bundle / "manifest.json").is_file():
        m = Manifest.read(bundle)
        if "decoder" in m.components and "projector" in m.components:
            _say(f"[1-2/5] reusing {bundle} (--fresh rebuilds it)")
            return bundle
    if fresh or not (ckpt / "config.json").is_file():
        import shutil

        shutil.rmtree(bundle, ignore_errors=True)
        _say(f"[1/5] writing the tiny checkpoint (random weights) to {ckpt}")
        cfg = GammaConfig.tiny()
        write_random_checkpoint(cfg, ckpt, seed=0, progress=track)
        write_tokenizer(ckpt, cfg)
    _say(f"[2/5] exporting the audio side to ONNX and the decoder to GGUF in {bundle}")
    export_onnx(ckpt, bundle, precision="fp32", progress=track)
    export_gguf(ckpt, bundle, "f32", progress=track)
    return bundle


def cmd_demo(args) -> int:
    from rich.console import Console

    from gamma_rt.runtime.decoder import Sampling
    from gamma_rt.runtime.pipeline import Pipeline
    from gamma_rt.runtime.timings import timing_table
    from gamma_rt.synth import write

    workdir = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    bundle = build_bundle(workdir, args.fresh)
    song = workdir / "demo-music.flac"
    _say(f"[3/5] synthesizing {DEMO_MUSIC.seconds:.0f} s of music (chords over a beat, 44.1 kHz stereo) into {song}")
    write(song, DEMO_MUSIC)
    _say(f"[4/5] asking: {DEMO_QUESTION}")
    with Pipeline.open(bundle, threads=args.threads) as pipe:
        # Greedy decoding of random weights tends to repeat one unprintable token; a seeded temperature
        # shows varied (still meaningless) text instead.
        answer = pipe.ask(song, [DEMO_QUESTION], Sampling(temperature=0.8, seed=0), max_tokens=32)[0]
        _say(f"      audio backend: {pipe.backend.name} {pipe.backend.precision} ({pipe.backend.reason})")
        print("[5/5] answer (random weights, so this is nonsense by design):")
        print(f"  {answer.text!r}")
        Console().print(timing_table(pipe.times, pipe.figures_ms(), title="per-stage timings"))
    print(f"next: gamma-rt ask {bundle} {song} -q \"...\" --verbose")
    return 0
