"""Audio in: any file or stream -> float32 mono 16 kHz blocks, read in bounded memory.

Files are decoded block by block by soundfile (libsndfile: WAV, FLAC, Ogg Vorbis/Opus, MP3, AIFF...), and
what libsndfile cannot read (AAC/ALAC in MP4, WMA, Opus in WebM, WavPack, APE, the audio of a video) by
FFmpeg through PyAV (audio_ffmpeg.py). stdin (``-``) or any non-seekable binary stream carrying WAV or raw
PCM is decoded as its bytes arrive, so a live source yields blocks before it ends. Channels are averaged
to mono, then soxr's streaming resampler (quality HQ) brings any rate to 16 kHz; streamed output equals
resampling the whole file at once. A stream can be clipped to a span of the song (``AudioStream.clip``)
and given a deadline (``AudioStream.until``). A user's bad file raises ``AudioError`` with one line
naming the file.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import soundfile as sf
import soxr

from gamma_rt.errors import AudioError

from .mel import SAMPLE_RATE
from .pcm_stream import RawFormat, read_exactly, read_pcm_stream, read_wav_header
from .truncation import end_problem, mpeg_declares_length

__all__ = ["AudioInfo", "AudioStream", "AudioTimeout", "RawFormat", "open_audio", "load_audio", "SAMPLE_RATE"]

STDIN = "-"
RESAMPLE_QUALITY = "HQ"
# mpg123 reports a length from the Xing header or the bitrate; legit files may decode a frame or two
# short of it, so truncation is only declared past this slack (two MPEG frames, or 1 %).
MP3_LENGTH_SLACK_FRAMES = 2 * 1152
_MAGIC = {".wav": (b"RIFF", b"RIFX", b"RF64"), ".flac": (b"fLaC",), ".ogg": (b"OggS",)}


@dataclass
class AudioInfo:
    """What the source declares, before resampling: its own rate and channel count.

    frames and duration_s are None for a stream of unknown length (live stdin).
    """

    path: str
    sample_rate: int
    channels: int
    frames: int | None
    duration_s: float | None
    format: str
    codec: str | None = None  # FFmpeg's codec name where FFmpeg decodes the file (aac, alac, opus...)


class AudioStream:
    """Iterable of float32 mono blocks at ``target_rate`` (each about ``block_seconds`` long; live
    streams yield what has arrived). ``info`` describes the source. Files can be iterated again;
    a pipe only once. Use as a context manager, or call ``close()``, to release the file early."""

    def __init__(self, info: AudioInfo, source: "_Source", target_rate: int):
        self.info = info
        self.target_rate = target_rate
        self._source = source
        self.source_info = info  # what the whole source declares (``info`` is the clip's, see clip)
        self.start_s = 0.0  # where iteration starts in the source (see clip)
        self.seconds: float | None = None  # how much of it is read; None: to the end
        self._deadline: tuple[float, str] | None = None

    @classmethod
    def from_array(cls, samples: np.ndarray, rate: int = SAMPLE_RATE, name: str = "<array>") -> "AudioStream":
        """An in-memory (samples,) float32 mono array at ``rate``, as a stream (nothing to resample)."""
        samples = np.asarray(samples, np.float32).reshape(-1)
        info = AudioInfo(name, rate, 1, samples.size, samples.size / rate, "ARRAY")
        return cls(info, _ArraySource(samples, rate), rate)

    def clip(self, start_s: float, seconds: float | None) -> "AudioStream":
        """The same source read from ``start_s`` for ``seconds`` (None: to the end). ``info.duration_s``
        and ``info.frames`` of the clip are its own length; the source's stay in ``source_info``."""
        clipped = self._copy()
        duration = self.info.duration_s
        start_s = max(0.0, start_s)
        if duration is not None:
            start_s = min(start_s, duration)
            seconds = duration - start_s if seconds is None else min(seconds, duration - start_s)
        clipped.start_s, clipped.seconds = start_s, seconds
        frames = None if seconds is None else round(seconds * self.info.sample_rate)
        clipped.info = dataclasses.replace(self.info, frames=frames, duration_s=seconds)
        return clipped

    def until(self, deadline: float, message: str) -> "AudioStream":
        """The same stream, raising ``AudioTimeout(message)`` between blocks once ``time.perf_counter()``
        passes ``deadline``: a slow track is stopped at the next block, not after the whole song."""
        timed = self._copy()
        timed._deadline = (deadline, message)
        return timed

    def _copy(self) -> "AudioStream":
        other = AudioStream(self.info, self._source, self.target_rate)
        other.start_s, other.seconds, other._deadline = self.start_s, self.seconds, self._deadline
        other.source_info = self.source_info
        return other

    def __iter__(self) -> Iterator[np.ndarray]:
        rate = self.info.sample_rate
        resampler = None
        if rate != self.target_rate:
            resampler = soxr.ResampleStream(rate, self.target_rate, 1, dtype="float32", quality=RESAMPLE_QUALITY)
        start_frame = round(self.start_s * rate)
        end_frame = None if self.seconds is None else start_frame + round(self.seconds * rate)
        frames_in = 0
        samples_out = 0
        mono_sum = 0.0
        for block in self._source.blocks(start_frame):  # (frames, channels) float32 at the source rate
            self._check_deadline()
            if end_frame is not None:
                block = block[:max(0, end_frame - start_frame - frames_in)]
            _check_finite(block, start_frame + frames_in, rate, self.info.path)
            frames_in += len(block)
            # mixing before resampling is exact (both are linear) and resamples 1 channel instead of N
            mono = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32)
            mono_sum += float(mono.sum(dtype=np.float64))
            out = mono if resampler is None else resampler.resample_chunk(mono, last=False)
            if len(out):
                samples_out += len(out)
                yield np.ascontiguousarray(out, dtype=np.float32)
            if end_frame is not None and start_frame + frames_in >= end_frame:
                break  # the clip is read: decode no further
        if resampler is not None:
            tail = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            if len(tail):
                samples_out += len(tail)
                yield tail.astype(np.float32, copy=False)
        if frames_in == 0:
            raise AudioError(f"{self.info.path}: no audio samples could be decoded (empty or truncated {self.info.format})")
        if samples_out == 0:
            # a source shorter than one output sample (e.g. 1 sample at 96 kHz): keep it as one sample,
            # its mean, so that degenerate but legit audio still makes one (padded) window
            yield np.array([mono_sum / frames_in], np.float32)

    def source_blocks(self) -> Iterator[np.ndarray]:
        """The source's own (frames, channels) float32 blocks at its own rate, from the start: what the
        decoder gives before mixing and resampling (for comparing two files' audio)."""
        return self._source.blocks(0)

    def _check_deadline(self) -> None:
        if self._deadline is not None and time.perf_counter() > self._deadline[0]:
            raise AudioTimeout(self._deadline[1])

    def close(self) -> None:
        self._source.close()

    def __enter__(self) -> "AudioStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AudioTimeout(AudioError):
    """A stream read past its deadline (``AudioStream.until``)."""


