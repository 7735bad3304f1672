"""Kaldi's log mel filterbank ("fbank") in numpy (no torch), as AudioMAE and OpenMU feed their ViT.

Kaldi's definition (``compute-fbank-feats``, which ``torchaudio.compliance.kaldi.fbank`` follows), with the
options those models pass (dither 0, ``window_type="hanning"``, no energy):

- frames of 25 ms every 10 ms, only those that fit in the audio (``snip_edges``): 1 + (n - 400) // 160;
- per frame: remove the DC offset, pre-emphasis x[i] - 0.97 x[i-1] (x[-1] = x[0]), a symmetric Hann
  ("hanning") window, zero-padded to 512 points, power spectrum;
- triangular filters evenly spaced on the mel scale 1127 ln(1 + f / 700) from 20 Hz to Nyquist, over
  FFT bins 0..255 (the Nyquist bin gets no weight); natural log with a floor of float32's epsilon.

Then, as the models' processors do: zero-pad or cut to a fixed number of frames (3,072 = 30.72 s) and
normalize with AudioSet's statistics, (x - mean) / (2 * std). The padding is added before the
normalization, so padded frames hold (0 - mean) / (2 * std), not 0.

A global DC offset needs no handling: every frame removes its own mean first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gamma_rt.errors import BundleError

SAMPLE_RATE = 16000  # Hz
FRAME_LENGTH = 400  # samples per frame (25 ms)
FRAME_SHIFT = 160  # samples between frames (10 ms)
PADDED_LENGTH = 512  # FFT size: the frame rounded up to a power of two
N_MELS = 128
N_FRAMES = 3072  # frames the encoder takes: 30.72 s
LOW_FREQ = 20.0  # Hz, Kaldi's default lowest filter edge
PREEMPHASIS = 0.97
LOG_FLOOR = float(np.finfo(np.float32).eps)  # Kaldi floors the filter energies at float epsilon
AUDIOSET_MEAN = -4.2677393  # AudioMAE's normalization statistics (AudioSet)
AUDIOSET_STD = 4.5689974

_FILTER_CACHE: dict[tuple[int, int, int, float], np.ndarray] = {}


def mel_banks(n_mels: int = N_MELS, sample_rate: int = SAMPLE_RATE, n_fft: int = PADDED_LENGTH,
              low_freq: float = LOW_FREQ) -> np.ndarray:
    """Kaldi's triangular filters, (n_mels, n_fft // 2 + 1) float64; the last (Nyquist) column is zero.

    Computed in float32 as torchaudio computes them (the models were trained on those filters; exact
    float64 ones differ by up to 1.4e-5). float32 ``log`` may still differ from torch's by one ulp."""
    key = (n_mels, sample_rate, n_fft, low_freq)
    if key not in _FILTER_CACHE:
        f32 = np.float32
        low, high = 1127.0 * np.log(1.0 + low_freq / 700.0), 1127.0 * np.log(1.0 + sample_rate / 2 / 700.0)
        delta = (high - low) / (n_mels + 1)
        bins = np.arange(n_mels, dtype=f32)[:, None]
        left = f32(low) + bins * f32(delta)
        centre = f32(low) + (bins + f32(1.0)) * f32(delta)
        right = f32(low) + (bins + f32(2.0)) * f32(delta)
        hz = f32(sample_rate / n_fft) * np.arange(n_fft // 2, dtype=f32)
        mel = (f32(1127.0) * np.log(f32(1.0) + hz / f32(700.0)))[None, :]
        up = (mel - left) / (centre - left)
        down = (right - mel) / (right - centre)
        banks = np.maximum(f32(0.0), np.minimum(up, down)).astype(np.float64)
        _FILTER_CACHE[key] = np.pad(banks, ((0, 0), (0, 1)))
    return _FILTER_CACHE[key]


def _hanning(n: int) -> np.ndarray:
    """Kaldi's "hanning" window: the symmetric Hann, 0.5 - 0.5 cos(2 pi i / (n - 1))."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / (n - 1))


def fbank(samples: np.ndarray, n_mels: int = N_MELS, sample_rate: int = SAMPLE_RATE,
          frame_length: int = FRAME_LENGTH, frame_shift: int = FRAME_SHIFT) -> np.ndarray:
    """Kaldi log mel filterbank of 1-D audio: (frames, n_mels) float32, natural log; no padding, no
    normalization. ``frames`` is 1 + (n - frame_length) // frame_shift, 0 for audio under one frame."""
    x = np.asarray(samples, np.float64).reshape(-1)
    if len(x) < frame_length:
        return np.zeros((0, n_mels), np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(x, frame_length)[::frame_shift]
    frames = frames - frames.mean(axis=1, keepdims=True)
    previous = np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames = (frames - PREEMPHASIS * previous) * _hanning(frame_length)
    n_fft = 1 << (frame_length - 1).bit_length()
    spectrum = np.fft.rfft(frames, n=n_fft, axis=1)
    power = spectrum.real**2 + spectrum.imag**2
    energies = power @ mel_banks(n_mels, sample_rate, n_fft).T
    return np.log(np.maximum(energies, LOG_FLOOR)).astype(np.float32)


def pad_or_cut(features: np.ndarray, n_frames: int = N_FRAMES) -> np.ndarray:
    """(frames, n_mels) -> (n_frames, n_mels): zero frames appended, or the frames past ``n_frames`` cut."""
    if len(features) >= n_frames:
        return features[:n_frames]
    return np.pad(features, ((0, n_frames - len(features)), (0, 0)))


@dataclass(frozen=True)
class KaldiFbank:
    """The ``kaldi_fbank`` front end of a bundle: audio -> (n_mels, n_frames) float32, normalized.

    ``__call__(audio, n_valid, after)``: audio (batch, samples) float32 16 kHz windows; only the first
    ``n_valid`` samples of each are audio (the rest is the window's zero padding, which Kaldi never sees:
    the features are padded instead). ``after``: the samples that follow a full window in the source, up to
    :attr:`lookahead`: as over the whole file, the last frames of the window read into them."""

    n_mels: int = N_MELS
    n_frames: int = N_FRAMES
    sample_rate: int = SAMPLE_RATE
    frame_length: int = FRAME_LENGTH
    hop_length: int = FRAME_SHIFT
    mean: float = AUDIOSET_MEAN
    std: float = AUDIOSET_STD

    @property
    def lookahead(self) -> int:
        """Samples past a window that its last frames cover: n_frames frames need (n_frames - 1) * hop +
        frame_length samples (3,072 frames: 491,760, 240 past 30.72 s)."""
        return max(0, (self.n_frames - 1) * self.hop_length + self.frame_length - self.n_frames * self.hop_length)

    @classmethod
    def from_manifest(cls, audio) -> "KaldiFbank":
        """From a :class:`gamma_rt.manifest.AudioSection` whose ``front_end`` is ``kaldi_fbank``."""
        options = dict(audio.front_end_options)
        unknown = sorted(set(options) - {"mean", "std"})
        if unknown:
            raise BundleError(f"manifest.json: field audio.front_end_options has unknown key(s) {', '.join(unknown)}")
        for key in ("mean", "std"):
            if not isinstance(options.get(key, 0.0), (int, float)):
                raise BundleError(f"manifest.json: field audio.front_end_options.{key} must be a number")
        return cls(audio.n_mels, audio.window_frames, audio.sample_rate, audio.n_fft, audio.hop_length,
                   float(options.get("mean", AUDIOSET_MEAN)), float(options.get("std", AUDIOSET_STD)))

    def features(self, samples: np.ndarray) -> np.ndarray:
        """One clip's 1-D samples -> (n_mels, n_frames) float32, padded or cut, normalized."""
        raw = fbank(samples, self.n_mels, self.sample_rate, self.frame_length, self.hop_length)
        fixed = pad_or_cut(raw, self.n_frames)
        return ((fixed - self.mean) / (2.0 * self.std)).T.astype(np.float32)

    def __call__(self, audio: np.ndarray, n_valid: int | None = None, after: np.ndarray | None = None) -> np.ndarray:
        audio = np.asarray(audio)
        batch = audio.reshape(1, -1) if audio.ndim == 1 else audio
        n = batch.shape[-1] if n_valid is None else n_valid
        tail = np.zeros(0, np.float32) if after is None or n < batch.shape[-1] else np.asarray(after, np.float32)
        out = np.stack([self.features(np.concatenate([row[:n], tail])) for row in batch])
        return out[0] if audio.ndim == 1 else out
