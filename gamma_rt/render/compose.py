"""The project's own MIDI composer: from a labelled :class:`~gamma_rt.synth.Song`, a piece that says it.

Each instrument class plays one of several General MIDI programs and one of several patterns; chords follow
one of several progressions of the song's key (one chord a bar), the bass follows the chord roots, the lead
plays a melody of chord tones on the strong beats and scale steps between, and the drums (GM channel 10,
one of several kits) play a groove for 3/4 or 4/4 with the downbeat accented. The event instrument's notes
start at its second ("enters") or are cut there with All Sound Off ("stops"), so it is silent on the other
side of the second. Everything is drawn from the song's seed: the same seed gives the same file.
"""

from __future__ import annotations

import math

import numpy as np

from gamma_rt.render.midi import DRUM_CHANNEL, Note, Piece
from gamma_rt.synth import SCALES, TONICS, Song

CHANNELS = {"piano": 0, "guitar": 1, "organ": 2, "bass": 3, "lead": 4, "drums": DRUM_CHANNEL}
# General MIDI programs (zero-based) per instrument class; for drums, the kit (program on channel 10).
PROGRAMS = {
    "piano": (0, 1, 2, 4, 5),  # acoustic grand, bright, electric grand, two electric pianos
    "guitar": (24, 25, 26, 27),  # nylon, steel, jazz, clean electric
    "organ": (16, 17, 18, 19),  # drawbar, percussive, rock, church
    "bass": (32, 33, 34, 35, 38),  # acoustic, finger, pick, fretless, synth
    "lead": (80, 81, 56, 65, 73),  # square lead, saw lead, trumpet, alto sax, flute
    "drums": (0, 8, 16, 24, 25, 32, 40),  # standard, room, power, electronic, TR-808, jazz, brush kits
}
# Progressions as scale-degree indices (0 = I), one chord a bar; the tonic opens each so the key is heard.
PROGRESSIONS = {
    "major": ((0, 3, 4, 0), (0, 4, 5, 3), (0, 5, 3, 4), (0, 1, 4, 0), (0, 3, 0, 4), (0, 5, 1, 4)),
    "minor": ((0, 3, 4, 0), (0, 5, 2, 6), (0, 3, 6, 2), (0, 5, 3, 4), (0, 6, 5, 4), (0, 3, 0, 4)),
}
CHORD_PATTERNS = {"piano": ("block", "arpeggio", "oompah", "sustain"), "guitar": ("strum", "arpeggio", "block"),
                  "organ": ("sustain", "block")}
BASS_PATTERNS = ("root", "beats", "root_fifth", "walking")
KICK, SNARE, CLOSED_HAT, RIDE, CRASH = 36, 38, 42, 51, 49


class _Score:
    """The song's grid: beat and bar lengths, the chord of each bar as pitch classes."""

    def __init__(self, song: Song, rng: np.random.Generator):
        self.song, self.rng = song, rng
        self.beat = 60.0 / song.bpm
        self.bar = self.beat * song.beats_per_bar
        self.bars = int(math.ceil(song.seconds / self.bar)) + 1
        self.tonic = TONICS.index(song.tonic)
        scale = list(SCALES[song.mode])
        self.harmonic = song.mode == "minor" and rng.random() < 0.6  # a major V with the raised seventh
        options = PROGRESSIONS[song.mode]
        progression = options[int(rng.integers(len(options)))]
        self.scale = [(self.tonic + s) % 12 for s in scale]
        self.chords = []
        for b in range(self.bars):
            degree = progression[b % len(progression)]
            tones = [scale[(degree + k) % 7] for k in (0, 2, 4)]
            if self.harmonic and degree == 4:
                tones[1] = 11  # the leading tone: v becomes V
            self.chords.append([(self.tonic + s) % 12 for s in tones])

    def jitter(self) -> float:
        return float(self.rng.normal(0.0, 0.004))

    def velocity(self, beat_in_bar: int, base: int) -> int:
        accent = 1.0 if beat_in_bar == 0 else 0.72
        return int(np.clip(base * accent + self.rng.normal(0, 5), 20, 127))


def _place(pc: int, low: int) -> int:
    """The pitch of pitch class ``pc`` in the octave from ``low``."""
    return low + (pc - low) % 12


