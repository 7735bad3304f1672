"""Held-out real compositions, eval only: pieces from music21's bundled corpus rendered like training songs.

Never train on these. Nothing on the training path (``gamma_rt.render`` minus this module, ``export/``)
imports this module or music21; ``tests/test_real_compositions.py`` checks it.

The pieces are listed in ``real_pieces.json`` beside this file (written by ``python -m gamma_rt.render.real
--select``), so an eval is reproducible: per piece its corpus name, the key and meter read from the score,
the tempo chosen for it, and which instrument class (and GM program) plays each part.

- Key, from the score: Bach chorales carry a key signature but no reliable mode, so the tonic is the final
  bass note and the piece is kept only when that is the signature's major tonic or its relative minor. Folk
  tunes declare the key in their ABC ``K:`` field; a tune is kept only when its final note is that tonic.
- Meter: the score's time signature; only 3/4 and 4/4 pieces are kept (half of each).
- Tempo: chosen per piece, 64-160 BPM from a hash of its name (a score gives none; a performer chooses).
- Instruments: chorale voices go to one chord player (piano, organ or guitar), or to a chord player with a
  bass (and the soprano on a lead); a folk melody to a lead or a chord instrument. Some pieces get a drum
  groove of the meter (compose's), labelled, so instrument sets vary. The event is not scored on this set.
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

from gamma_rt.errors import GammaError
from gamma_rt.render import PEAK
from gamma_rt.render.compose import CHANNELS, PROGRAMS, _drums, _Score
from gamma_rt.render.fluid import RATE, render_piece
from gamma_rt.render.midi import Note, Piece
from gamma_rt.synth import INSTRUMENTS, TONICS, Song

PIECES_FILE = Path(__file__).with_name("real_pieces.json")
PER_METER = 24
CHORALES_PER_METER = 16  # the rest of each meter's quota are folk tunes
FOLK_COLLECTIONS = ("essenFolksong", "oneills1850", "airdsAirs", "miscFolk")
MIN_SECONDS = 15.0
TUNES_PER_FILE = 2  # so the folk tunes come from many collections' files, not the first one


def _music21():
    try:
        import music21
    except ImportError:
        raise GammaError("the real-composition eval set needs music21: pip install 'gamma-rt[train]'") from None
    return music21


def _hash(name: str) -> int:
    return zlib.crc32(name.encode())


def _bpm(name: str) -> int:
    return 64 + _hash(name) % 97


def _notes(part) -> list[tuple[float, float, tuple[int, ...], float]]:
    """(offset, quarter lengths, MIDI pitches, beat strength) of each sounding note or chord of a part."""
    out = []
    for n in part.stripTies().flatten().notes:
        length = float(n.quarterLength)
        if length > 0:
            out.append((float(n.offset), length, tuple(p.midi for p in n.pitches), float(n.beatStrength)))
    return out


def _score_key(score, kind: str) -> tuple[int, str] | None:
    """(tonic pitch class, mode) by the rules in the module docstring, or None when the score is ambiguous."""
    parts = list(score.parts) or [score]
    final = _notes(parts[-1])
    if not final:
        return None
    last_pc = min(final[-1][2]) % 12
    signatures = list(score.recurse().getElementsByClass("KeySignature"))
    if not signatures:
        return None
    signature = signatures[0]
    if kind == "folk":
        mode = getattr(signature, "mode", None)
        if mode not in ("major", "minor"):
            return None
        tonic = signature.tonic.pitchClass
        return (tonic, mode) if tonic == last_pc else None
    major = signature.asKey("major").tonic.pitchClass
    if last_pc == major:
        return major, "major"
    if last_pc == (major + 9) % 12:
        return last_pc, "minor"
    return None


def _assign(name: str, kind: str, n_parts: int) -> dict:
    """Which instrument class and program plays each part, and whether drums are added, drawn from the name."""
    rng = np.random.default_rng(_hash(name))
    chord = str(rng.choice(("piano", "organ", "guitar")))
    if kind == "folk" or n_parts == 1:
        parts = [str(rng.choice(("lead", "piano", "guitar", "organ")))]
    else:
        scheme = str(rng.choice(("keyboard", "band", "continuo")))
        parts = {"keyboard": [chord] * n_parts, "band": ["lead"] + [chord] * (n_parts - 2) + ["bass"],
                 "continuo": [chord] * (n_parts - 1) + ["bass"]}[scheme]
    drums = bool(rng.random() < 0.35)
    classes = sorted(set(parts) | ({"drums"} if drums else set()), key=INSTRUMENTS.index)
    programs = {c: int(rng.choice(PROGRAMS[c])) for c in classes}
    return {"parts": parts, "drums": drums, "programs": programs}


def _candidates() -> Iterator[tuple[str, str, dict]]:
    """(name, kind, parse arguments) of chorales, then folk tunes, in the corpus's sorted order."""
    from music21 import corpus

    paths = sorted(corpus.getPaths(), key=str)
    for path in paths:
        if "/bach/" in str(path) and path.name.startswith("bwv"):
            yield f"bach/{path.stem}", "chorale", {"path": str(path)}
    for collection in FOLK_COLLECTIONS:
        for path in paths:
            if f"/{collection}/" in str(path) and path.suffix == ".abc":
                numbers = [line[2:].strip() for line in path.read_text(errors="replace").splitlines()
                           if line.startswith("X:")]
                for number in numbers:
                    if number.isdigit():
                        yield f"{collection}/{path.stem}#{number}", "folk", {"path": str(path), "number": int(number)}


