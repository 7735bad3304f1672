"""Writing genre, mood and caption into an audio file's own tags (mutagen), safely.

Tags are written to a hidden temporary copy beside the file; the copy is verified (its tags re-read equal
what was asked, and its audio is unchanged: decoded samples compared block by block, and for FLAC/MP3/MP4
the raw audio bytes too), then swapped in with ``os.replace``. An interrupted write leaves the original
file as it was.

Tag containers: ID3v2.4 for MP3, WAV and AIFF (TCON genre, TMOO mood, COMM comment), Vorbis comments for
FLAC and Ogg (GENRE, MOOD, COMMENT), MP4 atoms (©gen, ©cmt, and a freeform iTunes MOOD atom).
"""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import numpy as np

from gamma_rt.errors import TagWriteError

# The file tags a prompt may fill (its ``tag`` field in the prompt set), and their key in each container.
TAG_FIELDS = ("genre", "mood", "caption")
_MP4_MOOD = "----:com.apple.iTunes:MOOD"
_VORBIS_KEYS = {"genre": "GENRE", "mood": "MOOD", "caption": "COMMENT"}
_ID3_FRAMES = {"genre": "TCON", "mood": "TMOO", "caption": "COMM"}
_MP4_KEYS = {"genre": "\xa9gen", "mood": _MP4_MOOD, "caption": "\xa9cmt"}


def _container(audio) -> str:
    name = type(audio).__name__
    if name in ("FLAC", "OggVorbis", "OggOpus", "OggFLAC", "OggSpeex"):
        return "vorbis"
    if name == "MP4":
        return "mp4"
    if name in ("MP3", "WAVE", "AIFF", "EasyMP3"):
        return "id3"
    raise TagWriteError(f"{audio.filename}: cannot write tags into {name} files (MP3, WAV, AIFF, FLAC, Ogg, MP4)")


def _open(path: Path):
    import mutagen

    try:
        audio = mutagen.File(path)
    except mutagen.MutagenError as e:
        raise TagWriteError(f"{path}: cannot read its tags ({e})") from None
    if audio is None:
        raise TagWriteError(f"{path}: not a file type mutagen knows; its tags cannot be written")
    if audio.tags is None:
        audio.add_tags()
    return audio


def _get(audio, kind: str, field: str) -> str | None:
    tags = audio.tags
    if kind == "vorbis":
        values = tags.get(_VORBIS_KEYS[field], [])
        return values[0] if values else None
    if kind == "id3":
        frames = tags.getall(_ID3_FRAMES[field])
        if field == "caption":
            frames = [f for f in frames if f.desc == ""]
        return str(frames[0].text[0]) if frames and frames[0].text else None
    values = tags.get(_MP4_KEYS[field], [])
    if not values:
        return None
    value = values[0]
    return bytes(value).decode("utf-8") if field == "mood" else str(value)


def _set(audio, kind: str, field: str, value: str) -> None:
    tags = audio.tags
    if kind == "vorbis":
        tags[_VORBIS_KEYS[field]] = [value]
    elif kind == "id3":
        from mutagen.id3 import COMM, TCON, TMOO

        if field == "caption":
            tags.delall("COMM::eng")
            tags.add(COMM(encoding=3, lang="eng", desc="", text=[value]))
        else:
            frame = {"genre": TCON, "mood": TMOO}[field]
            tags.delall(frame.__name__)
            tags.add(frame(encoding=3, text=[value]))
    else:
        from mutagen.mp4 import MP4FreeForm

        if field == "mood":
            tags[_MP4_MOOD] = [MP4FreeForm(value.encode("utf-8"))]
        else:
            tags[_MP4_KEYS[field]] = [value]


def read_tags(path: str | Path) -> dict[str, str | None]:
    """The file's current genre, mood and caption (None where absent)."""
    audio = _open(Path(path))
    kind = _container(audio)
    return {f: _get(audio, kind, f) for f in TAG_FIELDS}


