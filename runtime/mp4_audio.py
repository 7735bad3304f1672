"""The audio track of a plain MP4/M4A file, read packet by packet without building a sample index.

FFmpeg's mov demuxer builds an index entry for every packet when it opens a file (5.4 MiB per hour of AAC,
16 MiB for a 3-hour audiobook): memory that grows with the file. This reader walks the ``moov`` box once,
keeps only where the sample tables lie in the file, and reads their entries in small windows while the
packets stream, so memory is bounded by the window, never by the file. PyAV decodes the packets.

It takes the common case only: one unfragmented sound track of AAC or ALAC with at most one edit (the
encoder's priming). Anything else (fragments, encrypted or other sample entries, several edits, tables it
would have to hold whole) makes ``read_track`` answer None, and FFmpeg's own demuxer takes the file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import numpy as np

# A table of runs (stts, stsc) longer than this is held by FFmpeg's demuxer instead: encoders write a few.
MAX_RUNS = 1 << 16
# Entries of the per-sample tables (stsz, stco/co64) read from the file at a time.
WINDOW_ENTRIES = 4096
# Packets decoded before a seek target, so the decoder's overlap state is the one the whole decode has.
PREROLL_PACKETS = 2
# MPEG-4 object types of AAC in an esds (ISO 14496-1 table 5).
_AAC_OBJECT_TYPES = {0x40, 0x66, 0x67, 0x68}
_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts"}


@dataclass(frozen=True)
class Mp4Track:
    """Where one sound track's packets and tables are, and how its decoded samples are trimmed."""

    codec: str  # FFmpeg decoder name: aac | alac
    extradata: bytes
    timescale: int  # media time units per second
    media_duration: int  # in media units, before the edit
    skip: int  # media units the edit drops from the start (encoder priming)
    edit_duration_s: float | None  # what the edit keeps, None when the file has no edit
    sample_count: int
    stts: np.ndarray  # (runs, 2): sample count, duration
    stsc: np.ndarray  # (runs, 2): first chunk (0-based), samples per chunk
    stsz: tuple[int, int]  # (fixed size or 0, file offset of the per-sample sizes)
    chunk_offsets: tuple[int, int, int]  # (count, file offset of the table, bytes per entry)


def read_track(f: BinaryIO) -> Mp4Track | None:
    """The first sound track of the MP4 in ``f`` when this reader takes it, else None (FFmpeg's demuxer
    then reads the file). Never raises for a malformed file: FFmpeg says what is wrong with it."""
    try:
        return _read_track(f)
    except (struct.error, ValueError, IndexError, OverflowError, _Refused):
        return None


class _Refused(Exception):
    """Not a file this reader takes."""


