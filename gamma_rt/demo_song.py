"""``gamma-rt demo --song FILE``: the trained built-in's answers about the user's own audio file.

The demo's questions (``demo.DEMO_ATTRIBUTES``) are asked about FILE through the runtime, which reads any
format it reads and a long file window by window; the answers are printed with a consistency line per pair
of answers where one contains the other (gamma_rt/agreement.py) and a short note of what the built-in can
and cannot know: it has heard only songs this project generates, so on a real recording it may be wrong.
"""

from __future__ import annotations

import sys
from pathlib import Path

from gamma_rt.demo import BUILTIN, DEMO_ATTRIBUTES, build_bundle, print_consistency, use_trained
from gamma_rt.errors import AudioError, GammaError
from gamma_rt.synth import INSTRUMENTS
from gamma_rt.synthetic_tasks import CLIP_SECONDS

NOTE_TITLE = "What the built-in can and cannot know"


def note(seconds: float | None) -> list[str]:
    """The note printed under the answers, as lines; ``seconds``: the file's length, where known."""
    lines = [
        "It was trained only on songs this project generates (synthesized or rendered from generated MIDI), "
        f"{CLIP_SECONDS:g} s each: one key of 24, one tempo of 60-180 BPM, 3/4 or 4/4, instruments from a fixed "
        f"set ({', '.join(INSTRUMENTS)}) and one event (an instrument entering or stopping).",
        "It knows nothing of genre, vocals, lyrics or mood, nor of instruments outside that set: an instrument "
        "it names is the nearest of its own, and a song with none of them still gets some.",
        "Answers about a real recording may be wrong; its held-out accuracy below is on generated songs, "
        "not on music like yours.",
    ]
    if seconds is not None and seconds > 2 * CLIP_SECONDS:
        lines.append(f"This file is {seconds:.0f} s long; the model heard it whole, window by window, but it was "
                     f"trained on {CLIP_SECONDS:g} s clips, so a change of key or tempo inside it is not "
                     "described.")
    return lines


def check_song(path: Path) -> tuple[Path, float | None, str]:
    """(path, its length in s or None, its format) for a file the runtime can open, else a one-line error:
    before the bundle is built, so a wrong path fails in a second, not after the export."""
    from gamma_rt.runtime.audio import open_audio

    if str(path) == "-":
        raise GammaError("--song -: the demo reads a file; to ask about stdin, use gamma-rt ask BUNDLE -")
    try:
        with open_audio(path) as stream:
            info = stream.info
            next(iter(stream))  # the first block: a file whose data is corrupt from the start fails here
    except OSError as err:  # unreadable (permissions, I/O error): the audio readers' own checks pass it on
        raise AudioError(f"{path}: cannot read ({err.strerror or err})") from None
    return path, info.duration_s, info.codec or info.format


def song_answers(bundle: Path, song: Path, threads: int | None = None) -> tuple[list[tuple[str, str]], dict, object]:
    """([(question, answer)] for DEMO_ATTRIBUTES about ``song``, the replies by attribute, the timing table)."""
    from gamma_rt.runtime.pipeline import Pipeline
    from gamma_rt.runtime.timings import timing_table
    from gamma_rt.synthetic_tasks import QUESTION_OF

    questions = [QUESTION_OF[a].text for a in DEMO_ATTRIBUTES]
    with Pipeline.open(bundle, threads=threads) as pipe:
        replies = pipe.ask(str(song), questions, max_tokens=48)
        table = timing_table(pipe.times, pipe.figures_ms(), title="per-stage timings")
    by_attribute = {a: r.text for a, r in zip(DEMO_ATTRIBUTES, replies)}
    return [(q, r.text) for q, r in zip(questions, replies)], by_attribute, table


def ask_song(args) -> int:
    import json

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from gamma_rt.terminal import printable

    if args.random:
        raise GammaError("--song asks the trained built-in; the --random model has nothing true to say about a song")
    if not use_trained(args):
        raise GammaError(f"--song needs the trained built-in, and {BUILTIN / 'model.safetensors'} is missing")
    song, seconds, kind = check_song(args.song)
    args.workdir.mkdir(parents=True, exist_ok=True)
    bundle = build_bundle(args.workdir, args.fresh, trained=True)
    length = f"{seconds:.1f} s" if seconds is not None else "length unknown"
    print(printable(f"asking {len(DEMO_ATTRIBUTES)} questions about {song} ({kind}, {length})"),
          file=sys.stderr, flush=True)
    rows, replies, timings = song_answers(bundle, song, args.threads)
    console = Console()
    table = Table(title=Text(f"answers of the trained built-in about {printable(song.name)}"))
    for column in ("question", "answer"):
        table.add_column(column, overflow="fold")
    for question, answer in rows:
        table.add_row(Text(question), Text(printable(answer)))
    console.print(table)
    print_consistency(replies)
    print(f"{NOTE_TITLE}:")
    for line in note(seconds):
        print(f"  - {line}")
    held_out = json.loads((BUILTIN / "eval.json").read_text())
    print(f"held-out accuracy on {held_out['songs']} generated songs (chance in brackets): " + ", ".join(
        f"{a} {v:.2f} ({held_out['chance'][a]:.2f})" for a, v in held_out["accuracy"].items()))
    console.print(timings)
    print(f"next: gamma-rt ask {bundle} {song} -q \"What is the musical key of this track?\" --verbose")
    return 0

