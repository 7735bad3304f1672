"""Seeded augmentation of rendered audio: level, EQ, a room, noise and a lossy codec.

Every choice is drawn from the seed into an :class:`Augmentation`, so a clip's treatment can be printed and
redone: the same seed and audio give the same samples. EQ applies RBJ-cookbook shelf and peaking biquads as
their frequency response on the FFT of the clip (zero phase, numpy only); the room is a synthetic impulse
response (exponentially decaying noise, its RT60 drawn); noise is white or pink at a drawn SNR; the codec is
an MP3 or Opus round trip through FFmpeg (PyAV), aligned back to the input by cross-correlation.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

RATE = 16000


@dataclass(frozen=True)
class Augmentation:
    gain_db: float = 0.0
    low_shelf_db: float = 0.0  # at LOW_SHELF_HZ
    high_shelf_db: float = 0.0  # at HIGH_SHELF_HZ
    peak_hz: float = 1000.0
    peak_db: float = 0.0
    rt60_s: float = 0.0  # 0: no room
    wet: float = 0.0  # the room's share of the mix
    snr_db: float | None = None  # None: no noise
    pink: bool = False
    codec: str | None = None  # "mp3", "opus" or None
    kbps: int = 64


LOW_SHELF_HZ, HIGH_SHELF_HZ = 200.0, 4000.0


def augmentation_for_seed(seed: int) -> Augmentation:
    """The treatment of clip ``seed``: each effect on with its own probability, its amount uniform."""
    rng = np.random.default_rng([seed, 0xA06])
    on = lambda p: bool(rng.random() < p)  # noqa: E731
    eq = on(0.7)
    room = on(0.5)
    noise = on(0.5)
    codec = str(rng.choice(("mp3", "opus"))) if on(0.4) else None
    return Augmentation(
        gain_db=float(rng.uniform(-18, 0)),
        low_shelf_db=float(rng.uniform(-9, 9)) if eq else 0.0,
        high_shelf_db=float(rng.uniform(-12, 6)) if eq else 0.0,
        peak_hz=float(np.exp(rng.uniform(np.log(300), np.log(5000)))),
        peak_db=float(rng.uniform(-8, 8)) if eq else 0.0,
        rt60_s=float(rng.uniform(0.2, 1.6)) if room else 0.0,
        wet=float(rng.uniform(0.1, 0.5)) if room else 0.0,
        snr_db=float(rng.uniform(10, 40)) if noise else None,
        pink=on(0.5),
        codec=codec,
        kbps=int(rng.choice((32, 48, 64, 96))),
    )


def _biquad_response(kind: str, hz: float, db: float, w: np.ndarray, q: float = 0.707) -> np.ndarray:
    """Complex response at angular frequencies ``w`` (radians per sample) of an RBJ biquad."""
    a, w0 = 10 ** (db / 40), 2 * np.pi * hz / RATE
    cos, alpha = np.cos(w0), np.sin(w0) / (2 * q)
    if kind == "peak":
        b = (1 + alpha * a, -2 * cos, 1 - alpha * a)
        den = (1 + alpha / a, -2 * cos, 1 - alpha / a)
    else:
        sq = 2 * np.sqrt(a) * alpha
        sign = 1 if kind == "low" else -1
        b = (a * ((a + 1) - sign * (a - 1) * cos + sq), sign * 2 * a * ((a - 1) - sign * (a + 1) * cos),
             a * ((a + 1) - sign * (a - 1) * cos - sq))
        den = ((a + 1) + sign * (a - 1) * cos + sq, -sign * 2 * ((a - 1) + sign * (a + 1) * cos),
               (a + 1) + sign * (a - 1) * cos - sq)
    z = np.exp(-1j * w)
    return (b[0] + b[1] * z + b[2] * z**2) / (den[0] + den[1] * z + den[2] * z**2)


def equalize(audio: np.ndarray, aug: Augmentation) -> np.ndarray:
    if not (aug.low_shelf_db or aug.high_shelf_db or aug.peak_db):
        return audio
    n = len(audio) + 2048  # padding, so the circular FFT filter does not wrap the tail onto the start
    w = np.linspace(0, np.pi, n // 2 + 1)
    response = (_biquad_response("low", LOW_SHELF_HZ, aug.low_shelf_db, w)
                * _biquad_response("high", HIGH_SHELF_HZ, aug.high_shelf_db, w)
                * _biquad_response("peak", aug.peak_hz, aug.peak_db, w, q=1.0))
    return np.fft.irfft(np.fft.rfft(audio, n) * np.abs(response), n)[: len(audio)]


def room(audio: np.ndarray, aug: Augmentation, rng: np.random.Generator) -> np.ndarray:
    """Dry plus ``wet`` of the audio convolved with decaying noise (60 dB down at ``rt60_s``)."""
    if aug.rt60_s <= 0:
        return audio
    t = np.arange(int(aug.rt60_s * RATE)) / RATE
    ir = rng.standard_normal(len(t)) * 10 ** (-3 * t / aug.rt60_s)
    ir[: int(0.01 * RATE)] = 0.0  # 10 ms before the first reflection
    n = len(audio) + len(ir)
    tail = np.fft.irfft(np.fft.rfft(audio, n) * np.fft.rfft(ir, n), n)[: len(audio)]
    tail *= np.sqrt(np.mean(audio**2) / max(1e-12, np.mean(tail**2)))
    return (1 - aug.wet) * audio + aug.wet * tail


def add_noise(audio: np.ndarray, aug: Augmentation, rng: np.random.Generator) -> np.ndarray:
    if aug.snr_db is None:
        return audio
    noise = rng.standard_normal(len(audio))
    if aug.pink:  # 1/f power: scale the spectrum by 1/sqrt(f)
        spectrum = np.fft.rfft(noise)
        spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))
        spectrum[0] = 0
        noise = np.fft.irfft(spectrum, len(audio))
    power = np.mean(audio**2)
    noise *= np.sqrt(power / max(1e-12, np.mean(noise**2)) / 10 ** (aug.snr_db / 10))
    return audio + noise


def codec_round_trip(audio: np.ndarray, codec: str, kbps: int) -> np.ndarray:
    """The audio encoded as MP3 or Opus at ``kbps`` and decoded back to 16 kHz, the codec's delay removed."""
    import av

    container, name, stream_rate = {"mp3": ("mp3", "libmp3lame", 16000), "opus": ("ogg", "libopus", 48000)}[codec]
    buffer = io.BytesIO()
    _encode(buffer, audio.astype(np.float32), container, name, stream_rate, kbps)
    buffer.seek(0)
    decoded = []
    with av.open(buffer, "r") as source:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=RATE)
        for frame in source.decode(audio=0):
            decoded += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
        decoded += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    out = np.concatenate(decoded) if decoded else np.zeros(0, np.float32)
    lag = _lag(audio, out)
    out = out[lag:] if lag >= 0 else np.pad(out, (-lag, 0))
    return np.pad(out, (0, max(0, len(audio) - len(out))))[: len(audio)]


