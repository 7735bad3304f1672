"""A music library on disk: the audio files under a folder, found recursively, in a stable order.

Files are picked by extension: the containers this libsndfile build reads, and those FFmpeg (PyAV, a
runtime dependency) reads besides: MP4/M4A, WebM/Matroska, WMA, WavPack, APE, Opus, raw AAC. A corrupt
or mislabelled file is still a track: it fails when decoded and gets an error record, so nothing a user
expects to be tagged goes missing silently. Hidden files (``.name``, e.g. macOS ``._song.flac`` forks)
and anything that is not a regular file are skipped, as is a file gone before it could be looked at. A
file that cannot even be looked at (no permission on its folder) is a track of size -1: it fails when read.
File names that are not UTF-8 are str with surrogates (``surrogateescape``), like everywhere in Python.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from gamma_rt.errors import GammaError
from gamma_rt.hashing import sha256_file

# libsndfile major format -> the file extensions it is stored under.
_FORMAT_EXTENSIONS = {
    "WAV": (".wav",), "WAVEX": (".wav",), "RF64": (".rf64",), "W64": (".w64",),
    "FLAC": (".flac",), "OGG": (".ogg", ".oga", ".opus"), "MP3": (".mp3",),
    "AIFF": (".aif", ".aiff", ".aifc"), "AU": (".au", ".snd"), "CAF": (".caf",),
}

# What FFmpeg decodes that libsndfile does not (runtime/audio_ffmpeg.py); an .mp4 video's audio track too.
FFMPEG_EXTENSIONS = (".m4a", ".m4b", ".mp4", ".aac", ".opus", ".webm", ".mka", ".wma", ".asf", ".wv", ".ape",
                     ".mp2", ".ac3")


def audio_extensions() -> frozenset[str]:
    """Lower-case extensions (with the dot) of the formats that can be read here."""
    import soundfile

    have = soundfile.available_formats()
    sndfile = {ext for fmt, exts in _FORMAT_EXTENSIONS.items() if fmt in have for ext in exts}
    try:
        import av  # noqa: F401  (a runtime dependency; an install without it reads what libsndfile reads)
    except ModuleNotFoundError:
        return frozenset(sndfile)
    return frozenset(sndfile | set(FFMPEG_EXTENSIONS))


@dataclass(frozen=True)
class Track:
    """One audio file: absolute ``path``, ``size`` in bytes, ``mtime_ns`` (modification time, ns)."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def stat(cls, path: str | os.PathLike) -> "Track":
        st = os.stat(path)
        return cls(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)

    def content_sha256(self) -> str:
        return sha256_file(self.path)


def walk(root: str | os.PathLike, unlisted: Callable[[str], None] | None = None) -> Iterator[Track]:
    """Audio files under ``root``, depth first, names sorted, so every run sees the same order.
    ``unlisted`` hears one line for each folder that cannot be listed (no permission): its files are
    not tracks, and the user is to be told."""
    root = Path(root)
    if not root.is_dir():
        raise GammaError(f"{root}: library folder not found (LIBRARY_DIR must be a folder of audio files)")
    extensions = audio_extensions()

    def cannot_list(e: OSError) -> None:
        if unlisted is not None:
            unlisted(f"{e.filename}: cannot list this folder ({e.strerror or e}); its files are not tagged")

    for folder, dirs, files in os.walk(root, onerror=cannot_list):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or Path(name).suffix.lower() not in extensions:
                continue
            track = _track(Path(folder) / name)
            if track is not None:
                yield track


def _track(path: Path) -> Track | None:
    try:
        return Track.stat(path) if path.is_file() else None
    except FileNotFoundError:  # deleted while the library was being listed
        return None
    except OSError:
        return Track(str(path.absolute()), -1, -1)