def _boxes(f: BinaryIO, start: int, end: int, cut_ok: bool = False) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, payload end) of each box in [start, end). ``cut_ok``: a box that runs past
    ``end`` ends the walk (a cut file's media data) instead of refusing the file."""
    pos = start
    while pos + 8 <= end:
        f.seek(pos)
        head = f.read(16)
        if len(head) < 8:
            return
        size, kind = struct.unpack(">I4s", head[:8])
        body = pos + 8
        if size == 1:
            if len(head) < 16:
                return
            size = struct.unpack(">Q", head[8:16])[0]
            body = pos + 16
        elif size == 0:
            size = end - pos
        if size < body - pos:
            raise _Refused("a box shorter than its header")
        if pos + size > end:
            if cut_ok:
                return
            raise _Refused("a box runs past its parent")
        yield kind, body, pos + size
        pos += size


def _read_track(f: BinaryIO) -> Mp4Track | None:
    size = f.seek(0, 2)
    f.seek(0)
    head = f.read(8)
    if len(head) < 8 or head[4:8] != b"ftyp":
        return None
    moov = None
    for kind, body, end in _boxes(f, 0, size, cut_ok=True):
        if kind == b"moof":
            return None  # fragmented
        if kind == b"moov":
            moov = (body, end)
    if moov is None:
        return None
    tracks, movie_timescale = [], None
    for kind, body, end in _boxes(f, *moov):
        if kind == b"mvex":
            return None  # fragmented
        if kind == b"mvhd":
            movie_timescale = _mvhd_timescale(f, body)
        if kind == b"trak":
            boxes = _collect(f, body, end)
            if _handler(f, boxes) == b"soun":
                tracks.append(boxes)
    if not tracks or not movie_timescale:
        return None
    return _track(f, tracks[0], movie_timescale)


def _collect(f: BinaryIO, start: int, end: int) -> dict[bytes, tuple[int, int]]:
    """The leaf boxes under a trak, by type (the first of each)."""
    found: dict[bytes, tuple[int, int]] = {}
    for kind, body, stop in _boxes(f, start, end):
        if kind in _CONTAINERS:
            for k, v in _collect(f, body, stop).items():
                found.setdefault(k, v)
        else:
            found.setdefault(kind, (body, stop))
    return found


def _read(f: BinaryIO, at: int, n: int) -> bytes:
    f.seek(at)
    data = f.read(n)
    if len(data) < n:
        raise _Refused("a table runs past the end of the file")
    return data


def _mvhd_timescale(f: BinaryIO, body: int) -> int:
    version = _read(f, body, 1)[0]
    return struct.unpack(">I", _read(f, body + (20 if version == 1 else 12), 4))[0]


def _handler(f: BinaryIO, boxes: dict) -> bytes | None:
    if b"hdlr" not in boxes:
        return None
    return _read(f, boxes[b"hdlr"][0] + 8, 4)


def _track(f: BinaryIO, boxes: dict, movie_timescale: int) -> Mp4Track | None:
    for need in (b"mdhd", b"stsd", b"stts", b"stsc", b"stsz"):
        if need not in boxes:
            return None
    codec, extradata = _sample_entry(f, *boxes[b"stsd"])
    if codec is None:
        return None
    body = boxes[b"mdhd"][0]
    if _read(f, body, 1)[0] == 1:
        timescale, duration = struct.unpack(">IQ", _read(f, body + 20, 12))
    else:
        timescale, duration = struct.unpack(">II", _read(f, body + 12, 8))
    if not timescale:
        return None
    skip, edit_s = _edit(f, boxes.get(b"elst"), movie_timescale)
    stts = _runs(f, boxes[b"stts"][0])
    stsc = _runs(f, boxes[b"stsc"][0], width=3)
    if stsc is None or stts is None or len(stsc) == 0 or np.any(stsc[:, 2] != 1):
        return None  # several sample descriptions: FFmpeg's demuxer switches between them
    stsc = stsc[:, :2] - np.array([1, 0], dtype=np.int64)
    fixed, count = struct.unpack(">II", _read(f, boxes[b"stsz"][0] + 4, 8))
    if b"stco" in boxes:
        table, width = boxes[b"stco"], 4
    elif b"co64" in boxes:
        table, width = boxes[b"co64"], 8
    else:
        return None
    chunks = struct.unpack(">I", _read(f, table[0] + 4, 4))[0]
    if table[0] + 8 + chunks * width > table[1]:
        return None
    if not fixed and boxes[b"stsz"][0] + 12 + 4 * count > boxes[b"stsz"][1]:
        return None
    if int(stts[:, 0].sum()) != count or count == 0 or skip < 0:
        return None
    return Mp4Track(codec, extradata, timescale, duration, skip, edit_s, count, stts, stsc,
                    (fixed, boxes[b"stsz"][0] + 12), (chunks, table[0] + 8, width))


def _runs(f: BinaryIO, body: int, width: int = 2) -> np.ndarray | None:
    n = struct.unpack(">I", _read(f, body + 4, 4))[0]
    if n > MAX_RUNS:
        return None
    data = np.frombuffer(_read(f, body + 8, 4 * width * n), dtype=">u4")
    return data.reshape(n, width).astype(np.int64)


def _edit(f: BinaryIO, elst: tuple[int, int] | None, movie_timescale: int) -> tuple[int, float | None]:
    """(media units to drop at the start, seconds kept) of a single edit; none: (0, None)."""
    if elst is None:
        return 0, None
    body = elst[0]
    version = _read(f, body, 1)[0]
    n = struct.unpack(">I", _read(f, body + 4, 4))[0]
    if n == 0:
        return 0, None
    if n != 1:
        raise _Refused("several edits")
    if version == 1:
        duration, media_time, rate = struct.unpack(">Qqi", _read(f, body + 8, 20))
    else:
        duration, media_time, rate = struct.unpack(">Iii", _read(f, body + 8, 12))
    if media_time < 0 or rate != 1 << 16:
        raise _Refused("an empty or rate-changing edit")
    return media_time, duration / movie_timescale


def _sample_entry(f: BinaryIO, start: int, end: int) -> tuple[str | None, bytes]:
    """(FFmpeg decoder, its extradata) of the single sample entry, or (None, b'') for any other."""
    if struct.unpack(">I", _read(f, start + 4, 4))[0] != 1:
        return None, b""
    entry_size, fmt = struct.unpack(">I4s", _read(f, start + 8, 8))
    entry, entry_end = start + 8, start + 8 + entry_size
    if entry_end > end:
        return None, b""
    version = struct.unpack(">H", _read(f, entry + 16, 2))[0]
    children = entry + 36 + {0: 0, 1: 16, 2: 36}.get(version, -1_000_000)
    if children < entry + 36:
        return None, b""
    boxes = dict((k, (b, e)) for k, b, e in _boxes(f, children, entry_end))
    if fmt == b"mp4a" and b"esds" in boxes:
        config = _aac_config(_read(f, boxes[b"esds"][0], boxes[b"esds"][1] - boxes[b"esds"][0]))
        return ("aac", config) if config else (None, b"")
    if fmt == b"alac" and b"alac" in boxes:
        b, e = boxes[b"alac"]
        return "alac", _read(f, b - 8, e - b + 8)  # FFmpeg's ALAC decoder takes the whole box
    return None, b""


def _aac_config(esds: bytes) -> bytes | None:
    """The AudioSpecificConfig inside an esds box, or None when the stream is not AAC."""
    pos = 4  # version and flags
    object_type = None
    while pos < len(esds):
        tag = esds[pos]
        pos, length = _descriptor_length(esds, pos + 1)
        if tag == 0x03:  # ES descriptor: id, flags, then optional fields
            flags = esds[pos + 2]
            pos += 3 + (2 if flags & 0x80 else 0)
            if flags & 0x40:
                pos += 1 + esds[pos]
            pos += 2 if flags & 0x20 else 0
        elif tag == 0x04:  # decoder config: object type, stream type, buffer size, bitrates
            object_type = esds[pos]
            pos += 13
        elif tag == 0x05:
            if object_type not in _AAC_OBJECT_TYPES:
                return None
            return bytes(esds[pos:pos + length])
        else:
            pos += length
    return None


def _descriptor_length(data: bytes, pos: int) -> tuple[int, int]:
    length = 0
    for _ in range(4):
        byte = data[pos]
        pos += 1
        length = length << 7 | byte & 0x7F
        if not byte & 0x80:
            break
    return pos, length


class _Window:
    """Entries of one big-endian per-sample table, read ``WINDOW_ENTRIES`` at a time."""

    def __init__(self, f: BinaryIO, offset: int, width: int):
        self._f, self._offset, self._width = f, offset, width
        self._dtype = ">u4" if width == 4 else ">u8"
        self._first, self._data = 0, np.empty(0, dtype=np.int64)

    def __getitem__(self, i: int) -> int:
        if not self._first <= i < self._first + len(self._data):
            self._f.seek(self._offset + i * self._width)
            raw = self._f.read(WINDOW_ENTRIES * self._width)
            raw = raw[: len(raw) - len(raw) % self._width]
            self._first, self._data = i, np.frombuffer(raw, dtype=self._dtype).astype(np.int64)
            if not len(self._data):
                raise EOFError(f"table entry {i} lies past the end of the file")
        return int(self._data[i - self._first])

    def sum(self, start: int, stop: int) -> int:
        """Entries [start, stop) added up, read a window at a time."""
        total = 0
        for lo in range(start, stop, WINDOW_ENTRIES):
            n = min(WINDOW_ENTRIES, stop - lo)
            self._f.seek(self._offset + lo * self._width)
            raw = self._f.read(n * self._width)
            if len(raw) < n * self._width:
                raise EOFError(f"table entries {lo}-{lo + n} lie past the end of the file")
            total += int(np.frombuffer(raw, dtype=self._dtype).sum(dtype=np.uint64))
        return total


class Mp4Packets:
    """The packets of an ``Mp4Track`` in decoding order, from any sample on."""

    def __init__(self, f: BinaryIO, track: Mp4Track):
        self._f, self.track = f, track
        fixed, sizes_at = track.stsz
        self._sizes = None if fixed else _Window(f, sizes_at, 4)
        self._fixed = fixed
        count, offsets_at, width = track.chunk_offsets
        self._chunk_count = count
        self._offsets = _Window(f, offsets_at, width)

    def size(self, sample: int) -> int:
        return self._fixed or self._sizes[sample]

    def sample_at(self, media_time: int) -> int:
        """Index of the sample that holds ``media_time``."""
        sample, t = 0, 0
        for count, duration in self.track.stts:
            if t + count * duration > media_time and duration:
                return sample + int((media_time - t) // duration)
            sample, t = sample + int(count), t + int(count * duration)
        return self.track.sample_count

    def media_start(self, sample: int) -> int:
        """Media time at which ``sample`` starts."""
        t, seen = 0, 0
        for count, duration in self.track.stts:
            take = min(int(count), sample - seen)
            t += take * int(duration)
            seen += take
            if seen == sample:
                break
        return t

    def read(self, first_sample: int) -> Iterator[bytes]:
        """Each packet's bytes from ``first_sample`` to the end. EOFError: the file ends before one."""
        runs = self.track.stsc
        sample = 0
        for r, (first_chunk, per_chunk) in enumerate(runs):
            last_chunk = int(runs[r + 1][0]) if r + 1 < len(runs) else self._chunk_count
            for chunk in range(int(first_chunk), last_chunk):
                if sample >= self.track.sample_count:
                    return
                in_chunk = min(int(per_chunk), self.track.sample_count - sample)
                if sample + in_chunk <= first_sample:
                    sample += in_chunk
                    continue
                start = max(sample, first_sample)
                offset = self._offsets[chunk] + (self._fixed * (start - sample) if self._fixed
                                                 else self._sizes.sum(sample, start))
                for s in range(start, sample + in_chunk):
                    n = self.size(s)  # may read the size table: seek back to the packet after it
                    self._f.seek(offset)
                    data = self._f.read(n)
                    if len(data) < n:
                        raise EOFError(f"packet {s} runs past the end of the file")
                    offset += n
                    yield data
                sample += in_chunk
        if sample < self.track.sample_count:
            raise EOFError(f"the chunk table holds {sample} of {self.track.sample_count} packets")
