"""Questions about labelled synthetic songs, their template answers, and the scoring of a model's answers.

Torch-free: ``gamma-rt train`` (export/) teaches a model these answers and ``gamma-rt eval`` (the runtime)
scores what a bundle says. Each question asks for one attribute; the tagging prompt set's questions (genre
aside) are among them, answered as JSON that fits their schemas, so ``gamma-rt tag`` writes true tags.

Seeds: training songs come from seeds below ``EVAL_SEED_BASE``, held-out songs from ``EVAL_SEED_BASE`` up.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from gamma_rt.synth import INSTRUMENTS, TONICS, Song, song_for_seed

EVAL_SEED_BASE = 1_000_000_000
CLIP_SECONDS = 15.0
TEMPO_TOLERANCE = 0.04  # relative
EVENT_TOLERANCE_S = 2.0
ATTRIBUTES = ("key", "tempo", "meter", "instruments", "event")


@dataclass(frozen=True)
class Question:
    name: str
    text: str


QUESTIONS = (
    Question("key", "What is the musical key of this track?"),
    Question("tempo", "What is the tempo of this track in beats per minute?"),
    Question("instruments", "Which instruments can be heard in this track?"),
    Question("meter", "What is the time signature of this track?"),
    Question("event", "When does an instrument enter or stop?"),
    Question("description", "Describe this music in one line."),
    Question("mood", "What is the mood of this track? Answer with up to three moods."),
    Question("vocals", "Does this track have vocals?"),
    Question("structure", "Describe the structure of this track: its sections with start and end times in seconds."),
    Question("caption", "Describe this track in one sentence."),
)
QUESTION_OF = {q.name: q for q in QUESTIONS}
SCORED_QUESTIONS = tuple(QUESTION_OF[a].text for a in ATTRIBUTES)  # asked by eval, in ATTRIBUTES order


def train_song(index: int, seed: int = 0) -> Song:
    """Training song ``index`` of run ``seed``: seeds stay below EVAL_SEED_BASE."""
    return song_for_seed((seed * 10_000_019 + index) % EVAL_SEED_BASE, CLIP_SECONDS)


def eval_song(index: int, seed: int = 0) -> Song:
    """Held-out song ``index``: seeds from EVAL_SEED_BASE up, never trained on."""
    return song_for_seed(EVAL_SEED_BASE + seed * 100_003 + index, CLIP_SECONDS)


def _listing(names) -> str:
    names = list(names)
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def event_phrase(song: Song) -> str:
    """"the bass enters at 12 s" (the drums enter: a plural takes the plain verb)."""
    verb = song.event[:-1] if song.event_instrument == "drums" else song.event
    return f"the {song.event_instrument} {verb} at {song.event_second} s"


def describe(song: Song) -> str:
    """One line: key, tempo, meter, instruments and the event."""
    return (f"A piece in {song.key} at {song.bpm} BPM in {song.meter}, with {_listing(song.instruments)}; "
            f"{event_phrase(song)}.")


def _moods(song: Song) -> list[str]:
    pace = "calm" if song.bpm < 90 else "energetic" if song.bpm > 140 else "steady"
    return ["bright" if song.mode == "major" else "dark", pace]


def _sections(song: Song) -> list[dict]:
    end = int(round(song.seconds))
    return [{"label": "intro", "start_s": 0, "end_s": song.event_second},
            {"label": "instrumental", "start_s": song.event_second, "end_s": end}]


def answers(song: Song) -> dict[str, str]:
    """The template answer to every question in QUESTIONS, by question name."""
    dump = lambda value: json.dumps(value, separators=(", ", ": "))  # noqa: E731
    return {
        "key": dump({"tonic": song.tonic, "mode": song.mode}),
        "tempo": dump({"bpm": song.bpm}),
        "instruments": dump({"instruments": list(song.instruments)}),
        "meter": song.meter,
        "event": event_phrase(song).capitalize() + ".",
        "description": describe(song),
        "mood": dump({"moods": _moods(song)}),
        "vocals": dump({"vocals": False}),
        "structure": dump({"sections": _sections(song)}),
        "caption": dump({"caption": describe(song)}),
    }


def corpus(n_songs: int = 400) -> list[str]:
    """Text to train the BPE on: every question and the answers of ``n_songs`` training songs."""
    texts = [q.text for q in QUESTIONS] + list(INSTRUMENTS) + list(TONICS)
    for i in range(n_songs):
        texts.extend(answers(train_song(i, seed=7)).values())
    return texts


# --- scoring --------------------------------------------------------------------------------------------

def _json(text: str) -> dict:
    match = re.search(r"\{.*\}", text, re.S)
    try:
        value = json.loads(match.group(0)) if match else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def parse_key(text: str) -> str | None:
    value = _json(text)
    if "tonic" in value and "mode" in value:
        return f"{value['tonic']} {value['mode']}"
    match = re.search(r"\b([A-G]#?) (major|minor)\b", text)
    return f"{match.group(1)} {match.group(2)}" if match else None


def parse_number(text: str) -> float | None:
    match = re.search(r"\d+(\.\d+)?", text)
    return float(match.group(0)) if match else None


def parse_meter(text: str) -> str | None:
    match = re.search(r"\b([34])/4\b", text)
    return f"{match.group(1)}/4" if match else None


def parse_instruments(text: str) -> set[str]:
    value = _json(text).get("instruments")
    words = value if isinstance(value, list) else re.findall(r"[a-z]+", text.lower())
    return {w for w in map(str, words) if w in INSTRUMENTS}


def f1(predicted: set[str], truth: set[str]) -> float:
    hits = len(predicted & truth)
    if hits == 0:
        return 0.0
    precision, recall = hits / len(predicted), hits / len(truth)
    return 2 * precision * recall / (precision + recall)


def score(song: Song, replies: dict[str, str]) -> dict[str, float]:
    """Per attribute, 1.0/0.0 (F1 for instruments) for the replies to the questions named like ATTRIBUTES."""
    bpm = parse_number(replies["tempo"])
    second = parse_number(replies["event"])
    return {
        "key": float(parse_key(replies["key"]) == song.key),
        "tempo": float(bpm is not None and abs(bpm - song.bpm) <= TEMPO_TOLERANCE * song.bpm),
        "meter": float(parse_meter(replies["meter"]) == song.meter),
        "instruments": f1(parse_instruments(replies["instruments"]), set(song.instruments)),
        "event": float(second is not None and abs(second - song.event_second) <= EVENT_TOLERANCE_S),
    }


def chance(n_songs: int = 2000) -> dict[str, float]:
    """What a model that ignores the audio scores, answering each attribute's most frequent training answer
    (instruments: the F1 of the best fixed set), estimated on ``n_songs`` training songs."""
    songs = [train_song(i, seed=99) for i in range(n_songs)]
    best_sets = [{"piano", "bass"}, {"piano", "drums"}, {"bass", "drums", "piano"}, {"drums", "lead", "piano"},
                 {"organ", "drums"}, {"guitar", "drums"}, {"drums", "bass"}]
    inst = max(sum(f1(s, set(x.instruments)) for x in songs) / n_songs for s in best_sets)
    event = max(sum(abs(x.event_second - c) <= EVENT_TOLERANCE_S for x in songs) / n_songs for c in range(3, 13))
    tempo = max(sum(abs(x.bpm - c) <= TEMPO_TOLERANCE * x.bpm for x in songs) / n_songs for c in range(60, 181))
    return {"key": 1 / 24, "tempo": tempo, "meter": 0.5, "instruments": inst, "event": event}
