"""Answers that agree: where one question's answer contains another's, whether the two say the same.

The one-line description ("A piece in D minor at 96 BPM in 3/4, with ...") names the key, the tempo and the
meter that the key, tempo and meter questions answer alone. A model that says "65 BPM" in one and
``{"bpm": 125}`` in the other contradicts itself whatever the truth; ``gamma-rt demo`` prints a consistency
line per pair and ``gamma-rt eval`` an agreement rate per pair.

Torch-free and runtime-free. Parsing never raises: any text gives a value or None (unparseable).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from gamma_rt.synthetic_tasks import TEMPO_TOLERANCE, parse_key, parse_number

# (the answer that contains others, the answer it contains), named "description~key" etc.
PAIRS = (("description", "key"), ("description", "tempo"), ("description", "meter"))
MAX_BPM = 1000.0  # past this a number is not a tempo ("at 12345 BPM" is garbage, not a claim)
_FLAT_TO_SHARP = {"Db": "C#", "Eb": "D#", "Gb": "F#", "Ab": "G#", "Bb": "A#", "Cb": "B", "Fb": "E",
                  "E#": "F", "B#": "C"}
# the tonic's letter in capitals (so "a minor change" is no key), the mode in any case
_KEY = re.compile(r"\b([A-G])([#♯b♭]?)[\s-]*((?i:major|minor|maj|min))\b")
_BPM = re.compile(r"(?<![\w.])(\d{1,4}(?:\.\d{1,3})?)\s*(?:bpm|beats per minute)\b", re.I)
_METER = re.compile(r"\b(\d{1,2})\s*/\s*(\d{1,2})\b")


def pair_name(pair: tuple[str, str]) -> str:
    return f"{pair[0]}~{pair[1]}"


def key_in(text: str) -> str | None:
    """The first key named in ``text`` as "C# minor" (flats spelled as the sharp of the same pitch), or None."""
    match = _KEY.search(text)
    if not match:
        return None
    letter, accidental, mode = match.groups()
    accidental = {"♯": "#", "♭": "b"}.get(accidental, accidental)
    tonic = _FLAT_TO_SHARP.get(letter + accidental, letter + accidental)
    return f"{tonic} {'major' if mode.lower().startswith('maj') else 'minor'}"


def bpm_in(text: str) -> float | None:
    """The first "<number> BPM" in ``text``, or None (none, or not a plausible tempo)."""
    match = _BPM.search(text)
    return _tempo(float(match.group(1))) if match else None


def meter_in(text: str) -> str | None:
    """The first time signature "N/M" in ``text``, or None."""
    match = _METER.search(text)
    if not match or int(match.group(1)) == 0 or int(match.group(2)) == 0:
        return None
    return f"{int(match.group(1))}/{int(match.group(2))}"


def _tempo(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) and 0 < value <= MAX_BPM else None


def claim(answer: str, text: str) -> str | float | None:
    """What the reply ``text`` to question ``answer`` says about its own attribute: the key, tempo and meter
    answers read as eval scores them (the key's JSON, the tempo's first number); the description by its
    phrases ("D minor", "96 BPM", "3/4")."""
    if answer == "key":
        key = parse_key(text)
        return key_in(key) if key else None
    if answer == "tempo":
        return _tempo(parse_number(text))
    if answer == "meter":
        return meter_in(text)
    raise ValueError(f"no claim parser for the {answer!r} answer")


def description_claim(about: str, text: str) -> str | float | None:
    """What the description ``text`` says about ``about`` (key, tempo or meter), or None."""
    return {"key": key_in, "tempo": bpm_in, "meter": meter_in}[about](text)


@dataclass(frozen=True)
class Agreement:
    """One pair on one song: what each answer says, and whether they match (None: one cannot be read)."""

    pair: tuple[str, str]
    outer: str | float | None  # what the containing answer (the description) says
    inner: str | float | None  # what the contained answer says
    agree: bool | None

    @property
    def name(self) -> str:
        return pair_name(self.pair)

    def line(self) -> str:
        """One line for a person: "description~tempo: disagree (description 65 BPM, tempo 125 BPM)"."""
        outer, inner = self.pair
        said = f"{outer} {_shown(self.pair[1], self.outer)}, {inner} {_shown(self.pair[1], self.inner)}"
        verdict = {True: "agree", False: "disagree", None: "cannot tell"}[self.agree]
        return f"{self.name}: {verdict} ({said})"


def _shown(about: str, value) -> str:
    if value is None:
        return "unparseable"
    return f"{value:g} BPM" if about == "tempo" else str(value)


def same(about: str, a, b) -> bool:
    """Equal keys or meters; tempos within the ±4 % that scoring allows (of the larger), so two answers that
    would both be scored right for one song are not called a contradiction for a rounding."""
    if about == "tempo":
        return abs(a - b) <= TEMPO_TOLERANCE * max(a, b)
    return a == b


def agreements(replies: dict[str, str]) -> list[Agreement]:
    """Per pair in PAIRS whose both answers are in ``replies`` (by question name), their Agreement."""
    found = []
    for outer, inner in PAIRS:
        if outer not in replies or inner not in replies:
            continue
        a, b = description_claim(inner, replies[outer]), claim(inner, replies[inner])
        found.append(Agreement((outer, inner), a, b, None if a is None or b is None else same(inner, a, b)))
    return found


def agreement_rates(replies: list[dict[str, str]]) -> dict[str, dict]:
    """Per pair over many songs: ``agreement`` (the share of songs whose two answers match; an unparseable
    answer counts as no match), and the counts agree / disagree / unparseable."""
    counts = {pair_name(p): {"agree": 0, "disagree": 0, "unparseable": 0} for p in PAIRS}
    for song in replies:
        for a in agreements(song):
            counts[a.name][{True: "agree", False: "disagree", None: "unparseable"}[a.agree]] += 1
    rates = {}
    for name, c in counts.items():
        n = sum(c.values())
        if n:
            rates[name] = {"agreement": round(c["agree"] / n, 4), **c}
    return rates
