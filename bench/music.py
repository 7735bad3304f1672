"""Synthesized music for benchmark inputs, written with soundfile block by block.

A chord progression of decaying harmonic notes over a kick drum and noise hi-hats: enough spectral
structure that the front end and encoders see music-like input, deterministic from the seed. The
cost of every stage depends on the length only, not on the content; the content just keeps the
numbers honest (no all-zero fast paths).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 44100  # a CD rip's rate, so the runtime's resampler is part of what is measured
BLOCK_SECONDS = 30
BPM = 120
# I-V-vi-IV in C major, fundamental frequencies of each chord's three notes (Hz)
CHORDS = ((261.63, 329.63, 392.00), (392.00, 493.88, 587.33), (440.00, 523.25, 659.25), (349.23, 440.00, 523.25))


def _block(start: int, n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) float32 samples starting at absolute sample ``start``; peak about 0.6."""
    t = (start + np.arange(n)) / rate
    beat = 60.0 / BPM
    chord = np.asarray(CHORDS)[(t // (4 * beat)).astype(int) % len(CHORDS)]  # (n, 3)
    since_beat = t % beat
    envelope = np.exp(-3.0 * since_beat)
    tones = sum(np.sin(2 * np.pi * h * chord).sum(axis=1) / h for h in (1, 2, 3)) * envelope / 6
    kick = np.sin(2 * np.pi * 55 * since_beat) * np.exp(-25 * since_beat) * ((t // beat) % 2 == 0)
    since_eighth = t % (beat / 2)
    hat = rng.standard_normal(n) * np.exp(-60 * since_eighth) * 0.05
    return (0.3 * tones + 0.4 * kick + hat).astype(np.float32)


def write_music(path: str | Path, seconds: float, rate: int = SAMPLE_RATE, channels: int = 2, seed: int = 0) -> Path:
    """Write ``seconds`` of stereo music to ``path`` (format from the suffix: .flac, .wav, ...)."""
    path = Path(path)
    rng = np.random.default_rng(seed)
    total = int(round(seconds * rate))
    with sf.SoundFile(path, "w", samplerate=rate, channels=channels) as f:
        for start in range(0, total, BLOCK_SECONDS * rate):
            mono = _block(start, min(BLOCK_SECONDS * rate, total - start), rate, rng)
            # a slight stereo spread, so the mix-down is not a no-op
            f.write(np.stack([mono * (0.9 + 0.1 * c) for c in range(channels)], axis=1))
    return path


def music_window(seconds: float = 30.0, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """(seconds * rate,) float32 mono at the encoder's rate, for stage timings that skip file I/O."""
    return _block(0, int(round(seconds * rate)), rate, np.random.default_rng(seed))
