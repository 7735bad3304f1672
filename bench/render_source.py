"""The rendered training source, measured: how fast it renders, and whether its labels can be heard.

Throughput: ``--clips`` training clips of 15 s rendered one FluidSynth run each, then 16 to a run, clean
and augmented (seconds per clip; one process, so one core).

Audibility, by plain signal processing that knows nothing of the generator, on the same clips (clean and
augmented) and on the held-out real compositions (gamma_rt/render/real.py, eval only):

- tempo: the lag in 60-180 BPM with the highest autocorrelation of the onset envelope (spectral flux,
  10 ms), right within ±4 % of the label, and "up to octave" when half or double the label is;
- key: chroma (STFT magnitudes folded onto pitch classes, 50-2000 Hz) correlated with the Krumhansl-Kessler
  profiles of the 24 keys;
- meter: given the labelled beat, 3/4 when the envelope's autocorrelation at three beats beats four beats.

These are floors of what a model could learn, not targets; the constant guess on each set sits beside them.
Written to bench/results/render-source-<time>.json.

    python -m gamma_rt.bench.render_source --clips 64
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from .entry import run_module, write_json

RESULT_FORMAT = "gamma-rt-render-source/1"
DEFAULT_OUT = Path("bench") / "results"
FRAME_RATE = 100  # onset envelope frames per second
MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])


def onset_autocorrelation(audio: np.ndarray, rate: int = 16000) -> np.ndarray:
    hop = rate // FRAME_RATE
    frames = np.lib.stride_tricks.sliding_window_view(audio, 1024)[::hop] * np.hanning(1024)
    mag = np.log1p(100 * np.abs(np.fft.rfft(frames, axis=1)))
    flux = np.maximum(0.0, np.diff(mag, axis=0)).sum(axis=1)
    flux -= flux.mean()
    return np.correlate(flux, flux, "full")[len(flux) - 1:]


def tempo_estimate(corr: np.ndarray) -> int:
    bpms = np.arange(60, 181)
    return int(bpms[np.argmax(np.interp(60.0 * FRAME_RATE / bpms, np.arange(len(corr)), corr))])


def meter_estimate(corr: np.ndarray, bpm: float) -> str:
    beat = 60.0 * FRAME_RATE / bpm
    three, four = np.interp([3 * beat, 4 * beat], np.arange(len(corr)), corr)
    return "3/4" if three > four else "4/4"


def key_estimate(audio: np.ndarray, rate: int = 16000) -> str:
    from gamma_rt.synth import TONICS

    frames = np.lib.stride_tricks.sliding_window_view(audio, 4096)[::2048] * np.hanning(4096)
    mag = np.abs(np.fft.rfft(frames, axis=1)).sum(axis=0)
    hz = np.fft.rfftfreq(4096, 1 / rate)
    keep = (hz > 50) & (hz < 2000)
    pcs = np.round(12 * np.log2(hz[keep] / 440.0) + 69).astype(int) % 12
    chroma = np.bincount(pcs, weights=mag[keep], minlength=12)
    scores = [(np.corrcoef(chroma, np.roll(profile, t))[0, 1], f"{TONICS[t]} {mode}")
              for mode, profile in (("major", MAJOR), ("minor", MINOR)) for t in range(12)]
    return max(scores)[1]


def audibility(clips) -> dict:
    """Hit rates of the estimates over (audio, Song) pairs."""
    tempo = octave = key = meter = 0
    n = 0
    for audio, song in clips:
        corr = onset_autocorrelation(audio)
        bpm = tempo_estimate(corr)
        tempo += abs(bpm - song.bpm) <= 0.04 * song.bpm
        octave += any(abs(bpm * f - song.bpm) <= 0.04 * song.bpm for f in (0.5, 1, 2))
        key += key_estimate(audio) == song.key
        meter += meter_estimate(corr, song.bpm) == song.meter
        n += 1
    return {"clips": n, "tempo": round(tempo / n, 3), "tempo_up_to_octave": round(octave / n, 3),
            "key": round(key / n, 3), "meter_given_beat": round(meter / n, 3)}


def measure(n_clips: int) -> dict:
    from gamma_rt.render import rendered_song, rendered_songs
    from gamma_rt.render.real import real_compositions
    from gamma_rt.render.scoring import constant_guess
    from gamma_rt.synthetic_tasks import train_song

    seeds = [train_song(i, seed=3).seed for i in range(n_clips)]
    timing = {}
    t0 = time.perf_counter()
    for s in seeds[:16]:
        rendered_song(s, augment=False)
    timing["one_run_each_s_per_clip"] = round((time.perf_counter() - t0) / min(16, n_clips), 3)
    t0 = time.perf_counter()
    clean = list(rendered_songs(seeds, augment=False))
    timing["batched_clean_s_per_clip"] = round((time.perf_counter() - t0) / n_clips, 3)
    t0 = time.perf_counter()
    augmented = list(rendered_songs(seeds, augment=True))
    timing["batched_augmented_s_per_clip"] = round((time.perf_counter() - t0) / n_clips, 3)
    real = [(audio, song) for _, audio, song in real_compositions()]
    sets = {"training_clean": clean, "training_augmented": augmented, "real_compositions": real}
    return {"timing": timing,
            "audibility": {name: audibility(clips) for name, clips in sets.items()},
            "constant_guess": {name: constant_guess([s for _, s in clips])[0] for name, clips in sets.items()}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gamma_rt.bench.render_source", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=64, help="training clips of 15 s to render (default 64)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT})")
    args = p.parse_args(argv)

    def job(command: str) -> None:
        from gamma_rt import machine

        figures = measure(max(16, args.clips))
        result = {"format": RESULT_FORMAT, "command": command, "machine": machine.describe(1),
                  "inputs": {"clips": max(16, args.clips), "seconds": 15.0}, **figures}
        out = write_json(args.out / f"render-source-{time.strftime('%Y%m%dT%H%M%S')}.json", result)
        print(f"{figures['timing']}\n{figures['audibility']}\nwrote {out}")

    return run_module("render_source", argv, job)


if __name__ == "__main__":
    sys.exit(main())
