"""Peak memory of the audio front half on an hours-long file: open_audio -> windows -> log_mel.

Writes a long FLAC (44.1 kHz stereo by default, as a CD rip would be) block by block, then streams it
in a fresh subprocess and records that process's peak RSS. A short file goes through the same path in
the same run, so the two peaks can be compared on this machine: bounded memory means they are close.

The same music also goes through FFmpeg (runtime/audio_ffmpeg.py) in the same run: ``--ffmpeg m4a,mka``
encodes one minute of it as AAC with PyAV and repeats those packets to the long and the short length in an
MP4 (.m4a) and a Matroska (.mka) container, so the two differ only by their container. Each child also
reports its RSS right after open (the FFmpeg libraries and the container's index are loaded there), so
growth with the file's length (MiB per hour) is told apart from a fixed cost; and the long FLAC is streamed
once more by a process that imports PyAV first, so the libraries' own cost is told apart from the demuxer's
and the decoder's.

    python -m gamma_rt.bench.memory_long_audio --hours 3 --out bench/results/memory_long_audio.json

The JSON holds both FLAC peaks, their ratio, the timings, the inputs, the machine and the versions, and
under ``ffmpeg`` the same for each FFmpeg container with its difference to FLAC and its slope.
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
if "--import-av" in sys.argv:  # FFmpeg's libraries loaded, as any file libsndfile refuses loads them
    import av
t0 = time.perf_counter()
n_windows, checksum, seconds = 0, 0.0, 0.0
stream = open_audio(sys.argv[1])
opened = status_mib("VmRSS")  # + the decoder's libraries and the container's index (FFmpeg)
for window in windows(stream):
    mel = log_mel_spectrogram(window.samples)
    n_windows += 1
    checksum += float(mel.mean())
    seconds = window.end_s
print(json.dumps({"baseline_rss_mib": baseline, "opened_rss_mib": opened, "peak_rss_mib": status_mib("VmHWM"),
                  "end_rss_mib": status_mib("VmRSS"),
                  "windows": n_windows, "audio_seconds": seconds, "wall_s": time.perf_counter() - t0,
                  "mel_mean_checksum": checksum / max(1, n_windows)}))
"""


def write_long_flac(path: Path, seconds: int, rate: int, channels: int) -> float:
    """``seconds`` of synthesized music (gamma_rt/synth.py) as 16-bit FLAC; returns the write time."""
    t0 = time.perf_counter()
    write(path, Music(seconds, rate, channels), subtype="PCM_16", format="FLAC", progress=track)
    return time.perf_counter() - t0


# one minute of music as AAC, repeated packet by packet: hours of M4A in seconds, not an hour of encoding
UNIT_SECONDS = 60
FFMPEG_CONTAINERS = {"m4a": ("ipod", "AAC in MP4 (.m4a)"), "mka": ("matroska", "AAC in Matroska (.mka)")}


def encode_unit(path: Path, seconds: int, rate: int, channels: int) -> Path:
    """``seconds`` of the same synthesized music as AAC (PyAV's encoder) in an M4A."""
    from gamma_rt.synth import encode

    return encode(path, Music(seconds, rate, channels), "ipod", "aac")


def repeat_packets(unit: Path, path: Path, container: str, seconds: float) -> Path:
    """The unit's AAC packets over and over (timestamps shifted) in ``container`` up to ``seconds``."""
    import av

    with av.open(str(unit)) as src, av.open(str(path), "w", format=container) as out:
        s_in = src.streams.audio[0]
        s_out = out.add_stream_from_template(s_in)
        packets = [(p, p.pts, p.dts) for p in src.demux(s_in) if p.size]
        first, last = packets[0][0], packets[-1][0]
        span = last.pts + last.duration - first.pts
        repeats = max(1, round(seconds / float(span * s_in.time_base)))
        for r in range(repeats):
            for p, pts, dts in packets:  # mux rescales a packet in place to the output's time base
                p.time_base, p.pts, p.dts = s_in.time_base, pts + r * span, dts + r * span
                p.stream = s_out
                out.mux(p)
    return path