def _encode(target, audio: np.ndarray, container: str, codec: str, stream_rate: int, kbps: int) -> None:
    import av

    with av.open(target, "w", format=container) as out:
        stream = out.add_stream(codec, rate=stream_rate, layout="mono")
        stream.bit_rate = kbps * 1000
        stream.codec_context.open()
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="mono", rate=stream_rate,
                                      frame_size=stream.codec_context.frame_size or 1024)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[None]), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = RATE, 0
        for piece in list(resampler.resample(frame)) + list(resampler.resample(None)):
            out.mux(stream.encode(piece))
        out.mux(stream.encode(None))


def _lag(reference: np.ndarray, delayed: np.ndarray, max_lag: int = 4000) -> int:
    """Samples by which ``delayed`` trails ``reference``, from their cross-correlation over ±max_lag."""
    n = min(len(reference), len(delayed), 4 * RATE)
    if n < 2 * max_lag:
        return 0
    size = 2 * n
    corr = np.fft.irfft(np.fft.rfft(delayed[:n], size) * np.conj(np.fft.rfft(reference[:n], size)), size)
    lags = np.r_[corr[: max_lag + 1], corr[-max_lag:]]
    best = int(np.argmax(lags))
    return best if best <= max_lag else best - len(lags)


def augment(audio: np.ndarray, seed: int) -> np.ndarray:
    """float32, the same length as ``audio`` (16 kHz mono): the treatment of :func:`augmentation_for_seed`."""
    return apply(audio, augmentation_for_seed(seed), seed)


def apply(audio: np.ndarray, aug: Augmentation, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng([seed, 0x401E])
    x = np.asarray(audio, np.float64)
    x = room(equalize(x, aug), aug, rng)
    x = add_noise(x, aug, rng)
    peak = np.abs(x).max()
    if peak > 0.99:
        x = x * (0.99 / peak)
    if aug.codec is not None:
        x = codec_round_trip(x, aug.codec, aug.kbps)
    x = x * 10 ** (aug.gain_db / 20)
    return np.clip(x, -1.0, 1.0).astype(np.float32)
