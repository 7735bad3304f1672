"""Standard MIDI Files, written and read back: the few messages a rendered piece needs.

A piece is a list of :class:`Note` (seconds, GM channel and program) plus its tempo, meter and key; it is
written as a format-1 file at ``TICKS_PER_BEAT``: track 0 holds the tempo, time signature and key
signature, then one track per channel (program change first). ``read`` parses such a file back into the
same fields, so a test can check that the file says what the labels say.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from gamma_rt.errors import GammaError

TICKS_PER_BEAT = 480
DRUM_CHANNEL = 9  # GM channel 10, zero-based
ALL_SOUND_OFF = 120  # controller number: cuts every voice on the channel at once, release tails included
# Pitch class of a major key's tonic -> sharps (+) or flats (-) in its key signature.
SHARPS_OF_MAJOR = {0: 0, 7: 1, 2: 2, 9: 3, 4: 4, 11: 5, 6: 6, 1: -5, 8: -4, 3: -3, 10: -2, 5: -1}


@dataclass(frozen=True)
class Note:
    start_s: float
    end_s: float
    pitch: int  # MIDI note number (on the drum channel: the GM percussion key)
    velocity: int
    channel: int


@dataclass
class Piece:
    """What a MIDI file holds: notes in seconds at one tempo, and the score's tempo, meter and key."""

    bpm: float
    beats_per_bar: int
    tonic_pc: int  # 0 = C
    minor: bool
    seconds: float  # the end of the file
    programs: dict[int, int] = field(default_factory=dict)  # channel -> GM program (drum channel: the kit)
    notes: list[Note] = field(default_factory=list)
    sound_off: dict[int, float] = field(default_factory=dict)  # channel -> second its voices are cut


