"""``gamma-rt demo``: the whole path on a built-in model, from nothing but a fresh install.

1. take the trained built-in checkpoint (``gamma_rt/builtin``: a small GaMMA taught on labelled synthetic
music by ``gamma-rt train``), or with ``--random`` write the tiny random one;  2. export the audio side to
ONNX and the decoder to GGUF;  3. synthesize a labelled song and write it as a FLAC;  4. ask about it
through the runtime;  5. print each answer beside the truth, a consistency line per pair of answers where
one contains the other (gamma_rt/agreement.py), and a per-stage timing table. ``--song FILE`` asks the
built-in the same questions about the user's own file instead (gamma_rt/demo_song.py).

It lives outside runtime/ because step 1-2 import export/ (torch); the runtime never does.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gamma_rt.errors import GammaError
from gamma_rt.synth import G_MAJOR_I_VI_IV_V, Music, Song

BUILTIN = Path(__file__).resolve().parent / "builtin"  # the trained checkpoint folder, fp16
# Whether the demo runs the trained built-in unless told --random. Its held-out accuracy (500 songs,
# bench/results/eval_builtin.json, also builtin/eval.json) is key 0.89 (chance 0.04) and instrument F1 0.92
# (0.47), at chance on tempo, meter and event time.
TRAINED_BY_DEFAULT = True
DEMO_QUESTION = "What genre is this song, and which instruments can you hear?"
DEMO_MUSIC = Music(seconds=20.0, rate=44100, channels=2, bpm=110, chords=G_MAJOR_I_VI_IV_V)
# A held-out song (its seed is above every training seed): D minor, 96 BPM, 3/4, piano and bass, drums at 7 s.
DEMO_SONG = Song(seed=1_999_999_999, seconds=15.0, bpm=96, tonic="D", mode="minor", beats_per_bar=3,
                 instruments=("piano", "bass", "drums"), event_instrument="drums", event="enters", event_second=7)
DEMO_ATTRIBUTES = ("key", "tempo", "meter", "instruments", "event", "description")

DESCRIPTION = """\
Run everything once, in --workdir (default ./gamma-rt-demo): take a built-in model, export it (ONNX audio
graphs + GGUF decoder), synthesize music, ask about it and print the answers with a per-stage timing table.
The trained built-in (gamma_rt/builtin, taught on labelled synthetic songs by `gamma-rt train`) answers
questions about a labelled song, each answer printed beside the truth; --random runs the tiny random-weight
model instead, whose answer is nonsense: it shows the machinery, not a model.
--song FILE asks the trained built-in the same questions about your own audio file (any format the runtime
reads), 15 s from its middle unless told (--segment, --whole), with a note of what the built-in can and
cannot know.
Run it again and it reuses what it built (--fresh rebuilds).

Examples:
  gamma-rt demo
  gamma-rt demo --song my-song.mp3
  gamma-rt demo --song my-song.flac --segment 60:15
  gamma-rt demo --random --workdir /tmp/gamma-demo --threads 2 --fresh
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="export a built-in model and ask it about synthesized music",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, default=Path("gamma-rt-demo"),
                   help="folder for the checkpoint, bundle and music (default ./gamma-rt-demo)")
    p.add_argument("--fresh", action="store_true", help="rebuild the checkpoint and bundle even if present")
    p.add_argument("--song", type=Path, metavar="FILE",
                   help="ask the trained built-in about this audio file (yours) instead of a synthesized song")
    span = p.add_mutually_exclusive_group()
    span.add_argument("--segment", metavar="WHERE:SECONDS",
                      help="with --song: the part heard, start:S, middle:S, end:S or OFFSET:S (default middle:15, "
                      "the length the built-in was trained on; a shorter file is heard whole)")
    span.add_argument("--whole", action="store_true",
                      help="with --song: hear the whole file, window by window (the built-in knows 15 s clips)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: half the cores for the decoder, all for the encoders; see ask --help)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--random", action="store_true", help="the tiny random-weight model")
    which.add_argument("--trained", action="store_true", help="the trained built-in model")
    p.set_defaults(func=cmd_demo)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def use_trained(args) -> bool:
    if args.random:
        return False
    return (args.trained or TRAINED_BY_DEFAULT) and (BUILTIN / "model.safetensors").is_file()