def open_audio(source: str | Path | BinaryIO, target_rate: int = SAMPLE_RATE, block_seconds: float = 10.0,
               raw: RawFormat | None = None) -> AudioStream:
    """Open a file path, ``-`` (stdin) or a binary file object for streaming decode.

    raw: read headerless PCM in this layout instead of detecting a format (needed for raw stdin).
    Raises AudioError for a missing, empty, undecodable or wrongly named file; decoding errors found
    later (corrupt or truncated data, NaN/Inf samples) are raised while iterating.
    """
    if block_seconds <= 0:
        raise ValueError(f"block_seconds must be positive, got {block_seconds}")
    if isinstance(source, (str, Path)) and str(source) == STDIN:
        reader = _PipeSource(sys.stdin.buffer, "<stdin>", raw, block_seconds)
    elif isinstance(source, (str, Path)):
        reader = _FileSource.open_path(Path(source), raw, block_seconds)
    elif _seekable(source):
        reader = _open_file(source, _stream_name(source), raw, block_seconds)
    else:
        reader = _PipeSource(source, _stream_name(source), raw, block_seconds)
    return AudioStream(reader.info, reader, target_rate)


def load_audio(source: str | Path | BinaryIO, target_rate: int = SAMPLE_RATE, raw: RawFormat | None = None) -> np.ndarray:
    """The whole source as (samples,) float32 mono at ``target_rate``: the stream, concatenated."""
    with open_audio(source, target_rate, raw=raw) as stream:
        return np.concatenate(list(stream))


def _check_finite(block: np.ndarray, frames_before: int, rate: int, path: str) -> None:
    finite = np.isfinite(block)
    if not finite.all():
        frame, channel = np.argwhere(~finite)[0]
        second = (frames_before + int(frame)) / rate
        raise AudioError(f"{path}: non-finite sample (NaN or Inf) at {second:.3f} s, channel {int(channel)}")


