"""Synthesized music: the one generator behind the tests, ``gamma-rt demo`` and the benchmarks.

A chord progression of decaying harmonic notes (one chord per bar of four beats), a kick drum on every
other beat and noise hi-hats on the eighths. That is enough spectral structure that the front end and
the encoders see music-like input (no all-zero fast paths), and it is deterministic from the seed. Each
channel pans the chord's notes differently and gets its own hi-hat noise, so a mix-down is never a no-op.

Music is made in blocks of ``BLOCK_SECONDS``, so hours of it are written in bounded memory; the whole
array is the same blocks concatenated, so ``synthesize`` equals what ``write`` puts in a float file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

SAMPLE_RATE = 44100  # a CD rip's rate, so the runtime's resampler is part of what is run
BLOCK_SECONDS = 30
# The three notes of each chord, Hz.
C_MAJOR_I_V_VI_IV = ((261.63, 329.63, 392.00), (392.00, 493.88, 587.33), (440.00, 523.25, 659.25),
                     (349.23, 440.00, 523.25))
G_MAJOR_I_VI_IV_V = ((196.00, 246.94, 293.66), (164.81, 196.00, 246.94), (130.81, 164.81, 196.00),
                     (146.83, 185.00, 220.00))
PARTIALS = 3  # harmonics 1..3 of every note, harmonic h at 1/h amplitude
KICK_HZ = 55.0


@dataclass(frozen=True)
class Music:
    """What to synthesize; the notes, beat and noise follow from these fields alone."""

    seconds: float = 30.0
    rate: int = SAMPLE_RATE  # samples per second
    channels: int | None = None  # None: one channel as (samples,); N: (samples, N) even for N = 1
    seed: int = 0  # the hi-hat noise
    bpm: float = 120.0
    chords: tuple[tuple[float, ...], ...] = C_MAJOR_I_V_VI_IV  # Hz, one chord per bar of four beats
    level: float = 1.0  # scales the mix; at 1.0 the peak stays below 0.9

    @property
    def samples(self) -> int:
        return int(round(self.seconds * self.rate))


def _pan(music: Music) -> np.ndarray:
    """(notes, channels) gains: channel c sits at c / (channels - 1) across the stereo field, note i at
    i / (notes - 1); a note is loudest in the channel nearest it."""
    n_notes = len(music.chords[0])
    n_channels = music.channels or 1
    channel_at = np.linspace(0, 1, n_channels) if n_channels > 1 else np.array([0.5])
    note_at = np.linspace(0, 1, n_notes) if n_notes > 1 else np.array([0.5])
    return 1.0 - 0.5 * np.abs(note_at[:, None] - channel_at[None, :])


def _partials(phase: np.ndarray) -> np.ndarray:
    """sum over h of sin(h * phase) / h, with two trig calls (sin((h+1)x) = 2 cos x sin(hx) - sin((h-1)x))."""
    previous, current, twice_cos = np.zeros_like(phase), np.sin(phase), 2 * np.cos(phase)
    total = current.copy()
    for h in range(2, PARTIALS + 1):
        previous, current = current, twice_cos * current - previous
        total += current / h
    return total


def _block(music: Music, start: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, channels) float32 starting at absolute sample ``start``."""
    t = (start + np.arange(n)) / music.rate
    beat = 60.0 / music.bpm
    chord = np.asarray(music.chords)[(t // (4 * beat)).astype(int) % len(music.chords)]  # (n, notes)
    since_beat = t % beat
    notes = _partials(2 * np.pi * chord * t[:, None]) * np.exp(-3.0 * since_beat)[:, None]
    tones = notes @ _pan(music) / (2 * PARTIALS)  # (n, channels)
    kick = np.sin(2 * np.pi * KICK_HZ * since_beat) * np.exp(-25 * since_beat) * ((t // beat) % 2 == 0)
    hat = rng.standard_normal((n, tones.shape[1])) * np.exp(-60 * (t % (beat / 2)))[:, None] * 0.05
    return (music.level * (0.3 * tones + 0.4 * kick[:, None] + hat)).astype(np.float32)


def blocks(music: Music, block_seconds: float = BLOCK_SECONDS) -> Iterator[np.ndarray]:
    """The music in consecutive blocks of ``block_seconds`` (the last one shorter), shaped as :func:`synthesize`."""
    rng = np.random.default_rng(music.seed)
    step = max(1, int(round(block_seconds * music.rate)))
    for start in range(0, music.samples, step):
        block = _block(music, start, min(step, music.samples - start), rng)
        yield block if music.channels is not None else block[:, 0]


def synthesize(music: Music) -> np.ndarray:
    """float32 (samples,) when ``music.channels`` is None, else (samples, channels)."""
    parts = list(blocks(music))
    if parts:
        return np.concatenate(parts)
    return np.zeros((0,) if music.channels is None else (0, music.channels), np.float32)


def write(path: str | Path, music: Music, subtype: str | None = None, format: str | None = None,
          progress: Callable | None = None) -> Path:
    """Write ``music`` to ``path`` block by block with soundfile (format from the suffix unless given: .flac,
    .wav, ...; ``subtype`` e.g. "PCM_16", "FLOAT"). ``progress`` wraps the blocks, like
    ``gamma_rt.progress.track``. Returns ``path``."""
    import soundfile as sf

    path = Path(path)
    steps = blocks(music)
    if progress is not None:
        steps = progress(steps, description=f"writing {path.name}", total=-(-music.samples // (BLOCK_SECONDS * music.rate)))
    with sf.SoundFile(path, "w", samplerate=music.rate, channels=music.channels or 1, subtype=subtype, format=format) as f:
        for block in steps:
            f.write(block)
    return path


def encode(path: str | Path, music: Music, container: str, codec: str, rate: int | None = None) -> Path:
    """Write ``music`` to ``path`` block by block through FFmpeg (PyAV): ``container`` e.g. "ipod" (M4A),
    "matroska", "webm"; ``codec`` e.g. "aac", "libopus"; ``rate`` the stream's rate (default the music's;
    Opus needs 48000). Returns ``path``."""
    return encode_blocks(path, blocks(music), music.rate, music.channels or 1, container, codec, rate)


def encode_blocks(path: str | Path, parts: Iterable[np.ndarray], rate: int, channels: int, container: str,
                  codec: str, stream_rate: int | None = None) -> Path:
    """Write float32 blocks, each (samples,) mono or (samples, channels), at ``rate`` Hz to ``path`` through
    FFmpeg (PyAV), as :func:`encode` does; ``stream_rate`` the encoded stream's rate (default ``rate``)."""
    import av

    layout = "stereo" if channels == 2 else "mono"
    stream_rate = stream_rate or rate
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=stream_rate, layout=layout)
        stream.codec_context.open()
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout=layout, rate=stream_rate,
                                      frame_size=stream.codec_context.frame_size or 1024)
        pts = 0
        for block in parts:
            planes = np.ascontiguousarray(np.atleast_2d(block.T) if block.ndim == 2 else block[None])
            frame = av.AudioFrame.from_ndarray(planes, format="fltp", layout=layout)
            frame.sample_rate, frame.pts = rate, pts
            pts += len(block)
            for piece in resampler.resample(frame):
                out.mux(stream.encode(piece))
        for piece in resampler.resample(None):
            out.mux(stream.encode(piece))
        out.mux(stream.encode(None))
    return Path(path)


# --- labelled songs --------------------------------------------------------------------------------------
# A Song is music whose every label is a field: tempo, key, meter, instruments and one event (an instrument
# entering or stopping at a whole second). Songs are drawn from a seed (``song_for_seed``) and rendered at
# 16 kHz mono in one vectorized pass, so thousands of 15 s clips take a minute on two cores.

TONICS = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
MODES = ("major", "minor")
METERS = (3, 4)  # beats per bar: 3/4 and 4/4
INSTRUMENTS = ("piano", "guitar", "organ", "bass", "drums", "lead")  # guitar: a plucked string
CHORD_INSTRUMENTS = ("piano", "guitar", "organ")
BPM_RANGE = (60, 180)
SONG_RATE = 16000
# Scale degrees (semitones above the tonic) and the four-bar progression of each mode, tonic first and last so
# the key's centre is heard.
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
PROGRESSIONS = {"major": (0, 3, 4, 0), "minor": (0, 3, 4, 0)}  # I IV V I, i iv v i (scale-degree indices)


@dataclass(frozen=True)
class Song:
    """A labelled piece: what it is made of, and so what a model should say about it."""

    seed: int = 0
    seconds: float = 15.0
    bpm: int = 120
    tonic: str = "C"  # one of TONICS
    mode: str = "major"  # one of MODES
    beats_per_bar: int = 4  # one of METERS
    instruments: tuple[str, ...] = ("piano", "bass", "drums")  # in INSTRUMENTS order
    event_instrument: str = "drums"  # one of ``instruments``
    event: str = "enters"  # "enters" (silent before) or "stops" (silent after)
    event_second: int = 5

    @property
    def key(self) -> str:
        return f"{self.tonic} {self.mode}"

    @property
    def meter(self) -> str:
        return f"{self.beats_per_bar}/4"


def song_for_seed(seed: int, seconds: float = 15.0) -> Song:
    """The labels of song ``seed``, uniform over tempo, key, meter and 2-4 instruments (one a chord player)."""
    rng = np.random.default_rng([seed, 0x5EED])
    chord = str(rng.choice(CHORD_INSTRUMENTS))
    others = [i for i in INSTRUMENTS if i != chord]
    extra = rng.choice(others, size=int(rng.integers(1, 4)), replace=False)
    chosen = {chord, *map(str, extra)}
    instruments = tuple(i for i in INSTRUMENTS if i in chosen)
    return Song(
        seed=seed, seconds=seconds, bpm=int(rng.integers(BPM_RANGE[0], BPM_RANGE[1] + 1)),
        tonic=TONICS[int(rng.integers(12))], mode=MODES[int(rng.integers(2))],
        beats_per_bar=int(rng.choice(METERS)), instruments=instruments,
        event_instrument=str(rng.choice([i for i in instruments if i != chord])),
        event=("enters", "stops")[int(rng.integers(2))],
        event_second=int(rng.integers(3, int(seconds) - 2)),
    )


def _hz(midi: np.ndarray) -> np.ndarray:
    return 440.0 * 2.0 ** ((midi - 69) / 12)


def _tone(freq: np.ndarray, t: np.ndarray, weights: tuple[float, ...]) -> np.ndarray:
    """Harmonics of ``freq`` (n,) or (n, k) at times ``t`` (n,), harmonic h weighted ``weights[h - 1]``."""
    phase = (2 * np.pi * freq * (t[:, None] if freq.ndim == 2 else t)).astype(np.float32)  # float32: 2x faster
    return sum(w * np.sin((h + 1) * phase) for h, w in enumerate(weights))


def render(song: Song, rate: int = SONG_RATE) -> np.ndarray:
    """float32 (samples,) mono, peak 0.8: each instrument of ``song`` over its beat, bar and chords."""
    n = int(round(song.seconds * rate))
    t = np.arange(n) / rate
    beat_s = 60.0 / song.bpm
    beat = (t // beat_s).astype(int)
    since_beat = t - beat * beat_s
    in_bar = beat % song.beats_per_bar
    accent = np.where(in_bar == 0, 1.0, 0.55)  # the downbeat is louder: the meter is heard
    scale = np.array(SCALES[song.mode])
    tonic = 60 + TONICS.index(song.tonic)  # C4..B4
    degree = np.array(PROGRESSIONS[song.mode])[(beat // song.beats_per_bar) % 4]  # (n,)
    triad = tonic + np.stack([scale[(degree + k) % 7] + 12 * ((degree + k) // 7) for k in (0, 2, 4)], 1)  # (n, 3)
    rng = np.random.default_rng([song.seed, 0xD2])
    parts = {
        "piano": lambda: _tone(_hz(triad), t, (1.0, 0.5, 0.3, 0.15)).sum(1) * np.exp(-4 * since_beat) * accent,
        "guitar": lambda: _pluck(triad, t, beat_s, accent),
        "organ": lambda: _tone(_hz(triad - 12), t, (0.6, 0.6, 0.4, 0.4, 0.2)).sum(1) * (0.8 + 0.2 * accent),
        "bass": lambda: _tone(_hz(triad[:, 0] - 24), t, (1.0, 0.6, 0.3)) * np.exp(-2.5 * since_beat) * accent * 1.5,
        "drums": lambda: _drums(song, t, since_beat, in_bar, rng),
        "lead": lambda: _lead(song, triad, t, beat, since_beat),
    }
    mix = np.zeros(n)
    for name in song.instruments:
        part = parts[name]()
        if name == song.event_instrument:
            part = part * ((t >= song.event_second) if song.event == "enters" else (t < song.event_second))
        mix += part / max(1e-9, np.abs(part).max())
    return (0.8 * mix / max(1e-9, np.abs(mix).max())).astype(np.float32)


def _pluck(triad: np.ndarray, t: np.ndarray, beat_s: float, accent: np.ndarray) -> np.ndarray:
    """An arpeggio on the eighths: one chord note at a time, bright and quickly decaying."""
    eighth = (t // (beat_s / 2)).astype(int)
    note = triad[np.arange(len(t)), eighth % 3] + 12
    since = t - eighth * (beat_s / 2)
    return _tone(_hz(note), t, (1.0, 0.8, 0.6, 0.5, 0.4, 0.3)) * np.exp(-9 * since) * accent


def _drums(song: Song, t, since_beat, in_bar, rng) -> np.ndarray:
    """Kick on 1 (and 3 in 4/4), snare on the other beats, hi-hat noise on the eighths."""
    kick_beat = (in_bar == 0) | ((song.beats_per_bar == 4) & (in_bar == 2))
    kick = np.sin(2 * np.pi * (50 * since_beat + 150 * (1 - np.exp(-30 * since_beat)) / 30)) * np.exp(-12 * since_beat)
    noise = rng.standard_normal(len(t))
    snare = noise * np.exp(-18 * since_beat) * 0.5
    since_eighth = since_beat % (30.0 / song.bpm)
    hat = np.diff(noise, prepend=0.0) * np.exp(-80 * since_eighth) * 0.25
    return np.where(kick_beat, kick, snare) + hat


def _lead(song: Song, triad: np.ndarray, t, beat, since_beat) -> np.ndarray:
    """A melody of chord tones an octave up, one note a beat, a bright saw-like tone with vibrato."""
    pick = np.random.default_rng([song.seed, 0x1EAD]).integers(0, 3, size=int(beat.max()) + 1)[beat]
    note = triad[np.arange(len(t)), pick] + 12
    vibrato = 1 + 0.004 * np.sin(2 * np.pi * 5.5 * t)
    envelope = np.minimum(1.0, since_beat * 50) * np.exp(-1.5 * since_beat)
    return _tone(_hz(note) * vibrato, t, (1.0, 0.5, 0.33, 0.25, 0.2)) * envelope
