"""A generated music library for the tagging tests: real audio files in several formats, sample rates and
channel counts, plus the files a real library holds that are not good audio."""

from __future__ import annotations

from pathlib import Path

from gamma_rt.synth import Music, write

# relative path -> (sample rate, channels, seconds, soundfile format, subtype)
GOOD = {
    "rock/intro.wav": (44100, 2, 1.5, "WAV", "PCM_16"),
    "rock/live/encore.flac": (22050, 1, 1.0, "FLAC", "PCM_24"),
    "jazz/ballad.ogg": (48000, 2, 1.2, "OGG", "VORBIS"),
    "jazz/solo.mp3": (16000, 1, 1.0, "MP3", "MPEG_LAYER_III"),
    "ambient/drone.aiff": (8000, 6, 0.8, "AIFF", "PCM_16"),
}
# relative path -> bytes; each has an audio extension, so it is a track that must fail with an error record
BAD = {
    "broken/corrupt.flac": b"fLaC\x00\x00\x00\x22" + bytes(range(256)) * 4,
    "broken/empty.wav": b"",
    "broken/notes.wav": b"these are my liner notes, not audio\n" * 20,
}
# not audio by extension: the walker must skip these
IGNORED = {"rock/cover.jpg": b"\xff\xd8\xff\xe0 not really a jpeg", "readme.txt": b"my library\n",
           "jazz/.hidden.wav": b"RIFF"}


def write_good(root: Path, rel: str, seed: int = 0) -> Path:
    sr, ch, secs, fmt, subtype = GOOD[rel]
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    return write(path, Music(secs, sr, ch, seed), format=fmt, subtype=subtype)


def make_library(root: Path, bad: bool = True) -> Path:
    """Write the library under ``root``; returns ``root``."""
    for i, rel in enumerate(GOOD):
        write_good(root, rel, seed=i)
    extra = {**(BAD if bad else {}), **IGNORED}
    for rel, data in extra.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root
