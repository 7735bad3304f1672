"""Telling a cut file from a short song, where the decoders cannot.

libsndfile and FFmpeg both decode a truncated Ogg, a headerless MP3 or a WAV/AIFF cut mid-data without
complaint: each is read as a shorter song. The file's own structure still witnesses the cut:

- Ogg: the last page is cut short, or no page carries the end-of-stream flag;
- MPEG audio: the chain of frames (each header gives its length) runs past the end of the file;
- WAV / AIFF: the data chunk declares more bytes than the file holds.

``end_problem`` reads only headers and the file's tail (MPEG: the 4-byte frame headers), never the audio.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

# An Ogg page is at most 27 + 255 + 255 * 255 bytes: the last one lies within this many bytes of the end.
OGG_TAIL_BYTES = 65307
OGG_EOS = 0x04  # header_type flag of a stream's last page
# Writers that stream a WAV before knowing its length put 0 or 0xFFFFFFFF (or about 2 GiB) in the size.
UNKNOWN_SIZE_FLOOR = 0x7F000000
# MPEG audio: kbit/s by (MPEG-1?, layer bits: 1 = layer III, 2 = layer II) and bitrate index; Hz by
# version bits (3 = MPEG-1, 2 = MPEG-2, 0 = MPEG-2.5).
_KBPS = {
    (True, 1): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (False, 1): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MPEG_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
# what may follow the last MPEG frame: ID3v1, APEv2, Lyrics3 tags
_MPEG_TRAILERS = (b"TAG", b"APETAGEX", b"LYRICS")
_MPEG_SYNC_SEARCH = 1 << 16  # bytes searched for the first frame after the ID3v2 tag


def end_problem(file: str | Path | BinaryIO, container: str) -> str | None:
    """Why ``file`` (a path or a seekable binary file) does not end whole, or None when it does or this
    cannot be told. ``container``: ogg | mp3 | wav | aiff (anything else: None)."""
    check = {"ogg": ogg_end_problem, "mp3": mpeg_end_problem, "wav": wav_end_problem,
             "aiff": aiff_end_problem}.get(container)
    if check is None:
        return None
    if isinstance(file, (str, Path)):
        with open(file, "rb") as f:
            return check(f)
    position = file.tell()
    try:
        return check(file)
    finally:
        file.seek(position)


def _size(f: BinaryIO) -> int:
    return f.seek(0, 2)


def ogg_end_problem(f: BinaryIO) -> str | None:
    size = _size(f)
    f.seek(max(0, size - OGG_TAIL_BYTES))
    tail = f.read()
    at = tail.rfind(b"OggS\x00")
    if at < 0 or len(tail) - at < 27:
        return "no whole Ogg page at its end"
    n_segments = tail[at + 26]
    lacing = tail[at + 27:at + 27 + n_segments]
    if len(lacing) < n_segments or at + 27 + n_segments + sum(lacing) > len(tail):
        return "its last Ogg page is cut short"
    if not tail[at + 5] & OGG_EOS:
        return "it ends without an end-of-stream page"
    return None


def _mpeg_frame_length(header: bytes) -> int | None:
    """Bytes of the MPEG layer II/III frame starting with these 4 bytes; None if they are no such header
    (or a free-format one, whose length no header says)."""
    if len(header) < 4:
        return None
    h = int.from_bytes(header, "big")
    version, layer = (h >> 19) & 3, (h >> 17) & 3
    bitrate_index, rate_index, padding = (h >> 12) & 15, (h >> 10) & 3, (h >> 9) & 1
    if (h >> 21) != 0x7FF or version == 1 or layer not in (1, 2) or bitrate_index in (0, 15) or rate_index == 3:
        return None
    mpeg1 = version == 3
    kbps = _KBPS[(mpeg1, layer)][bitrate_index]
    rate = _MPEG_RATES[version][rate_index]
    per_frame = 144 if (mpeg1 or layer == 2) else 72
    return per_frame * kbps * 1000 // rate + padding


def _skip_id3v2(f: BinaryIO) -> int:
    pos = 0
    while True:
        f.seek(pos)
        head = f.read(10)
        if len(head) < 10 or head[:3] != b"ID3":
            return pos
        size = 0
        for b in head[6:10]:
            size = (size << 7) | (b & 0x7F)  # synchsafe integer
        pos += 10 + size + (10 if head[5] & 0x10 else 0)


def _first_frame(window: bytes) -> int | None:
    """Offset of the first MPEG frame header that is followed by another one (a lone 0xFF... in junk is not)."""
    for i in range(len(window) - 3):
        if window[i] != 0xFF:
            continue
        length = _mpeg_frame_length(window[i:i + 4])
        if length and _mpeg_frame_length(window[i + length:i + length + 4]):
            return i
    return None


def mpeg_end_problem(f: BinaryIO) -> str | None:
    size = _size(f)
    pos = _skip_id3v2(f)
    f.seek(pos)
    first = _first_frame(f.read(_MPEG_SYNC_SEARCH))
    if first is None:
        return None
    pos += first
    while pos < size:
        f.seek(pos)
        head = f.read(8)
        length = _mpeg_frame_length(head[:4])
        if length is None:
            # tags or padding may follow the frames; junk means the chain cannot be followed: no verdict
            return None
        if pos + length > size:
            return f"its last MPEG frame is cut short ({size - pos} of {length} bytes)"
        pos += length
    return None


def mpeg_declares_length(file: str | Path | BinaryIO) -> bool:
    """Whether an MP3's first frame is a Xing/Info/VBRI header, which states the frame count. Without one,
    decoders estimate the length from the file size and bitrate, tags included (cover art makes a whole
    CBR file look truncated), so that estimate proves nothing."""
    if isinstance(file, (str, Path)):
        with open(file, "rb") as f:
            return mpeg_declares_length(f)
    position = file.tell()
    try:
        pos = _skip_id3v2(file)
        file.seek(pos)
        window = file.read(_MPEG_SYNC_SEARCH)
    finally:
        file.seek(position)
    first = _first_frame(window)
    if first is None:
        return False
    frame = window[first:first + (_mpeg_frame_length(window[first:first + 4]) or 0)]
    return any(marker in frame for marker in (b"Xing", b"Info", b"VBRI"))


# ASF File Properties Object: its GUID, and where play duration (100 ns units) and preroll (ms) sit in it
_ASF_FILE_PROPERTIES = bytes.fromhex("a1dcab8c47a9cf118ee400c00c205365")
_ASF_HEADER_SEARCH = 1 << 16


def asf_declared_seconds(file: str | Path | BinaryIO) -> float | None:
    """The play time an ASF (WMA) header declares, preroll excluded. FFmpeg estimates the length from the
    bitrate instead whenever the header's file size is stale, which mutagen (beets) leaves after tagging."""
    if isinstance(file, (str, Path)):
        with open(file, "rb") as f:
            return asf_declared_seconds(f)
    position = file.tell()
    try:
        file.seek(0)
        head = file.read(_ASF_HEADER_SEARCH)
    finally:
        file.seek(position)
    at = head.find(_ASF_FILE_PROPERTIES)
    if at < 0 or len(head) < at + 24 + 64:
        return None
    play_100ns, _send, preroll_ms = struct.unpack("<QQQ", head[at + 24 + 40:at + 24 + 64])
    seconds = play_100ns / 1e7 - preroll_ms / 1e3
    return seconds if seconds > 0 else None