def _stream_name(stream: BinaryIO) -> str:
    name = getattr(stream, "name", None)
    return name if isinstance(name, str) else "<stream>"  # os.fdopen names a pipe by its int fd


def _seekable(stream: BinaryIO) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, ValueError, OSError):
        return False


def _libsndfile_reason(err: Exception) -> str:
    reason = getattr(err, "error_string", None) or str(err)
    if "does not exist" in reason:  # libsndfile's words when its MPEG reader rejects an existing file
        return "format not recognised or header corrupt"
    return reason


class _Source:
    """Decoded audio: ``blocks(start_frame)`` yields (frames, channels) float32 at the source rate, the
    first starting at ``start_frame``."""

    info: AudioInfo

    def blocks(self, start_frame: int = 0) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _ArraySource(_Source):
    """Mono samples already in memory."""

    def __init__(self, samples: np.ndarray, rate: int, block_seconds: float = 10.0):
        self._samples = samples
        self._block = max(1, int(block_seconds * rate))

    def blocks(self, start_frame: int = 0) -> Iterator[np.ndarray]:
        for i in range(start_frame, self._samples.size, self._block):
            yield self._samples[i:i + self._block, None]


def _open_file(file: str | BinaryIO, name: str, raw: RawFormat | None, block_seconds: float) -> _Source:
    """libsndfile where it reads the file (it is exact and fast for WAV/FLAC), else FFmpeg."""
    try:
        return _FileSource(file, name, raw, block_seconds)
    except _NotForLibsndfile as refused:
        if isinstance(file, str):
            _check_magic(Path(file))
        from .audio_ffmpeg import open_ffmpeg

        if not isinstance(file, str):
            file.seek(0)
        try:
            return open_ffmpeg(file, name, block_seconds)
        except AudioError as err:
            if "not a decodable audio file" in str(err):  # neither could open it: say what both said
                raise AudioError(f"{err}; libsndfile: {refused}") from None
            raise


class _NotForLibsndfile(Exception):
    """libsndfile cannot open this file; FFmpeg may (the message is libsndfile's reason)."""


class _FileSource(_Source):
    """A seekable file decoded by libsndfile, ``block_seconds`` of source frames per read."""

    def __init__(self, file: str | BinaryIO, name: str, raw: RawFormat | None, block_seconds: float):
        self._name = str(name)
        try:
            kwargs = raw.soundfile_kwargs() if raw else {}
            # a name that is not UTF-8 (surrogateescape'd str) reaches libsndfile as its own bytes
            self._file = sf.SoundFile(os.fsencode(file) if isinstance(file, str) else file, **kwargs)
        except sf.LibsndfileError as err:
            if raw is None:
                raise _NotForLibsndfile(_libsndfile_reason(err)) from None
            raise AudioError(f"{self._name}: not a decodable audio file ({_libsndfile_reason(err)})") from None
        except (TypeError, ValueError) as err:  # soundfile's own checks on a raw layout
            raise AudioError(f"{self._name}: cannot open as raw PCM ({err})") from None
        f = self._file
        if f.frames == 0:
            raise AudioError(f"{self._name}: holds no decodable audio (0 frames: empty or truncated {f.format})")
        problem = end_problem(file, f.format.lower()) if raw is None else None
        if problem:
            raise AudioError(f"{self._name}: truncated {f.format}: {problem}")
        # libsndfile's MP3 length is an estimate unless a Xing/Info header states it (truncation.py)
        self._length_declared = f.format != "MP3" or raw is not None or mpeg_declares_length(file)
        self.info = AudioInfo(self._name, f.samplerate, f.channels, f.frames, f.frames / f.samplerate, f.format)
        self._block_frames = max(1, int(block_seconds * f.samplerate))

    @staticmethod
    def open_path(path: Path, raw: RawFormat | None, block_seconds: float) -> _Source:
        if not path.exists():
            raise AudioError(f"{path}: no such audio file")
        if path.is_dir():
            raise AudioError(f"{path}: is a folder, not an audio file")
        size = path.stat().st_size
        if size == 0:
            raise AudioError(f"{path}: empty file (0 bytes)")
        return _open_file(str(path), str(path), raw, block_seconds)

    def blocks(self, start_frame: int = 0) -> Iterator[np.ndarray]:
        f = self._file
        if f.closed:
            raise AudioError(f"{self._name}: the audio stream was closed")
        try:
            f.seek(min(start_frame, f.frames))  # every pass seeks, so a file can be iterated again
        except sf.LibsndfileError as err:  # a corrupt FLAC can fail even this seek
            raise AudioError(f"{self._name}: corrupt {f.format} data ({_libsndfile_reason(err)})") from None
        decoded = start_frame
        while True:
            try:
                # read() in a loop, not SoundFile.blocks(): blocks() trusts the header's frame count
                # and hands out stale buffer contents when a file ends early
                block = f.read(self._block_frames, dtype="float32", always_2d=True)
            except sf.LibsndfileError as err:
                second = decoded / f.samplerate
                raise AudioError(f"{self._name}: corrupt or truncated {f.format} data after {second:.1f} s "
                                 f"of audio ({_libsndfile_reason(err)})") from None
            if len(block) == 0:
                break
            decoded += len(block)
            yield block
        if decoded > start_frame or start_frame == 0:
            self._check_length(decoded)

    def _check_length(self, decoded: int) -> None:
        if not self._length_declared:
            return
        declared = self.info.frames or 0
        slack = max(MP3_LENGTH_SLACK_FRAMES, declared // 100) if self.info.format == "MP3" else 0
        if 0 < decoded < declared - slack:
            rate = self.info.sample_rate
            raise AudioError(f"{self._name}: truncated {self.info.format}: the header promises "
                             f"{declared / rate:.2f} s, only {decoded / rate:.2f} s could be decoded")

    def close(self) -> None:
        self._file.close()


def _check_magic(path: Path) -> None:
    """After libsndfile refused a file: if its name promises WAV/FLAC/OGG but its first bytes say
    otherwise (a text file named .wav), say so, which is clearer than 'Format not recognised'."""
    expected = _MAGIC.get(path.suffix.lower())
    if expected is None:
        return
    with open(path, "rb") as f:
        head = f.read(4)
    if head not in expected:
        kind = "text" if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head) else "unknown data"
        raise AudioError(f"{path}: named {path.suffix} but is not a {path.suffix[1:].upper()} file "
                         f"(starts with {kind}: {head!r})")


