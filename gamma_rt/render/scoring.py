"""Scoring a model's answers on a labelled set (the real compositions): accuracy per attribute, the best
constant guess on the same set, and how many answers could not be read at all.

The constant guess is the best a model that ignores the audio could score on *this* set: the most frequent
key and meter, the single tempo that is within ±4 % of the most pieces, and the fixed instrument set with
the highest mean F1. The event is not scored here: real compositions have none.

``evaluate_real`` (``gamma-rt eval BUNDLE --real N``) asks a bundle about the real compositions of
``gamma_rt.render.real``: eval only, so this module may read them. It asks each piece's one-line description
too, for the agreement of answers that contain each other (gamma_rt/agreement.py).
"""

from __future__ import annotations

import time
from collections import Counter
from itertools import combinations

from gamma_rt.synth import INSTRUMENTS, MODES, TONICS, Song
from gamma_rt.synthetic_tasks import TEMPO_TOLERANCE, f1, parse_instruments, parse_key, parse_meter, parse_number

ATTRIBUTES = ("key", "tempo", "meter", "instruments")
KEYS = {f"{t} {m}" for t in TONICS for m in MODES}


def parsed(replies: dict[str, str]) -> dict:
    """Each attribute's answer as a value, None where it cannot be read (a key that is no key, no number...)."""
    key = parse_key(replies["key"])
    instruments = parse_instruments(replies["instruments"])
    return {"key": key if key in KEYS else None, "tempo": parse_number(replies["tempo"]),
            "meter": parse_meter(replies["meter"]), "instruments": instruments or None}


def _tempo_hit(bpm: float | None, song: Song) -> bool:
    return bpm is not None and abs(bpm - song.bpm) <= TEMPO_TOLERANCE * song.bpm


def _mean(values) -> float:
    values = list(values)
    return round(sum(values) / max(1, len(values)), 4)


def constant_guess(songs: list[Song]) -> tuple[dict[str, float], dict]:
    """(score per attribute, the answer that scores it) of the best fixed answer on ``songs``."""
    key, key_hits = Counter(s.key for s in songs).most_common(1)[0]
    meter, meter_hits = Counter(s.meter for s in songs).most_common(1)[0]
    tempo = max(range(60, 181), key=lambda c: sum(_tempo_hit(c, s) for s in songs))
    sets = [set(c) for r in range(1, len(INSTRUMENTS) + 1) for c in combinations(INSTRUMENTS, r)]
    instruments = max(sets, key=lambda c: sum(f1(c, set(s.instruments)) for s in songs))
    n = len(songs)
    score = {"key": round(key_hits / n, 4), "tempo": _mean(_tempo_hit(tempo, s) for s in songs),
             "meter": round(meter_hits / n, 4), "instruments": _mean(f1(instruments, set(s.instruments)) for s in songs)}
    answer = {"key": key, "tempo": tempo, "meter": meter, "instruments": sorted(instruments, key=INSTRUMENTS.index)}
    return score, answer


def score_set(songs: list[Song], replies: list[dict[str, str]]) -> dict:
    """Accuracy per attribute (key exact, tempo within ±4 %, meter exact, instrument-set F1), the best
    constant guess beside it, and the count of unparseable answers per attribute and in all."""
    if not songs or len(songs) != len(replies):
        raise ValueError(f"{len(songs)} songs and {len(replies)} replies: need one reply set per song, at least one")
    values = [parsed(r) for r in replies]
    accuracy = {
        "key": _mean(v["key"] == s.key for s, v in zip(songs, values)),
        "tempo": _mean(_tempo_hit(v["tempo"], s) for s, v in zip(songs, values)),
        "meter": _mean(v["meter"] == s.meter for s, v in zip(songs, values)),
        "instruments": _mean(f1(v["instruments"] or set(), set(s.instruments)) for s, v in zip(songs, values)),
    }
    unparseable = {a: sum(v[a] is None for v in values) for a in ATTRIBUTES}
    constant, answer = constant_guess(songs)
    return {"songs": len(songs), "accuracy": accuracy, "constant_guess": constant, "constant_answer": answer,
            "unparseable": unparseable, "unparseable_total": sum(unparseable.values())}


def evaluate_real(bundle, n: int | None = None, options=None, say=lambda text: None) -> dict:
    """The eval record of a bundle on the first ``n`` real compositions (all when None): :func:`score_set`
    plus the pieces asked, the seconds taken and the first piece's replies."""
    import numpy as np
    import soxr

    from gamma_rt.agreement import agreement_rates
    from gamma_rt.evaluation import scored_replies
    from gamma_rt.render.fluid import RATE
    from gamma_rt.render.real import pieces, real_compositions
    from gamma_rt.runtime.options import RuntimeOptions
    from gamma_rt.runtime.pipeline import Pipeline

    total = len(pieces()[:n])
    start = time.perf_counter()
    names, songs, replies = [], [], []
    say(f"asking {total} held-out real compositions {len(ATTRIBUTES)} scored questions and the description "
        f"each through {bundle}")
    with Pipeline.open(bundle, options or RuntimeOptions()) as pipe:
        rate = pipe.layout.sample_rate
        for name, audio, song in real_compositions(n):
            if rate != RATE:
                audio = soxr.resample(audio, RATE, rate).astype(np.float32)
            names.append(name)
            songs.append(song)
            replies.append(scored_replies(pipe, audio, description=True))
            say(f"  {len(names)}/{total} {name}")
    record = {"bundle": str(bundle), **score_set(songs, replies), "agreement": agreement_rates(replies),
              "pieces": names,
              "seconds": round(time.perf_counter() - start, 1),
              "example": {"piece": names[0], "song": songs[0].__dict__, "replies": replies[0]}}
    return record