def _chords(score: _Score, channel: int, pattern: str, base: int) -> list[Note]:
    notes, beat, bpb = [], score.beat, score.song.beats_per_bar
    for b, chord in enumerate(score.chords):
        t0 = b * score.bar
        voiced = sorted(_place(pc, 55) for pc in chord)
        if pattern == "sustain":
            notes += [Note(t0, t0 + score.bar * 0.98, p, score.velocity(0, base), channel) for p in voiced]
        elif pattern == "arpeggio":
            cycle = voiced + [voiced[0] + 12]
            for k in range(2 * bpb):
                t = t0 + k * beat / 2 + score.jitter()
                notes.append(Note(t, t + beat * 0.9, cycle[k % 4], score.velocity(k // 2 if k % 2 == 0 else 1, base),
                                  channel))
        else:
            for k in range(bpb):
                t = t0 + k * beat + score.jitter()
                velocity = score.velocity(k, base)
                if pattern == "oompah" and k == 0:
                    notes.append(Note(t, t + beat * 0.9, _place(chord[0], 43), velocity, channel))
                    continue
                for i, p in enumerate(voiced):
                    offset = i * 0.012 if pattern == "strum" else 0.0
                    notes.append(Note(t + offset, t + beat * (0.6 if pattern == "oompah" else 0.92), p, velocity,
                                      channel))
    return notes


def _bass(score: _Score, channel: int, pattern: str, base: int) -> list[Note]:
    notes, beat, bpb = [], score.beat, score.song.beats_per_bar
    for b, chord in enumerate(score.chords):
        t0 = b * score.bar
        root, fifth = _place(chord[0], 33), _place(chord[2], 33)
        if pattern == "root":
            notes.append(Note(t0, t0 + score.bar * 0.95, root, score.velocity(0, base), channel))
            continue
        for k in range(bpb):
            if pattern == "root_fifth" and k not in (0, 2):  # root on one, the fifth on three
                continue
            if pattern == "walking":
                pitch = root if k == 0 else _place(int(score.rng.choice(chord + score.scale[:1])), 33)
            else:
                pitch = fifth if (pattern == "root_fifth" and k > 0) else root
            t = t0 + k * beat + score.jitter()
            notes.append(Note(t, t + beat * 0.85, pitch, score.velocity(k, base), channel))
    return notes


def _lead(score: _Score, channel: int, base: int) -> list[Note]:
    notes, beat, bpb = [], score.beat, score.song.beats_per_bar
    ladder = sorted(p for p in range(64, 89) if p % 12 in score.scale)  # the scale's notes in the lead's range
    position = int(np.argmin([abs(p - 72) for p in ladder]))
    for b, chord in enumerate(score.chords):
        for k in range(bpb):
            if score.rng.random() < 0.1 and k > 0:
                continue  # a rest
            if k == 0:  # a chord tone on the downbeat, the nearest one to where the melody is
                position = min((i for i, p in enumerate(ladder) if p % 12 in chord), key=lambda i: abs(i - position))
            else:
                position = int(np.clip(position + score.rng.choice((-2, -1, -1, 1, 1, 2)), 0, len(ladder) - 1))
            t = b * score.bar + k * beat + score.jitter()
            halves = 2 if (k > 0 and score.rng.random() < 0.3) else 1
            for h in range(halves):
                start = t + h * beat / halves
                notes.append(Note(start, start + beat / halves * 0.9, ladder[position], score.velocity(k, base),
                                  channel))
                position = int(np.clip(position + (1 if h == 0 and halves == 2 else 0), 0, len(ladder) - 1))
    return notes


def _drums(score: _Score, base: int) -> list[Note]:
    notes, beat, bpb = [], score.beat, score.song.beats_per_bar
    hat = RIDE if score.rng.random() < 0.25 else CLOSED_HAT
    eighths = score.rng.random() < 0.7
    if bpb == 4:
        kicks, snares = ((0, 2), (0, 2.5), (0, 1.5, 2))[int(score.rng.integers(3))], (1, 3)
    else:
        kicks, snares = (0,), ((1, 2), (2,))[int(score.rng.integers(2))]
    for b in range(score.bars):
        t0 = b * score.bar
        hits = [(k, KICK) for k in kicks] + [(s, SNARE) for s in snares]
        hits += [(h / 2, hat) for h in range(2 * bpb) if eighths or h % 2 == 0]
        if b % 4 == 0:
            hits.append((0, CRASH))
        for position, key in hits:
            t = t0 + position * beat + score.jitter()
            downbeat = 0 if position == 0 else 1
            scale = 0.6 if key in (CLOSED_HAT, RIDE) else 1.0
            notes.append(Note(t, t + 0.1, key, int(score.velocity(downbeat, base) * scale), DRUM_CHANNEL))
    return notes


def compose(song: Song) -> Piece:
    """The MIDI piece of ``song``: its instruments, each on its GM channel, silent where the event says."""
    rng = np.random.default_rng([song.seed, 0xC0DE])
    score = _Score(song, rng)
    piece = Piece(bpm=float(song.bpm), beats_per_bar=song.beats_per_bar, tonic_pc=score.tonic,
                  minor=song.mode == "minor", seconds=song.seconds)
    for name in song.instruments:
        channel = CHANNELS[name]
        piece.programs[channel] = int(rng.choice(PROGRAMS[name]))
        base = int(rng.integers(80, 111))
        if name in CHORD_PATTERNS:
            notes = _chords(score, channel, str(rng.choice(CHORD_PATTERNS[name])), base)
        elif name == "bass":
            notes = _bass(score, channel, str(rng.choice(BASS_PATTERNS)), base)
        elif name == "lead":
            notes = _lead(score, channel, base)
        else:
            notes = _drums(score, base)
        notes = [n for n in notes if n.start_s >= 0 and n.start_s < song.seconds]
        if name == song.event_instrument:
            notes = _cut(notes, song, piece)
        piece.notes += notes
    piece.notes.sort(key=lambda n: (n.start_s, n.channel, n.pitch))
    return piece


def _cut(notes: list[Note], song: Song, piece: Piece) -> list[Note]:
    """The event instrument's notes: from its second on ("enters"), or until it with its voices cut there."""
    at = float(song.event_second)
    if song.event == "enters":
        return [Note(max(n.start_s, at), n.end_s, n.pitch, n.velocity, n.channel) for n in notes if n.end_s > at + 0.05]
    piece.sound_off[notes[0].channel if notes else CHANNELS[song.event_instrument]] = at
    return [Note(n.start_s, min(n.end_s, at), n.pitch, n.velocity, n.channel) for n in notes if n.start_s < at - 0.05]
