"""Writing genre, mood and caption into an audio file's own tags (mutagen), safely.

Tags are written to a hidden temporary copy beside the file; the copy is verified (its tags re-read equal
what was asked, and its audio is unchanged: the compressed audio packets FFmpeg demuxes hashed the same,
the decoded samples compared block by block, and for FLAC/MP3/MP4 the raw audio bytes too), then swapped
in with ``os.replace``. An interrupted write leaves the original file as it was.

Tag containers (one row of _CONTAINERS per mutagen file type):

| files | container | genre / mood / caption |
|---|---|---|
| MP3, WAV, AIFF | ID3v2.4 | TCON / TMOO / COMM |
| FLAC, Ogg Vorbis, Ogg Opus, Ogg FLAC, Speex | Vorbis comments | GENRE / MOOD / COMMENT |
| M4A, MP4 (AAC, ALAC, video) | MP4 atoms | ©gen / iTunes MOOD / ©cmt |
| WMA (ASF) | ASF attributes | WM/Genre / WM/Mood / WM/Comments |
| WavPack, APE, Musepack | APEv2 | Genre / Mood / Comment |

A file mutagen cannot tag (WebM, Matroska, raw AAC) raises ``TagsUnsupported``: the run reports it for
that file and goes on.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tempfile
from pathlib import Path

from gamma_rt.errors import TagWriteError

# The file tags a prompt may fill (its ``tag`` field in the prompt set), and their key in each container.
TAG_FIELDS = ("genre", "mood", "caption")
_MP4_MOOD = "----:com.apple.iTunes:MOOD"
_KEYS = {
    "vorbis": {"genre": "GENRE", "mood": "MOOD", "caption": "COMMENT"},
    "id3": {"genre": "TCON", "mood": "TMOO", "caption": "COMM"},
    "mp4": {"genre": "\xa9gen", "mood": _MP4_MOOD, "caption": "\xa9cmt"},
    "asf": {"genre": "WM/Genre", "mood": "WM/Mood", "caption": "WM/Comments"},
    "ape": {"genre": "Genre", "mood": "Mood", "caption": "Comment"},
}
# mutagen file type -> tag container
_CONTAINERS = {
    "FLAC": "vorbis", "OggVorbis": "vorbis", "OggOpus": "vorbis", "OggFLAC": "vorbis", "OggSpeex": "vorbis",
    "MP3": "id3", "EasyMP3": "id3", "WAVE": "id3", "AIFF": "id3",
    "MP4": "mp4",
    "ASF": "asf",
    "WavPack": "ape", "MonkeysAudio": "ape", "Musepack": "ape", "OptimFROG": "ape",
}


class TagsUnsupported(TagWriteError):
    """The file's format carries no tags mutagen can write; nothing was changed."""


def _container(audio) -> str:
    name = type(audio).__name__
    if name not in _CONTAINERS:
        raise TagsUnsupported(f"{audio.filename}: cannot write tags into {name} files (MP3, WAV, AIFF, FLAC, Ogg, "
                              "Opus, MP4/M4A, WMA, WavPack, APE can be tagged)")
    return _CONTAINERS[name]


def _open(path: Path):
    import mutagen

    try:
        audio = mutagen.File(path)
    except mutagen.MutagenError as e:
        raise TagWriteError(f"{path}: cannot read its tags ({e})") from None
    if audio is None:
        raise TagsUnsupported(f"{path}: not a file type mutagen can tag ({path.suffix or 'no extension'}); "
                              "its tags are left alone")
    if audio.tags is None:
        audio.add_tags()
    return audio


def _get(audio, kind: str, field: str) -> str | None:
    tags, key = audio.tags, _KEYS[kind][field]
    if kind == "id3":
        frames = tags.getall(key)
        if field == "caption":
            frames = [f for f in frames if f.desc == ""]
        return str(frames[0].text[0]) if frames and frames[0].text else None
    if kind == "ape":
        return str(tags[key]) if key in tags else None
    values = tags.get(key, [])
    if not values:
        return None
    value = values[0]
    if kind == "mp4" and field == "mood":
        return bytes(value).decode("utf-8")
    return str(value.value) if kind == "asf" else str(value)


