"""``gamma-rt ask`` and ``gamma-rt chat``: questions about one song, answered by a bundle."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gamma_rt.terminal import printable

from .options import RuntimeOptions, add_runtime_options
from .pcm_stream import add_raw_format_options, raw_format_from_options

ASK_DESCRIPTION = """\
Answer questions about one song with a bundle (made by `gamma-rt export onnx` + `gamma-rt export gguf`).

The audio streams through in 30 s windows: each window is encoded (two audio experts, fusion, projector)
and fed to the decoder as soon as it has arrived, so only the question is left to do when the audio ends.
Several -q questions share that one pass over the audio and are answered together.

  gamma-rt ask bundle song.flac -q "What genre is this?"
  gamma-rt ask bundle song.mp3 -q "Genre?" -q "Tempo in BPM?" --json
  arecord -f S16_LE -r 16000 -t wav | gamma-rt ask bundle - -q "What is playing?" --stream
"""

CHAT_DESCRIPTION = """\
Talk about one song: the audio is encoded and prefilled once, then every line you type on stdin is a
question, answered in turn with the conversation so far as context. An empty line or end of input ends it.

  gamma-rt chat bundle song.flac
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", type=Path, help="bundle folder holding manifest.json, the ONNX graphs and a GGUF")
    p.add_argument("audio", help="audio file (WAV/FLAC/OGG/MP3, any rate and channel count) or - for stdin")
    p.add_argument("--max-tokens", type=int, default=256, help="longest answer, in tokens (default 256)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); higher = more varied")
    p.add_argument("--seed", type=int, default=0, help="sampling seed, for repeatable answers (default 0)")
    p.add_argument("--verbose", "-v", action="store_true", help="print the backend chosen and per-stage timings")
    add_runtime_options(p)
    add_raw_format_options(p)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ask", help="answer questions about a song", description=ASK_DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p)
    p.add_argument("-q", "--question", action="append", required=True, dest="questions",
                   help="a question; repeat -q for several (they share one pass over the audio)")
    p.add_argument("--json", action="store_true", help="print one JSON object: answers, backend, timings")
    p.add_argument("--stream", action="store_true", help="print the answer while it is generated (one -q only)")
    p.set_defaults(func=cmd_ask)

    c = sub.add_parser("chat", help="multi-turn conversation about a song (questions on stdin)",
                       description=CHAT_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(c)
    c.set_defaults(func=cmd_chat)


def _open(args):
    from gamma_rt.errors import GammaError
    from gamma_rt.progress import track

    from .audio import open_audio
    from .pipeline import Pipeline

    if args.max_tokens < 1:
        raise GammaError(f"--max-tokens must be at least 1, got {args.max_tokens}")
    pipe = Pipeline.open(args.bundle, RuntimeOptions.from_args(args), progress=track)
    if args.verbose:
        print(printable(f"audio backend: {pipe.backend.name} {pipe.backend.precision} ({pipe.backend.reason})"),
              file=sys.stderr)
        print(printable(f"decoder: {pipe.decoder_placement()}"), file=sys.stderr)
    audio = open_audio(args.audio, pipe.layout.sample_rate, raw=raw_format_from_options(args))
    return pipe, audio


def _sampling(args):
    from .decoder import Sampling

    return Sampling(temperature=args.temperature, seed=args.seed)


def _print_timings(pipe) -> None:
    from rich.console import Console

    from .timings import timing_table

    Console(stderr=True).print(timing_table(pipe.times, pipe.figures_ms(), title="per-stage timings"))


def cmd_ask(args) -> int:
    from gamma_rt.errors import GammaError

    if args.stream and len(args.questions) > 1:
        raise GammaError("--stream answers one question; give a single -q")
    if args.stream and args.json:
        raise GammaError("--stream and --json do not go together")
    pipe, audio = _open(args)
    with pipe, audio:
        if args.stream:
            for piece in pipe.stream(audio, args.questions[0], _sampling(args), args.max_tokens):
                print(printable(piece, layout=True), end="", flush=True)
            print()
            answers = None
        else:
            answers = pipe.ask(audio, args.questions, _sampling(args), args.max_tokens)
        if args.json:
            print(json.dumps({
                "audio": audio.info.path, "duration_s": audio.info.duration_s,
                "answers": [{"question": a.question, "answer": a.text} for a in answers],
                "backend": pipe.backend.name, "precision": pipe.backend.precision,
                "timings_ms": pipe.times.to_dict(), "figures_ms": pipe.figures_ms(),
            }, indent=2))
        elif answers is not None:
            for a in answers:
                if len(answers) > 1:
                    print(f"Q: {printable(a.question)}")
                text = printable(a.text, layout=True)  # --json above keeps the answer exact
                print(text if len(answers) == 1 else f"A: {text}")
        if args.verbose:
            _print_timings(pipe)
    return 0


def cmd_chat(args) -> int:
    from gamma_rt.errors import GammaError

    if args.audio == "-":
        raise GammaError("chat reads its questions from stdin, so the audio must be a file, not -")
    pipe, audio = _open(args)
    with pipe, audio:
        talk = pipe.conversation(audio)
        if args.verbose:
            _print_timings(pipe)
        interactive = sys.stdin.isatty()
        while True:
            if interactive:
                print("> ", end="", file=sys.stderr, flush=True)
            line = sys.stdin.readline()
            if not line.strip():
                break
            for piece in talk.say(line.strip(), _sampling(args), args.max_tokens):
                print(printable(piece, layout=True), end="", flush=True)
            print(flush=True)
        if args.verbose:
            _print_timings(pipe)
    return 0
