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
from typing import Callable, Iterator

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