def _parse(entry: dict):
    from music21 import converter

    parsed = converter.parse(entry["path"], number=entry["number"]) if "number" in entry else converter.parse(entry["path"])
    return parsed


def select(say=lambda text: None) -> list[dict]:
    """Walk the corpus and keep the first pieces that pass the rules, PER_METER of each meter."""
    _music21()
    chosen, counts = [], {(kind, m): 0 for kind in ("chorale", "folk") for m in (3, 4)}
    quota = {("chorale", 3): CHORALES_PER_METER, ("chorale", 4): CHORALES_PER_METER,
             ("folk", 3): PER_METER - CHORALES_PER_METER, ("folk", 4): PER_METER - CHORALES_PER_METER}
    per_file: dict[str, int] = {}
    for name, kind, where in _candidates():
        if per_file.get(where["path"], 0) >= (TUNES_PER_FILE if kind == "folk" else 1):
            continue
        meters = [m for (k, m), c in counts.items() if k == kind and c < quota[(k, m)]]
        if not meters:
            continue
        try:
            score = _parse(where)
        except Exception as err:  # noqa: BLE001 - a corpus file music21 cannot read is skipped, and said
            say(f"skip {name}: {type(err).__name__}")
            continue
        if kind == "folk" and hasattr(score, "scores"):
            continue
        signatures = list(score.recurse().getElementsByClass("TimeSignature"))
        ratios = {s.ratioString for s in signatures}
        if len(ratios) != 1 or next(iter(ratios)) not in ("3/4", "4/4") or int(next(iter(ratios))[0]) not in meters:
            continue
        key = _score_key(score, kind)
        parts = list(score.parts) if hasattr(score, "parts") and len(score.parts) else [score]
        bpm = _bpm(name)
        if key is None or float(score.highestTime) * 60.0 / bpm < MIN_SECONDS or not all(_notes(p) for p in parts):
            continue
        if kind == "chorale" and len(parts) != 4:
            continue
        meter = int(next(iter(ratios))[0])
        counts[(kind, meter)] += 1
        per_file[where["path"]] = per_file.get(where["path"], 0) + 1
        record = {"name": name, "kind": kind, **{k: v for k, v in where.items() if k == "number"},
                  "key": f"{TONICS[key[0]]} {key[1]}", "meter": f"{meter}/4", "bpm": bpm,
                  **_assign(name, kind, len(parts))}
        chosen.append(record)
        say(f"{len(chosen):2d} {name}: {record['key']}, {record['meter']}, {bpm} BPM, {record['parts']}")
        if all(counts[k] >= quota[k] for k in quota):
            break
    return chosen