class _PipeSource(_Source):
    """A non-seekable byte stream (stdin, a pipe, a socket): WAV or raw PCM is decoded as it arrives;
    any other container is spooled to a temporary file first (libsndfile needs to seek in those)."""

    def __init__(self, stream: BinaryIO, name: str, raw: RawFormat | None, block_seconds: float):
        self._stream = stream
        self._name = name
        self._block_seconds = block_seconds
        self._spooled: _Source | None = None
        self._used = False
        self._head = b""
        if raw is not None:
            self._raw, self._data_bytes = raw, None
            fmt = "RAW"
        else:
            self._head = read_exactly(stream, 4)
            if not self._head:
                raise AudioError(f"{name}: empty input (no bytes before end of stream)")
            if self._head == b"RIFF":
                self._raw, self._data_bytes = read_wav_header(stream, name)
                self._head = b""
                fmt = "WAV"
            else:
                self._spooled = self._spool()
                self.info = self._spooled.info
                return
        frames = None if self._data_bytes is None else self._data_bytes // self._raw.frame_bytes
        duration = None if frames is None else frames / self._raw.sample_rate
        self.info = AudioInfo(name, self._raw.sample_rate, self._raw.channels, frames, duration, fmt)

    def _spool(self) -> _Source:
        spool = tempfile.SpooledTemporaryFile(max_size=64 << 20)  # RAM up to 64 MiB, then disk
        spool.write(self._head)
        shutil.copyfileobj(self._stream, spool, 1 << 20)
        spool.seek(0)
        return _open_file(spool, self._name, None, self._block_seconds)

    def blocks(self, start_frame: int = 0) -> Iterator[np.ndarray]:
        if self._spooled is not None:
            yield from self._spooled.blocks(start_frame)
            return
        if self._used:
            raise AudioError(f"{self._name}: a stream can be read only once")
        self._used = True
        skip = start_frame  # a pipe cannot seek: the frames before the start are read and dropped
        for block in read_pcm_stream(self._stream, self._raw, self._name, self._block_seconds, self._data_bytes,
                                     self._head):
            if skip >= len(block):
                skip -= len(block)
                continue
            yield block[skip:]
            skip = 0

    def close(self) -> None:
        if self._spooled is not None:
            self._spooled.close()

