"""Peak memory of the audio front half on an hours-long file: open_audio -> windows -> log_mel.

Writes a long FLAC (44.1 kHz stereo by default, as a CD rip would be) block by block, then streams it
in a fresh subprocess and records that process's peak RSS. A short file goes through the same path in
the same run, so the two peaks can be compared on this machine: bounded memory means they are close.

    python -m gamma_rt.bench.memory_long_audio --hours 3 --out bench/results/memory_long_audio.json

The JSON holds both peaks, their ratio, the timings, the inputs, the machine and the versions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from gamma_rt.machine import describe
from gamma_rt.progress import track
from gamma_rt.synth import Music, write

# Runs in the child: stream the file, keep nothing but counters, print one JSON line.
_CHILD = r"""
import json, sys, time
import numpy as np
from gamma_rt.runtime.audio import open_audio
from gamma_rt.runtime.mel import log_mel_spectrogram
from gamma_rt.runtime.windows import windows

def status_mib(field):
    # VmHWM belongs to this process's own address space; ru_maxrss would carry over the parent's
    # peak across fork + exec and report the writer's memory, not ours
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

baseline = status_mib("VmRSS")
t0 = time.perf_counter()
n_windows, checksum, seconds = 0, 0.0, 0.0
for window in windows(open_audio(sys.argv[1])):
    mel = log_mel_spectrogram(window.samples)
    n_windows += 1
    checksum += float(mel.mean())
    seconds = window.end_s
print(json.dumps({"baseline_rss_mib": baseline, "peak_rss_mib": status_mib("VmHWM"),
                  "windows": n_windows, "audio_seconds": seconds, "wall_s": time.perf_counter() - t0,
                  "mel_mean_checksum": checksum / max(1, n_windows)}))
"""


def write_long_flac(path: Path, seconds: int, rate: int, channels: int) -> float:
    """``seconds`` of synthesized music (gamma_rt/synth.py) as 16-bit FLAC; returns the write time."""
    t0 = time.perf_counter()
    write(path, Music(seconds, rate, channels), subtype="PCM_16", format="FLAC", progress=track)
    return time.perf_counter() - t0


def stream_peak(path: Path) -> dict:
    """Stream ``path`` through the front half in a fresh process; its peak RSS and timings."""
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(hours: float, short_minutes: float, rate: int, channels: int, workdir: Path) -> dict:
    import soundfile
    import soxr

    long_path, short_path = workdir / "long.flac", workdir / "short.flac"
    write_long_s = write_long_flac(long_path, int(hours * 3600), rate, channels)
    write_long_flac(short_path, int(short_minutes * 60), rate, channels)
    short = stream_peak(short_path)
    long = stream_peak(long_path)
    return {
        "bench": "memory_long_audio",
        "inputs": {"hours": hours, "short_minutes": short_minutes, "sample_rate": rate, "channels": channels,
                   "format": "FLAC PCM_16", "long_file_mib": round(long_path.stat().st_size / 2**20, 1)},
        "long": long,
        "short": short,
        "peak_rss_ratio_long_over_short": round(long["peak_rss_mib"] / short["peak_rss_mib"], 3),
        "long_audio_x_realtime": round(long["audio_seconds"] / long["wall_s"], 1),
        "write_long_s": round(write_long_s, 1),
        "machine": describe(threads=1),  # the child streams on one thread
        "versions": {"numpy": np.__version__, "soundfile": soundfile.__version__,
                     "libsndfile": soundfile.__libsndfile_version__, "soxr": soxr.__version__},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Peak RSS of streaming an hours-long FLAC through audio -> windows -> log-mel.")
    parser.add_argument("--hours", type=float, default=3.0, help="length of the long file (default 3)")
    parser.add_argument("--short-minutes", type=float, default=5.0, help="length of the comparison file (default 5)")
    parser.add_argument("--rate", type=int, default=44100, help="sample rate of the files, Hz (default 44100)")
    parser.add_argument("--channels", type=int, default=2, help="channels of the files (default 2)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/memory_long_audio.json"), help="JSON result file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(args.hours, args.short_minutes, args.rate, args.channels, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("long", "short", "peak_rss_ratio_long_over_short")}, indent=2))


if __name__ == "__main__":
    main()