def pieces() -> list[dict]:
    """The listed pieces (real_pieces.json)."""
    return json.loads(PIECES_FILE.read_text())["pieces"]


def song_of(record: dict, seconds: float = MIN_SECONDS) -> Song:
    """The labels of a listed piece as a Song (event fields unscored: the first instrument, entering at 0)."""
    tonic, mode = record["key"].split()
    instruments = tuple(i for i in INSTRUMENTS if i in record["programs"])
    return Song(seed=_hash(record["name"]), seconds=seconds, bpm=record["bpm"], tonic=tonic, mode=mode,
                beats_per_bar=int(record["meter"][0]), instruments=instruments, event_instrument=instruments[0],
                event="enters", event_second=0)


def _corpus_path(record: dict) -> str:
    from music21 import corpus

    collection, _, stem = record["name"].partition("/")
    stem = stem.split("#")[0]
    matches = [p for p in corpus.getPaths() if p.parent.name == collection and p.stem == stem]
    if not matches:
        raise GammaError(f"{record['name']}: not in this music21's corpus (music21 {_music21().__version__})")
    return str(matches[0])


def piece_of(record: dict, seconds: float = MIN_SECONDS) -> Piece:
    """The MIDI piece of a listed composition: its parts on their instruments' channels, cut at ``seconds``."""
    _music21()
    score = _parse({"path": _corpus_path(record), **({"number": record["number"]} if "number" in record else {})})
    song = song_of(record, seconds)
    beat = 60.0 / song.bpm
    parts = list(score.parts) if hasattr(score, "parts") and len(score.parts) else [score]
    piece = Piece(bpm=float(song.bpm), beats_per_bar=song.beats_per_bar, tonic_pc=TONICS.index(song.tonic),
                  minor=song.mode == "minor", seconds=seconds,
                  programs={CHANNELS[c]: p for c, p in record["programs"].items()})
    for part, name in zip(parts, record["parts"]):
        for offset, length, pitches, strength in _notes(part):
            start = offset * beat
            if start < seconds:
                velocity = int(70 + 25 * strength)  # a player's accent on the strong beats
                piece.notes += [Note(start, start + length * beat * 0.95, p, velocity, CHANNELS[name]) for p in pitches]
    if record["drums"]:
        measures = list(parts[0].getElementsByClass("Measure"))
        pickup = float(measures[1].offset) % song.beats_per_bar if len(measures) > 1 else 0.0
        shift = (pickup - song.beats_per_bar) * beat if pickup else 0.0  # downbeats where the score's are
        groove = _drums(_Score(song, np.random.default_rng(song.seed)), 90)
        piece.notes += [Note(n.start_s + shift, n.end_s + shift, n.pitch, n.velocity, n.channel) for n in groove
                        if 0 <= n.start_s + shift < seconds]
    piece.notes.sort(key=lambda n: (n.start_s, n.channel, n.pitch))
    return piece


def real_compositions(n: int | None = None, seconds: float = MIN_SECONDS) -> Iterator[tuple[str, np.ndarray, Song]]:
    """(name, float32 audio at 16 kHz mono scaled to PEAK, Song labels) of the first ``n`` listed pieces
    (all when None), each its first ``seconds``. Eval only."""
    for record in pieces()[:n]:
        audio = render_piece(piece_of(record, seconds), RATE)
        peak = float(np.abs(audio).max())
        yield record["name"], (audio * (PEAK / peak) if peak > 0 else audio).astype(np.float32), song_of(record, seconds)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gamma_rt.render.real",
        description="Select the held-out real compositions from music21's corpus and write the list.\n\n"
                    "Example:\n  python -m gamma_rt.render.real --select gamma_rt/render/real_pieces.json",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--select", type=Path, required=True, metavar="JSON", help="where to write the list")
    args = parser.parse_args(argv)
    chosen = select(say=lambda text: print(text, file=sys.stderr, flush=True))
    music21 = _music21()
    args.select.write_text(json.dumps({"music21": music21.__version__, "rules": __doc__.split("- Key")[0].strip(),
                                       "pieces": chosen}, indent=1) + "\n")
    print(f"{len(chosen)} pieces written to {args.select}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