def _set(audio, kind: str, field: str, value: str) -> None:
    tags, key = audio.tags, _KEYS[kind][field]
    if kind == "id3":
        from mutagen.id3 import COMM, TCON, TMOO

        if field == "caption":
            tags.delall("COMM::eng")
            tags.add(COMM(encoding=3, lang="eng", desc="", text=[value]))
        else:
            frame = {"genre": TCON, "mood": TMOO}[field]
            tags.delall(frame.__name__)
            tags.add(frame(encoding=3, text=[value]))
    elif kind == "mp4" and field == "mood":
        from mutagen.mp4 import MP4FreeForm

        tags[key] = [MP4FreeForm(value.encode("utf-8"))]
    elif kind == "ape":
        tags[key] = value
    else:
        tags[key] = [value]


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
    # hidden (the library walker skips it), with the same extension (format detection goes by it), and
    # short: a file whose own name is near the 255-byte limit is tagged too
    fd, name = tempfile.mkstemp(prefix=".gamma-rt-tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        shutil.copy2(path, tmp)
        audio = _open(tmp)
        kind = _container(audio)
        for field, _, new in changes:
            _set(audio, kind, field, new)
        _save(audio, kind, path)
        if kind == "asf":
            _fix_asf_file_size(tmp)
        _verify(path, tmp, changes)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return changes


def _save(audio, kind: str, original: Path) -> None:
    """Save the copy's tags. mutagen wraps the OSError of a failed write (a full disk) in its own error:
    unwrapped, the run says "disk full" and stops instead of failing every file that follows."""
    import mutagen

    try:
        audio.save(v2_version=4) if kind == "id3" else audio.save()
    except mutagen.MutagenError as e:
        cause = e.args[0] if e.args else None
        if isinstance(cause, OSError):
            raise cause from None
        raise TagWriteError(f"{original}: cannot save its tags ({e}); file left as it was") from None


def _verify(original: Path, copy: Path, changes) -> None:
    got = read_tags(copy)
    for field, _, new in changes:
        if got[field] != new:
            raise TagWriteError(f"{original}: tag {field} reads back as {got[field]!r}, not {new!r}; file left as it was")
    before, after = audio_payload(original), audio_payload(copy)
    if before != after or packet_digest(original) != packet_digest(copy):
        raise TagWriteError(f"{original}: writing tags changed the audio bytes; file left as it was")
    if not same_samples(original, copy):
        raise TagWriteError(f"{original}: writing tags changed the decoded audio; file left as it was")


def packet_digest(path: Path) -> str | None:
    """sha256 of the compressed audio packets FFmpeg demuxes from the file's first audio stream (the audio
    bytes, whatever the container and wherever its tags sit); None when FFmpeg cannot read it."""
    try:
        import av
    except ModuleNotFoundError:
        return None
    digest = hashlib.sha256()
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if not container.streams.audio:
                return None
            for packet in container.demux(container.streams.audio[0]):
                digest.update(bytes(packet))
    except av.error.FFmpegError:
        return None
    return digest.hexdigest()


def same_samples(a: Path, b: Path) -> bool:
    """Whether two files decode to identical samples (the runtime's decoder, at the source rate), compared
    as streams of sha256 over the decoded blocks."""
    from gamma_rt.errors import AudioError

    from ..audio import open_audio

    digests = []
    for path in (a, b):
        digest = hashlib.sha256()
        try:
            with open_audio(path) as stream:
                for block in stream.source_blocks():
                    digest.update(block.tobytes())
        except AudioError as e:
            raise TagWriteError(f"{a}: cannot compare the audio before and after tagging ({e})") from None
        digests.append(digest.hexdigest())
    return digests[0] == digests[1]


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


# ASF File Properties Object GUID; its QWORD file size sits 16 bytes after the object header (24 bytes).
_ASF_FILE_PROPERTIES = bytes.fromhex("a1dcab8c47a9cf118ee400c00c205365")


def _fix_asf_file_size(path: Path) -> None:
    """mutagen grows an ASF header without updating the file size in its File Properties Object; FFmpeg
    then takes the stale size for a sign of a different duration. Write the true size there."""
    with open(path, "rb+") as f:
        head = f.read(1 << 16)
        at = head.find(_ASF_FILE_PROPERTIES)
        if at < 0:
            raise TagWriteError(f"{path}: no ASF File Properties object in its header")
        f.seek(at + 24 + 16)
        f.write(struct.pack("<Q", os.fstat(f.fileno()).st_size))


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