def _chunks(f: BinaryIO, start: int, endian: str):
    """(id, declared size, offset of its body) of each chunk from ``start`` to the end of the file."""
    size = _size(f)
    pos = start
    while pos + 8 <= size:
        f.seek(pos)
        chunk_id, length = struct.unpack(endian + "4sI", f.read(8))
        yield chunk_id, length, pos + 8
        pos += 8 + length + (length & 1)


def wav_end_problem(f: BinaryIO) -> str | None:
    f.seek(0)
    if f.read(4) != b"RIFF":
        return None  # RF64/RIFX keep sizes elsewhere
    size = _size(f)
    for chunk_id, length, body in _chunks(f, 12, "<"):
        if chunk_id == b"data":
            if 0 < length < UNKNOWN_SIZE_FLOOR and body + length > size:
                return f"its data chunk promises {length} bytes, the file holds {size - body}"
            return None
    return None


def aiff_end_problem(f: BinaryIO) -> str | None:
    f.seek(0)
    if f.read(4) != b"FORM":
        return None
    size = _size(f)
    for chunk_id, length, body in _chunks(f, 12, ">"):
        if chunk_id == b"SSND":
            if body + length > size:
                return f"its SSND chunk promises {length} bytes, the file holds {size - body}"
            return None
    return None