def stream_peak(path: Path, import_av: bool = False) -> dict:
    """Stream ``path`` through the front half in a fresh process; its peak RSS and timings. ``import_av``:
    the process imports PyAV first (FFmpeg's libraries in memory, whatever decodes the file)."""
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), *(["--import-av"] if import_av else [])],
                         capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"streaming {path.name} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(hours: float, short_minutes: float, rate: int, channels: int, workdir: Path,
            ffmpeg_formats: tuple[str, ...] = ()) -> dict:
    import soundfile
    import soxr

    long_path, short_path = workdir / "long.flac", workdir / "short.flac"
    write_long_s = write_long_flac(long_path, int(hours * 3600), rate, channels)
    write_long_flac(short_path, int(short_minutes * 60), rate, channels)
    short = stream_peak(short_path)
    long = stream_peak(long_path)
    ffmpeg = {}
    long_av = None
    if ffmpeg_formats:
        import av

        # the same FLAC with PyAV imported: what FFmpeg's libraries cost before any file is decoded by them
        long_av = stream_peak(long_path, import_av=True)

        unit = encode_unit(workdir / "unit.m4a", UNIT_SECONDS, rate, channels)
        for name in ffmpeg_formats:
            container, what = FFMPEG_CONTAINERS[name]
            paths = {which: repeat_packets(unit, workdir / f"{which}.{name}", container, s)
                     for which, s in (("short", short_minutes * 60), ("long", hours * 3600))}
            ff = {which: stream_peak(p) for which, p in paths.items()}
            grow = ff["long"]["opened_rss_mib"] - ff["short"]["opened_rss_mib"]
            ffmpeg[name] = {
                "format": what, "long_file_mib": round(paths["long"].stat().st_size / 2**20, 1),
                "long": ff["long"], "short": ff["short"],
                "peak_rss_ratio_long_over_short": round(ff["long"]["peak_rss_mib"] / ff["short"]["peak_rss_mib"], 3),
                "peak_over_flac_long_mib": round(ff["long"]["peak_rss_mib"] - long["peak_rss_mib"], 1),
                "peak_over_flac_short_mib": round(ff["short"]["peak_rss_mib"] - short["peak_rss_mib"], 1),
                # against the FLAC streamed with PyAV imported: the demuxer and decoder, the libraries aside
                "peak_over_flac_with_av_long_mib": round(ff["long"]["peak_rss_mib"] - long_av["peak_rss_mib"], 1),
                # what the open costs more on the long file (the container's index) per hour of audio
                "open_growth_mib_per_hour": round(grow / (hours - short_minutes / 60), 2),
                # what streaming adds after the open, long vs short (bounded decoding: about 0)
                "stream_growth_long_minus_short_mib": round(
                    (ff["long"]["peak_rss_mib"] - ff["long"]["opened_rss_mib"])
                    - (ff["short"]["peak_rss_mib"] - ff["short"]["opened_rss_mib"]), 1),
            }
    return {
        "bench": "memory_long_audio",
        "inputs": {"hours": hours, "short_minutes": short_minutes, "sample_rate": rate, "channels": channels,
                   "format": "FLAC PCM_16", "long_file_mib": round(long_path.stat().st_size / 2**20, 1)},
        "long": long,
        "short": short,
        "peak_rss_ratio_long_over_short": round(long["peak_rss_mib"] / short["peak_rss_mib"], 3),
        "long_audio_x_realtime": round(long["audio_seconds"] / long["wall_s"], 1),
        "write_long_s": round(write_long_s, 1),
        "long_with_av_imported": long_av,
        "import_av_mib": None if long_av is None else round(long_av["peak_rss_mib"] - long["peak_rss_mib"], 1),
        "ffmpeg": ffmpeg,
        "machine": describe(threads=1),  # the child streams on one thread
        "versions": {"numpy": np.__version__, "soundfile": soundfile.__version__,
                     "libsndfile": soundfile.__libsndfile_version__, "soxr": soxr.__version__,
                     **({"av": av.__version__, "ffmpeg": ".".join(map(str, av.library_versions["libavformat"]))}
                        if ffmpeg else {})},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Peak RSS of streaming an hours-long FLAC through audio -> windows -> log-mel.")
    parser.add_argument("--hours", type=float, default=3.0, help="length of the long file (default 3)")
    parser.add_argument("--short-minutes", type=float, default=5.0, help="length of the comparison file (default 5)")
    parser.add_argument("--rate", type=int, default=44100, help="sample rate of the files, Hz (default 44100)")
    parser.add_argument("--channels", type=int, default=2, help="channels of the files (default 2)")
    parser.add_argument("--ffmpeg", default="m4a,mka",
                        help=f"FFmpeg containers measured beside FLAC, comma-separated, from "
                        f"{sorted(FFMPEG_CONTAINERS)}; '' for none (default m4a,mka)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/memory_long_audio.json"), help="JSON result file")
    args = parser.parse_args(argv)
    formats = tuple(f for f in args.ffmpeg.split(",") if f)
    unknown = [f for f in formats if f not in FFMPEG_CONTAINERS]
    if unknown:
        parser.error(f"--ffmpeg: unknown container(s) {unknown}; known: {sorted(FFMPEG_CONTAINERS)}")
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(args.hours, args.short_minutes, args.rate, args.channels, Path(tmp), formats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("long", "short", "peak_rss_ratio_long_over_short", "ffmpeg")}, indent=2))


if __name__ == "__main__":
    main()
