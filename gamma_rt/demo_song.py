"""``gamma-rt demo --song FILE``: the trained built-in's answers about the user's own audio file.

The demo's questions (``demo.DEMO_ATTRIBUTES``) are asked about FILE through the runtime, which reads any
format it reads. The built-in was trained on 15 s clips and answers longer audio badly (the current one: a
30 s file already made its key answer unparseable, 210 s every answer), so by default it hears 15 s from
the middle of the file (``--segment``, as ``gamma-rt tag`` spells it); ``--whole`` gives it the whole file,
window by window, as the runtime reads a long file. The answers are printed with a consistency line per pair
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


def note(heard: float | None) -> list[str]:
    """The note printed under the answers, as lines; ``heard``: the seconds of audio the model heard."""
    lines = [
        "It was trained only on songs this project generates (synthesized or rendered from generated MIDI), "
        f"{CLIP_SECONDS:g} s each: one key of 24, one tempo of 60-180 BPM, 3/4 or 4/4, instruments from a fixed "
        f"set ({', '.join(INSTRUMENTS)}) and one event (an instrument entering or stopping).",
        "It knows nothing of genre, vocals, lyrics or mood, nor of instruments outside that set: an instrument "
        "it names is the nearest of its own, and a song with none of them still gets some.",
        "Answers about a real recording may be wrong; its held-out accuracy below is on generated songs, "
        "not on music like yours.",
    ]
    if heard is None or heard > CLIP_SECONDS + 1:
        lines.append(f"It heard {'audio of unknown length' if heard is None else f'{heard:.0f} s'}, window by "
                     f"window, but it was trained on {CLIP_SECONDS:g} s clips: on longer audio its answers "
                     f"fall apart (--segment middle:{CLIP_SECONDS:g} is what it knows).")
    return lines


def heard_span(args, seconds: float | None) -> tuple[float, float | None]:
    """(start in s, length in s or None: to the end) of the file the model hears: --whole, or --segment
    (default the middle CLIP_SECONDS; a shorter file whole)."""
    from gamma_rt.runtime.tagging.segment import Segment

    if args.whole:
        return 0.0, seconds
    return Segment.parse(args.segment or f"middle:{CLIP_SECONDS:g}").span(seconds)


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


def song_answers(bundle: Path, song: Path, threads: int | None = None, span: tuple[float, float | None] = (0.0, None)
                 ) -> tuple[list[tuple[str, str]], dict, object]:
    """([(question, answer)] for DEMO_ATTRIBUTES about ``span`` (start s, length s or None: to the end) of
    ``song``, the replies by attribute, the timing table)."""
    from gamma_rt.runtime.audio import open_audio
    from gamma_rt.runtime.pipeline import Pipeline
    from gamma_rt.runtime.timings import timing_table
    from gamma_rt.synthetic_tasks import QUESTION_OF

    questions = [QUESTION_OF[a].text for a in DEMO_ATTRIBUTES]
    with Pipeline.open(bundle, threads=threads) as pipe, open_audio(song, pipe.layout.sample_rate) as stream:
        replies = pipe.ask(stream.clip(*span), questions, max_tokens=48)
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
    start, length = heard_span(args, seconds)
    args.workdir.mkdir(parents=True, exist_ok=True)
    bundle = build_bundle(args.workdir, args.fresh, trained=True)
    print(printable(f"asking {len(DEMO_ATTRIBUTES)} questions about {song} ({kind})"), file=sys.stderr, flush=True)
    rows, replies, timings = song_answers(bundle, song, args.threads, (start, length))
    console = Console()
    heard = heard_line(start, length, seconds)
    table = Table(title=Text(f"answers of the trained built-in about {printable(song.name)}, {heard}"))
    for column in ("question", "answer"):
        table.add_column(column, overflow="fold")
    for question, answer in rows:
        table.add_row(Text(question), Text(printable(answer)))
    console.print(table)
    print_consistency(replies)
    print(f"{NOTE_TITLE}:")
    for line in note(length):
        print(f"  - {line}")
    held_out = json.loads((BUILTIN / "eval.json").read_text())
    print(f"held-out accuracy on {held_out['songs']} generated songs (chance in brackets): " + ", ".join(
        f"{a} {v:.2f} ({held_out['chance'][a]:.2f})" for a, v in held_out["accuracy"].items()))
    console.print(timings)
    print(f"next: gamma-rt ask {bundle} {song} -q \"What is the musical key of this track?\" --verbose")
    return 0



def heard_line(start: float, length: float | None, seconds: float | None) -> str:
    """"15 s from 0:52 of 2:00" / "the whole file (2:00)": what the model heard, for the table's title."""
    clock = lambda s: f"{int(s // 60)}:{s % 60:04.1f}"  # noqa: E731
    if start == 0 and (length is None or length == seconds):
        return f"the whole file ({clock(seconds)})" if seconds is not None else "the whole stream"
    return f"{length:g} s from {clock(start)} of {clock(seconds) if seconds is not None else '?'}"