def _varlen(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def _track(events: list[tuple[int, int, bytes]]) -> bytes:
    """events: (tick, order, message bytes); sorted so note-offs precede note-ons at the same tick."""
    data, now = bytearray(), 0
    for tick, _, message in sorted(events, key=lambda e: (e[0], e[1])):
        data += _varlen(tick - now) + message
        now = tick
    data += b"\x00\xff\x2f\x00"
    return b"MTrk" + struct.pack(">I", len(data)) + bytes(data)


def key_signature(tonic_pc: int, minor: bool) -> int:
    """Sharps (+) or flats (-) of the key: a minor key has its relative major's signature."""
    return SHARPS_OF_MAJOR[(tonic_pc + 3) % 12 if minor else tonic_pc]


def write(path: str | Path, piece: Piece) -> Path:
    """Write ``piece`` as a format-1 Standard MIDI File. Returns ``path``."""
    write_sequence(path, [piece])
    return Path(path)


def write_sequence(path: str | Path, pieces: list[Piece], gap_s: float = 0.0) -> list[float]:
    """Write ``pieces`` one after another into one file, each at its own tempo, meter and key and with its own
    programs, ``gap_s`` of silence between them (every voice cut at each piece's end), so one synth run
    renders them all. Returns the second at which each piece starts."""
    meta, tracks, starts = [], {}, []
    origin, origin_s = 0, 0.0  # the tick and second where the current piece starts
    for k, piece in enumerate(pieces):
        tick = lambda s, p=piece, o=origin: o + int(round(s * p.bpm / 60.0 * TICKS_PER_BEAT))  # noqa: E731
        end = tick(piece.seconds)
        tempo_us = int(round(60_000_000 / piece.bpm))
        sharps = key_signature(piece.tonic_pc, piece.minor)
        meta += [(origin, 0, b"\xff\x51\x03" + tempo_us.to_bytes(3, "big")),
                 (origin, 0, bytes([0xFF, 0x58, 4, piece.beats_per_bar, 2, 24, 8])),
                 (origin, 0, bytes([0xFF, 0x59, 2, sharps & 0xFF, int(piece.minor)])),
                 (end, 9, b"\xff\x01\x03end")]  # a text event at the end, so the file lasts the piece's seconds
        last = k == len(pieces) - 1
        for channel in sorted({n.channel for n in piece.notes} | set(piece.programs)):
            events = tracks.setdefault(channel, [])
            events.append((origin, 0, bytes([0xC0 | channel, piece.programs.get(channel, 0) & 0x7F])))
            for n in piece.notes:
                if n.channel == channel:
                    on, off = tick(n.start_s), max(tick(n.start_s) + 1, tick(n.end_s))
                    if on < end:
                        events.append((on, 2, bytes([0x90 | channel, n.pitch & 0x7F, max(1, min(127, n.velocity))])))
                        events.append((min(off, end), 1, bytes([0x80 | channel, n.pitch & 0x7F, 0])))
            cuts = [tick(piece.sound_off[channel])] if channel in piece.sound_off else []
            events += [(t, 3, bytes([0xB0 | channel, ALL_SOUND_OFF, 0])) for t in cuts + ([] if last else [end])]
        starts.append(origin_s)
        span = tick(piece.seconds + gap_s) - origin
        origin, origin_s = origin + span, origin_s + span * 60.0 / (piece.bpm * TICKS_PER_BEAT)
    header = b"MThd" + struct.pack(">IHHH", 6, 1, 1 + len(tracks), TICKS_PER_BEAT)
    body = _track(meta) + b"".join(_track(tracks[c]) for c in sorted(tracks))
    Path(path).write_bytes(header + body)
    return starts


def read(path: str | Path) -> Piece:
    """Parse a file written by :func:`write` (or any SMF at one tempo) back into a :class:`Piece`."""
    data = Path(path).read_bytes()
    if data[:4] != b"MThd":
        raise GammaError(f"{path}: not a Standard MIDI File (no MThd header)")
    _, _, n_tracks, division = struct.unpack(">IHHH", data[4:14])
    piece = Piece(bpm=120.0, beats_per_bar=4, tonic_pc=0, minor=False, seconds=0.0)
    pos, raw = 14, []
    for _ in range(n_tracks):
        if data[pos:pos + 4] != b"MTrk":
            raise GammaError(f"{path}: track chunk expected at byte {pos}")
        length = struct.unpack(">I", data[pos + 4:pos + 8])[0]
        raw.append(data[pos + 8:pos + 8 + length])
        pos += 8 + length
    last_tick, ons = 0, {}
    for chunk in raw:
        i, tick, status = 0, 0, 0
        while i < len(chunk):
            delta = 0
            while True:
                byte = chunk[i]
                i += 1
                delta = (delta << 7) | (byte & 0x7F)
                if byte < 0x80:
                    break
            tick += delta
            last_tick = max(last_tick, tick)
            if chunk[i] & 0x80:
                status = chunk[i]
                i += 1
            if status == 0xFF:
                kind, length = chunk[i], chunk[i + 1]
                body = chunk[i + 2:i + 2 + length]
                i += 2 + length
                if kind == 0x51:
                    piece.bpm = 60_000_000 / int.from_bytes(body, "big")
                elif kind == 0x58:
                    piece.beats_per_bar = body[0]
                elif kind == 0x59:
                    sharps = body[0] - 256 if body[0] > 127 else body[0]
                    piece.minor = bool(body[1])
                    major_pc = (sharps * 7) % 12
                    piece.tonic_pc = (major_pc - 3) % 12 if piece.minor else major_pc
                continue
            kind, channel = status & 0xF0, status & 0x0F
            size = 1 if kind in (0xC0, 0xD0) else 2
            body = chunk[i:i + size]
            i += size
            if kind == 0xC0:
                piece.programs[channel] = body[0]
            elif kind == 0x90 and body[1] > 0:
                ons[(channel, body[0])] = (tick, body[1])
            elif kind in (0x80, 0x90) and (channel, body[0]) in ons:
                start, velocity = ons.pop((channel, body[0]))
                piece.notes.append(Note(start, tick, body[0], velocity, channel))
            elif kind == 0xB0 and body[0] == ALL_SOUND_OFF:
                piece.sound_off[channel] = tick
    seconds = lambda t: t / division * 60.0 / piece.bpm  # noqa: E731
    piece.notes = sorted((Note(seconds(n.start_s), seconds(n.end_s), n.pitch, n.velocity, n.channel)
                          for n in piece.notes), key=lambda n: (n.start_s, n.channel, n.pitch))
    piece.sound_off = {c: seconds(t) for c, t in piece.sound_off.items()}
    piece.seconds = seconds(last_tick)
    return piece