def plan(path: str | Path, values: dict[str, str]) -> list[tuple[str, str | None, str]]:
    """The changes writing ``values`` would make: ``[(field, old, new)]``, unchanged fields left out."""
    current = read_tags(path)
    return [(f, current[f], v) for f, v in values.items() if f in TAG_FIELDS and v is not None and current[f] != v]


def write_tags(path: str | Path, values: dict[str, str]) -> list[tuple[str, str | None, str]]:
    """Write ``values`` (field -> text) into the file's tags via a verified temporary copy; returns the changes."""
    path = Path(path)
    changes = plan(path, values)
    if not changes:
        return []
    # hidden (the library walker skips it) and with the same extension (format detection goes by it)
    tmp = path.with_name(f".{path.stem}.gamma-rt-tmp{path.suffix}")
    try:
        shutil.copy2(path, tmp)
        audio = _open(tmp)
        kind = _container(audio)
        for field, _, new in changes:
            _set(audio, kind, field, new)
        if kind == "id3":
            audio.save(v2_version=4)
        else:
            audio.save()
        _verify(path, tmp, changes)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return changes


def _verify(original: Path, copy: Path, changes) -> None:
    got = read_tags(copy)
    for field, _, new in changes:
        if got[field] != new:
            raise TagWriteError(f"{original}: tag {field} reads back as {got[field]!r}, not {new!r}; file left as it was")
    before, after = audio_payload(original), audio_payload(copy)
    if before != after:
        raise TagWriteError(f"{original}: writing tags changed the audio bytes; file left as it was")
    if not same_samples(original, copy):
        raise TagWriteError(f"{original}: writing tags changed the decoded audio; file left as it was")


def same_samples(a: Path, b: Path, block: int = 1 << 16) -> bool:
    """Whether two files decode (soundfile) to identical samples, compared ``block`` frames at a time."""
    import soundfile as sf

    if a.suffix.lower() in (".m4a", ".mp4", ".aac"):
        return True  # soundfile has no AAC decoder; audio_payload compared the mdat bytes instead
    with sf.SoundFile(a) as fa, sf.SoundFile(b) as fb:
        if (fa.samplerate, fa.channels, fa.frames) != (fb.samplerate, fb.channels, fb.frames):
            return False
        while True:
            xa, xb = fa.read(block, dtype="float32"), fb.read(block, dtype="float32")
            if not np.array_equal(xa, xb):
                return False
            if len(xa) == 0:
                return True


def audio_payload(path: Path) -> bytes | None:
    """The raw audio bytes of a file, tags excluded: FLAC frames, MP3 frames, MP4 ``mdat``; None for
    containers where tags and audio interleave (Ogg pages are renumbered) or the decoded check suffices."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".flac", ".mp3", ".m4a", ".mp4"):
        return None
    data = Path(path).read_bytes()  # a compressed track is tens of MB; fine to hold once
    if suffix == ".flac":
        pos = _skip_id3v2(data, 0)
        if data[pos:pos + 4] != b"fLaC":
            raise TagWriteError(f"{path}: no fLaC marker; not a FLAC file")
        pos += 4
        while True:
            header = data[pos]
            length = int.from_bytes(data[pos + 1:pos + 4], "big")
            pos += 4 + length
            if header & 0x80:  # last metadata block
                return data[pos:]
    if suffix == ".mp3":
        start, end = _skip_id3v2(data, 0), len(data)
        if end - start >= 128 and data[end - 128:end - 125] == b"TAG":
            end -= 128
        return data[start:end]
    if suffix in (".m4a", ".mp4"):
        return b"".join(_mp4_atoms(data, b"mdat"))
    return None


def _skip_id3v2(data: bytes, pos: int) -> int:
    while data[pos:pos + 3] == b"ID3":
        size = 0
        for b in data[pos + 6:pos + 10]:
            size = (size << 7) | (b & 0x7F)  # synchsafe integer
        pos += 10 + size + (10 if data[pos + 5] & 0x10 else 0)
    return pos


def _mp4_atoms(data: bytes, name: bytes):
    pos = 0
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[pos + 8:pos + 16])[0], 16
        elif size == 0:
            size = len(data) - pos
        if kind == name:
            yield data[pos + header:pos + size]
        pos += size
