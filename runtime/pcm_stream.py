"""PCM arriving on a pipe: raw sample layouts, the WAV header of a streamed WAV, and decoding as bytes arrive.

libsndfile needs to seek in most containers, so a live stream (stdin) is parsed here: the WAV header is
read by hand, and the PCM bytes after it are converted by libsndfile's RAW reader block by block, which
gives the same float values as reading the same file from disk.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import numpy as np
import soundfile as sf

from gamma_rt.errors import AudioError

# encoding name (ffmpeg/sox style) -> (libsndfile subtype, endianness, bytes per sample)
RAW_ENCODINGS = {
    "u8": ("PCM_U8", "FILE", 1),
    "s8": ("PCM_S8", "FILE", 1),
    "s16le": ("PCM_16", "LITTLE", 2),
    "s16be": ("PCM_16", "BIG", 2),
    "s24le": ("PCM_24", "LITTLE", 3),
    "s32le": ("PCM_32", "LITTLE", 4),
    "f32le": ("FLOAT", "LITTLE", 4),
    "f64le": ("DOUBLE", "LITTLE", 8),
}
# WAV format tag and bits per sample -> encoding
_WAV_ENCODINGS = {(1, 8): "u8", (1, 16): "s16le", (1, 24): "s24le", (1, 32): "s32le", (3, 32): "f32le", (3, 64): "f64le"}
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE
# writers that stream a WAV before knowing its length put 0, 0xFFFFFFFF or about 2 GiB in the data size
_UNKNOWN_SIZE_FLOOR = 0x7F000000


@dataclass(frozen=True)
class RawFormat:
    """Layout of headerless PCM: encoding (one of RAW_ENCODINGS), rate in Hz, interleaved channels."""

    encoding: str = "s16le"
    sample_rate: int = 16000
    channels: int = 1

    def __post_init__(self):
        if self.encoding not in RAW_ENCODINGS:
            raise AudioError(f"raw format: unknown encoding {self.encoding!r} (choose from {', '.join(RAW_ENCODINGS)})")
        if self.sample_rate <= 0 or self.channels <= 0:
            raise AudioError(f"raw format: rate and channels must be positive, got {self.sample_rate} Hz, {self.channels} channels")

    @property
    def frame_bytes(self) -> int:
        """Bytes of one frame (one sample of every channel)."""
        return RAW_ENCODINGS[self.encoding][2] * self.channels

    def soundfile_kwargs(self) -> dict:
        subtype, endian, _ = RAW_ENCODINGS[self.encoding]
        return dict(samplerate=self.sample_rate, channels=self.channels, format="RAW", subtype=subtype, endian=endian)

    def decode(self, data: bytes) -> np.ndarray:
        """Whole frames of PCM bytes -> (frames, channels) float32 in [-1, 1], libsndfile's scaling."""
        block, _ = sf.read(io.BytesIO(data), dtype="float32", always_2d=True, **self.soundfile_kwargs())
        return block


def add_raw_format_options(parser) -> None:
    """The CLI options for headerless PCM (e.g. on stdin); read them back with raw_format_from_options."""
    group = parser.add_argument_group("raw PCM input (for headerless audio, e.g. piped from a recorder)")
    group.add_argument("--raw-format", choices=sorted(RAW_ENCODINGS), default=None,
                       help="sample encoding of headerless PCM, e.g. s16le; without it the format is detected")
    group.add_argument("--raw-rate", type=int, default=16000, help="sample rate of the raw PCM in Hz (default 16000)")
    group.add_argument("--raw-channels", type=int, default=1, help="interleaved channels of the raw PCM (default 1)")


def raw_format_from_options(options) -> RawFormat | None:
    """The RawFormat the options name, or None when --raw-format was not given (detect the format)."""
    if getattr(options, "raw_format", None) is None:
        return None
    return RawFormat(options.raw_format, options.raw_rate, options.raw_channels)


def read_exactly(stream: BinaryIO, n: int) -> bytes:
    """Up to n bytes, fewer only at end of stream (pipes return short reads)."""
    buf = bytearray()
    while len(buf) < n:
        chunk = stream.read(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def read_wav_header(stream: BinaryIO, name: str) -> tuple[RawFormat, int | None]:
    """Parse a WAV header whose leading b"RIFF" was already read; stop at the start of the samples.

    Returns the PCM layout and the data size in bytes (None when the writer did not know it).
    """
    head = read_exactly(stream, 8)
    if len(head) < 8 or head[4:] != b"WAVE":
        raise AudioError(f"{name}: not a WAV stream (RIFF without WAVE)")
    layout = None
    while True:
        chunk = read_exactly(stream, 8)
        if len(chunk) < 8:
            raise AudioError(f"{name}: WAV stream ended before its data chunk")
        chunk_id, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if chunk_id == b"data":
            if layout is None:
                raise AudioError(f"{name}: WAV stream has no fmt chunk before its data")
            known = 0 < size < _UNKNOWN_SIZE_FLOOR
            return layout, (size if known else None)
        body = read_exactly(stream, size + (size & 1))  # chunks are padded to even sizes
        if len(body) < size:
            raise AudioError(f"{name}: WAV stream ended inside its {chunk_id!r} chunk")
        if chunk_id == b"fmt ":
            layout = _parse_fmt(body, name)


def _parse_fmt(body: bytes, name: str) -> RawFormat:
    if len(body) < 16:
        raise AudioError(f"{name}: WAV fmt chunk is {len(body)} bytes, needs 16")
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
    if tag == _WAVE_FORMAT_EXTENSIBLE and len(body) >= 26:
        tag = struct.unpack("<H", body[24:26])[0]  # first two bytes of the sub-format GUID
    encoding = _WAV_ENCODINGS.get((tag, bits))
    if encoding is None:
        raise AudioError(f"{name}: WAV sample format (tag {tag:#x}, {bits} bits) cannot be streamed; "
                         "save it to a file and pass the path")
    if channels == 0 or rate == 0:
        raise AudioError(f"{name}: WAV fmt chunk says {channels} channels at {rate} Hz")
    return RawFormat(encoding, rate, channels)


def read_pcm_stream(stream: BinaryIO, layout: RawFormat, name: str, block_seconds: float,
                    data_bytes: int | None = None, head: bytes = b"") -> Iterator[np.ndarray]:
    """Yield (frames, channels) float32 blocks at the source rate as soon as whole frames arrive.

    data_bytes: stop after this many bytes (a WAV data chunk of known size), else read to end of stream.
    head: bytes already taken from the stream that belong to the samples.
    """
    max_bytes = max(1, int(block_seconds * layout.sample_rate)) * layout.frame_bytes
    # read1 returns what the pipe holds now instead of waiting for a full block: live input stays live
    read = getattr(stream, "read1", stream.read)
    pending = bytearray(head)
    remaining = None if data_bytes is None else data_bytes - len(head)
    while remaining is None or remaining > 0:
        want = max_bytes if remaining is None else min(max_bytes, remaining)
        chunk = read(want)
        if not chunk:
            break
        if remaining is not None:
            remaining -= len(chunk)
        pending += chunk
        usable = len(pending) - len(pending) % layout.frame_bytes
        if usable:
            yield layout.decode(bytes(pending[:usable]))
            del pending[:usable]
    if remaining:
        got = (data_bytes - remaining) / layout.frame_bytes / layout.sample_rate
        raise AudioError(f"{name}: truncated WAV stream: the header promises "
                         f"{data_bytes / layout.frame_bytes / layout.sample_rate:.2f} s, it ended after {got:.2f} s")
    # a partial frame at the very end (a stream cut mid-sample) carries no whole sample: dropped