def build_bundle(workdir: Path, fresh: bool, trained: bool = False) -> Path:
    """The checkpoint (random tiny, or the trained built-in as it is) and its bundle (ONNX fp32 + F32 GGUF)."""
    from gamma_rt.export.families.gamma.checkpoint import write_random_checkpoint
    from gamma_rt.export.families.gamma.config import GammaConfig
    from gamma_rt.export.gguf_export import export_gguf
    from gamma_rt.export.onnx_export import export_onnx
    from gamma_rt.export.families.gamma.tokenizer import write_tokenizer
    from gamma_rt.manifest import Manifest
    from gamma_rt.progress import track

    ckpt = BUILTIN if trained else workdir / "checkpoint"
    bundle = workdir / ("bundle-trained" if trained else "bundle")
    if not fresh and (bundle / "manifest.json").is_file():
        m = Manifest.read(bundle)
        if "decoder" in m.components and "projector" in m.components:
            if built_from(m, ckpt):
                _say(f"[1-2/5] reusing {bundle} (--fresh rebuilds it)")
                return bundle
            # the built-in was retrained (a pull, a `gamma-rt train`) since this bundle was compiled
            _say(f"[1-2/5] {bundle} was compiled from another checkpoint than {ckpt}: rebuilding it")
    import shutil

    shutil.rmtree(bundle, ignore_errors=True)
    if trained:
        _say(f"[1/5] the trained built-in checkpoint: {ckpt}")
    elif fresh or not (ckpt / "config.json").is_file():
        _say(f"[1/5] writing the tiny checkpoint (random weights) to {ckpt}")
        cfg = GammaConfig.tiny()
        write_random_checkpoint(cfg, ckpt, seed=0, progress=track)
        write_tokenizer(ckpt, cfg)
    _say(f"[2/5] exporting the audio side to ONNX and the decoder to GGUF in {bundle}")
    export_onnx(ckpt, bundle, precision="fp32", progress=track)
    export_gguf(ckpt, bundle, "f32", progress=track)
    return bundle


def built_from(manifest, ckpt: Path) -> bool:
    """Whether the bundle of ``manifest`` was exported from the checkpoint folder ``ckpt`` as it is now."""
    from gamma_rt.export.families.gamma.checkpoint import Checkpoint

    if not (ckpt / "config.json").is_file():
        return False
    return manifest.source.get("checkpoint_sha256") == Checkpoint(ckpt).hash()


def cmd_demo(args) -> int:
    if args.song is None and (args.segment or args.whole):
        raise GammaError("--segment and --whole choose the part of --song FILE heard; give --song")
    if args.song is not None:
        from gamma_rt.demo_song import ask_song

        return ask_song(args)
    workdir = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    trained = use_trained(args)
    bundle = build_bundle(workdir, args.fresh, trained)
    return _ask_trained(args, bundle) if trained else _ask_random(args, bundle)


def _ask_random(args, bundle: Path) -> int:
    from rich.console import Console

    from gamma_rt.runtime.decoder import Sampling
    from gamma_rt.runtime.pipeline import Pipeline
    from gamma_rt.runtime.timings import timing_table
    from gamma_rt.synth import write

    song = args.workdir / "demo-music.flac"
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


def demo_answers(bundle: Path, song_path: Path, threads: int | None = None):
    """[(question, answer, truth)] for DEMO_ATTRIBUTES about ``song_path`` (DEMO_SONG), and the pipeline's
    timing table."""
    from gamma_rt.runtime.pipeline import Pipeline
    from gamma_rt.runtime.timings import timing_table
    from gamma_rt.synthetic_tasks import QUESTION_OF, answers

    questions = [QUESTION_OF[a].text for a in DEMO_ATTRIBUTES]
    truth = answers(DEMO_SONG)
    with Pipeline.open(bundle, threads=threads) as pipe:
        replies = pipe.ask(song_path, questions, max_tokens=48)
        table = timing_table(pipe.times, pipe.figures_ms(), title="per-stage timings")
    return [(q, r.text, truth[a]) for q, r, a in zip(questions, replies, DEMO_ATTRIBUTES)], table


def print_consistency(replies: dict[str, str]) -> None:
    """A line per pair of answers where one contains another's (gamma_rt/agreement.py): agree, disagree or
    cannot tell, with what each says. ``replies``: the answers by question name."""
    from gamma_rt.agreement import agreements
    from gamma_rt.terminal import printable

    print("consistency (where one answer contains another's):")
    for agreement in agreements(replies):
        print(f"  {printable(agreement.line())}")


def _ask_trained(args, bundle: Path) -> int:
    from rich.console import Console
    from rich.table import Table

    from gamma_rt.synth import render

    import soundfile as sf

    song = args.workdir / "demo-song.flac"
    _say(f"[3/5] synthesizing a labelled song ({DEMO_SONG.seconds:.0f} s, 44.1 kHz) into {song}")
    sf.write(song, render(DEMO_SONG, 44100), 44100)
    _say(f"[4/5] asking {len(DEMO_ATTRIBUTES)} questions about it")
    rows, timings = demo_answers(bundle, song, args.threads)
    table = Table(title="[5/5] answers of the trained built-in, beside the truth")
    for column in ("question", "answer", "truth"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console = Console()
    console.print(table)
    print_consistency({a: answer for a, (_, answer, _) in zip(DEMO_ATTRIBUTES, rows)})
    held_out = json.loads((BUILTIN / "eval.json").read_text())
    console.print(f"held-out accuracy of this model on {held_out['songs']} songs (chance in brackets): " + ", ".join(
        f"{a} {v:.2f} ({held_out['chance'][a]:.2f})" for a, v in held_out["accuracy"].items()))
    console.print(timings)
    print(f"next: gamma-rt ask {bundle} {song} -q \"What is the musical key of this track?\" --verbose")
    return 0
