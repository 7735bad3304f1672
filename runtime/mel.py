"""Whisper's log-mel front end in numpy (no torch), shaped by the bundle's manifest.

Matches ``transformers``' WhisperFeatureExtractor: a centred STFT (reflect padding, periodic Hann window),
power spectrum, slaney mel filters, log10 with a 1e-10 floor, clamp to (max - 8) per example, then
(x + 4) / 4. The constants below are Whisper large-v3's and only defaults: the runtime passes n_mels,
n_fft, hop_length and the sample rate from ``manifest.audio`` (:class:`FrontEnd`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000  # Hz
N_FFT = 400  # samples per STFT frame (25 ms)
HOP_LENGTH = 160  # samples between frames (10 ms)
N_MELS = 128  # mel bins of Whisper large-v3
CHUNK_SECONDS = 30  # one encoder window
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480000 samples per window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames per window
N_FREQS = N_FFT // 2 + 1  # 201 rfft bins

LOG_FLOOR = 1e-10  # power floor before log10, as in the reference extractor
DYNAMIC_RANGE = 8.0  # log10 units kept below each example's maximum

_FILTER_CACHE: dict[tuple[int, int, int], np.ndarray] = {}


@dataclass(frozen=True)
class FrontEnd:
    """The front end's shape: mel bins, FFT size and hop (samples), sample rate (Hz)."""

    n_mels: int = N_MELS
    n_fft: int = N_FFT
    hop_length: int = HOP_LENGTH
    sample_rate: int = SAMPLE_RATE

    @classmethod
    def from_manifest(cls, audio) -> "FrontEnd":
        """From a :class:`gamma_rt.manifest.AudioSection`."""
        return cls(audio.n_mels, audio.n_fft, audio.hop_length, audio.sample_rate)

    lookahead = 0  # samples past a window its frames read: none, Whisper pads each window itself

    def __call__(self, audio: np.ndarray, n_valid: int | None = None, after: np.ndarray | None = None) -> np.ndarray:
        # Whisper's extractor sees the zero-padded window itself: n_valid and after change nothing here
        return log_mel_spectrogram(audio, self.n_mels, self.n_fft, self.hop_length, self.sample_rate)


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    mels = 3.0 * hz / 200.0
    log_region = hz >= 1000.0
    mels = np.where(log_region, 15.0 + np.log(np.maximum(hz, 1e-12) / 1000.0) * (27.0 / np.log(6.4)), mels)
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    hz = 200.0 * mels / 3.0
    log_region = mels >= 15.0
    return np.where(log_region, 1000.0 * np.exp((np.log(6.4) / 27.0) * (mels - 15.0)), hz)


def _mel_filters64(n_mels: int, sr: int, n_fft: int) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) float64 triangular filters, slaney-normalized; cached per shape."""
    key = (n_mels, sr, n_fft)
    if key not in _FILTER_CACHE:
        fft_freqs = np.linspace(0.0, sr // 2, n_fft // 2 + 1)
        edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2), n_mels + 2))
        widths = np.diff(edges)
        slopes = edges[None, :] - fft_freqs[:, None]  # (freqs, n_mels + 2)
        down = -slopes[:, :-2] / widths[:-1]
        up = slopes[:, 2:] / widths[1:]
        filters = np.maximum(0.0, np.minimum(down, up))  # (freqs, n_mels)
        # slaney norm: each triangle has unit area, so wide high bands are not louder
        filters *= 2.0 / (edges[2:] - edges[:-2])
        _FILTER_CACHE[key] = np.ascontiguousarray(filters.T)
    return _FILTER_CACHE[key]


def mel_filters(n_mels: int = N_MELS, sr: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """Slaney mel filterbank, (n_mels, n_fft // 2 + 1) float32, 0 Hz to sr / 2."""
    return _mel_filters64(n_mels, sr, n_fft).astype(np.float32)


def pad_or_trim(audio: np.ndarray, length: int = N_SAMPLES) -> np.ndarray:
    """Zero-pad or cut the last axis of ``audio`` to ``length`` samples (returns a new or the same array)."""
    n = audio.shape[-1]
    if n > length:
        return audio[..., :length]
    if n < length:
        pad = [(0, 0)] * (audio.ndim - 1) + [(0, length - n)]
        return np.pad(audio, pad)
    return audio


def _hann(n_fft: int) -> np.ndarray:
    """Periodic Hann window (the STFT convention), float64."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)


def log_mel_spectrogram(audio: np.ndarray, n_mels: int = N_MELS, n_fft: int = N_FFT, hop_length: int = HOP_LENGTH,
                        sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Whisper log-mel features of windows already padded or trimmed to the window length.

    audio: (n_samples,) or (batch, n_samples) float32 mono at ``sample_rate``, values in [-1, 1].
    Returns (n_mels, n_samples // hop_length) or (batch, n_mels, n_samples // hop_length) float32 —
    for a 30 s window at 16 kHz (128 mel bins, 3000 frames) — log10 scale, clamped to max - 8, then (x + 4) / 4.
    """
    audio = np.asarray(audio)
    if audio.ndim not in (1, 2):
        raise ValueError(f"audio must be (n_samples,) or (batch, n_samples), got shape {audio.shape}")
    batch = audio.reshape(1, -1) if audio.ndim == 1 else audio
    if batch.shape[-1] < n_fft // 2 + 1:
        raise ValueError(f"audio needs at least {n_fft // 2 + 1} samples for reflect padding, got {batch.shape[-1]}")
    out = np.empty((len(batch), n_mels, batch.shape[-1] // hop_length), np.float32)
    # one window at a time: each is fully vectorized already, and this keeps the float64 temporaries
    # (about 40 MB per 30 s window) from growing with the batch
    for i, window in enumerate(batch):
        out[i] = _log_mel_window(window, n_mels, n_fft, hop_length, sample_rate)
    return out[0] if audio.ndim == 1 else out


def _log_mel_window(samples: np.ndarray, n_mels: int, n_fft: int, hop_length: int, sample_rate: int) -> np.ndarray:
    """(n_samples,) -> (n_mels, n_samples // hop_length) float32, normalized by this window's own peak."""
    # float64 keeps the power spectrum exact enough that log10 of quiet bins agrees to 1e-4
    padded = np.pad(samples.astype(np.float64), n_fft // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length]
    frames = frames[:-1]  # the reference drops the last centred frame: 3001 -> 3000
    spectrum = np.fft.rfft(frames * _hann(n_fft), axis=-1)  # (frames, n_fft // 2 + 1) complex128
    power = spectrum.real**2 + spectrum.imag**2
    mel = _mel_filters64(n_mels, sample_rate, n_fft) @ power.T  # (n_mels, frames)

    log_spec = np.log10(np.maximum(mel, LOG_FLOOR))
    log_spec = np.maximum(log_spec, log_spec.max() - DYNAMIC_RANGE)
    return (log_spec + 4.0) / 4.0
