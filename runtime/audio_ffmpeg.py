"""Audio that libsndfile cannot read, decoded by FFmpeg through PyAV: AAC and ALAC in MP4/M4A, Opus and
Vorbis in Ogg/WebM/Matroska, WMA, WavPack, APE, the audio track of a video, and whatever else the wheel's
FFmpeg knows.

A plain MP4/M4A's AAC or ALAC is demuxed by mp4_audio.py, which holds no per-packet index (FFmpeg's mov
demuxer builds one at open, 5.4 MiB an hour); elsewhere the first audio stream is demuxed by FFmpeg. Either
way it is decoded packet by packet; decoded frames are gathered into blocks of
``block_seconds``, so memory is bounded by the block, never by the file. Samples come out as libsndfile
gives them: float32 in [-1, 1], integer PCM divided by 2**(bits-1). What the container declares (rate,
channels, duration) goes into AudioInfo. A bad file raises AudioError with one line naming it: no audio
stream (video only), DRM-protected, corrupt packets, fewer samples than the container promises, or a
cut the file's structure shows (truncation.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from gamma_rt.errors import AudioError

from .audio import AudioInfo
from .mp4_audio import PREROLL_PACKETS, Mp4Packets, Mp4Track, read_track
from .truncation import asf_declared_seconds, end_problem

# Samples a lossy codec may legitimately add or drop at the ends (encoder priming and padding to whole
# frames) plus container rounding: a decode this much shorter than the declared length is not truncated.
LENGTH_SLACK_FRAMES = 4096
LENGTH_SLACK_FRACTION = 0.01
# Sample entries of encrypted MP4 audio: FairPlay (iTunes .m4p) and Common Encryption.
_DRM_TAGS = {"drms", "drmi", "enca"}
# FFmpeg sample format -> divisor that maps its integers onto [-1, 1] as libsndfile does
_INT_SCALE = {"u8": 128.0, "s16": 32768.0, "s32": 2147483648.0, "s64": 9223372036854775808.0}
# Containers whose duration FFmpeg estimates from the bitrate when no header declares it (CBR/VBR MP3,
# raw AAC): their length cannot show truncation.
_ESTIMATED_LENGTH = {"mp3", "aac", "adts"}
# FFmpeg demuxer -> the name users know the container by
_CONTAINER_NAMES = {"mov": "MP4", "matroska": "Matroska/WebM", "asf": "ASF (WMA)", "wv": "WavPack", "ogg": "Ogg"}


def frame_samples(frame, channels: int, name: str) -> np.ndarray:
    """One decoded frame as (frames, channels) float32, integers scaled as libsndfile scales them."""
    fmt = frame.format
    got = len(frame.layout.channels)
    if got != channels:
        raise AudioError(f"{name}: the channel count changes mid-stream ({channels} -> {got})")
    # a damaged stream can decode to a frame whose planes disagree with its layout, and PyAV's to_ndarray
    # then reads past them (a segfault, found by fuzzing): check before reading
    need = frame.samples * fmt.bytes * (1 if fmt.is_planar else got)
    planes = frame.planes
    if len(planes) != (got if fmt.is_planar else 1) or any(p.buffer_size < need for p in planes):
        raise AudioError(f"{name}: corrupt audio: a decoded frame's buffers do not hold its {got} channels")
    array = frame.to_ndarray()
    array = array.T if fmt.is_planar else array.reshape(-1, got)
    base = fmt.name.rstrip("p")
    if base in _INT_SCALE:
        scaled = array.astype(np.float32)
        if base == "u8":
            scaled -= 128.0
        return scaled / np.float32(_INT_SCALE[base])
    return np.ascontiguousarray(array, dtype=np.float32)


def gathered(pieces: Iterator[np.ndarray], frames: int) -> Iterator[np.ndarray]:
    """Decoded frames joined into blocks of at least ``frames`` frames (the last one may be shorter)."""
    pending: list[np.ndarray] = []
    held = 0
    for piece in pieces:
        pending.append(piece)
        held += len(piece)
        if held >= frames:
            yield np.concatenate(pending)
            pending, held = [], 0
    if pending:
        yield np.concatenate(pending)


def too_short(decoded: int, declared: int) -> bool:
    """Fewer frames decoded than declared, beyond what codec priming, padding and rounding explain."""
    return decoded < declared - max(LENGTH_SLACK_FRAMES, int(declared * LENGTH_SLACK_FRACTION))


def short_decode(name: str, fmt: str, decoded: int, declared: int, rate: int) -> AudioError:
    return AudioError(f"{name}: truncated or corrupt {fmt}: the container promises {declared / rate:.2f} s, "
                      f"only {max(0, decoded) / rate:.2f} s could be decoded")


def _reason(err: Exception) -> str:
    """FFmpeg's own words for an error, without the call it came from."""
    text = getattr(err, "strerror", None) or str(err)
    return str(text).rstrip(".")


class FFmpegSource:
    """One audio file (a path, or a seekable binary file object) decoded by FFmpeg.

    ``blocks(start_frame)`` yields (frames, channels) float32 at the source rate, starting at
    ``start_frame`` (seeking there first), each about ``block_seconds`` long."""

    def __init__(self, file: str | Path | BinaryIO, name: str, block_seconds: float):
        import av

        self._file = file
        av.logging.set_level(None)  # FFmpeg's own log lines would bypass the one-line error contract
        self._name = str(name)
        try:
            self._container = av.open(file if not isinstance(file, Path) else str(file), "r",
                                      metadata_errors="ignore")
        except av.error.FFmpegError as err:
            raise AudioError(f"{self._name}: not a decodable audio file ({_reason(err)})") from None
        try:
            self._stream = self._audio_stream()
            self.info = self._info()
            problem = end_problem(file, self._format_name())
            if problem:
                raise AudioError(f"{self._name}: truncated {self.info.format}: {problem}")
        except BaseException:
            self._container.close()
            raise
        self._block_frames = max(1, int(block_seconds * self.info.sample_rate))

    def _audio_stream(self):
        c = self._container
        if not c.streams.audio:
            kind = "a video with no audio track" if c.streams.video else "no audio stream"
            raise AudioError(f"{self._name}: holds {kind} ({self._container_name()} container)")
        stream = c.streams.audio[0]
        ctx = stream.codec_context
        try:
            tag = ((ctx.codec_tag if ctx is not None else None) or "").strip().lower()
        except UnicodeDecodeError:  # PyAV reads the fourcc as ASCII; a damaged one is not a DRM entry
            tag = ""
        if tag in _DRM_TAGS:
            raise AudioError(f"{self._name}: DRM-protected audio ({tag} sample entry); it cannot be decoded")
        if ctx is None or ctx.codec is None or not ctx.sample_rate or not ctx.channels:
            what = ctx.name if ctx is not None else "unknown codec"
            raise AudioError(f"{self._name}: its {self._container_name()} audio stream cannot be decoded "
                             f"({what}: no decoder, or no rate/channels declared)")
        return stream

    def _info(self) -> AudioInfo:
        s, c = self._stream, self._container
        ctx = s.codec_context
        rate, channels = ctx.sample_rate, ctx.channels
        if self._format_name() == "asf":
            duration = asf_declared_seconds(self._file)
        elif s.duration is not None and s.time_base is not None:
            duration = float(s.duration * s.time_base)
        elif c.duration is not None:
            duration = c.duration / 1_000_000  # AV_TIME_BASE
        else:
            duration = None
        frames = None if duration is None else round(duration * rate)
        if frames == 0:
            raise AudioError(f"{self._name}: holds no decodable audio (0 s of {ctx.name} declared)")
        fmt = f"{ctx.name.upper()} in {self._container_name()}"
        return AudioInfo(self._name, rate, channels, frames, duration, fmt, codec=ctx.name)

    def blocks(self, start_frame: int = 0) -> Iterator[np.ndarray]:
        """(frames, channels) float32 blocks from ``start_frame`` to the end."""
        return gathered(self._frames(start_frame), self._block_frames)

    def _frames(self, start_frame: int) -> Iterator[np.ndarray]:
        """Decoded samples from ``start_frame`` on; the length is checked at the end."""
        import av

        rate = self.info.sample_rate
        skip = self._seek(start_frame)
        decoded_s = start_frame / rate
        decoded = start_frame
        packet_checks = self._format_name() == "mov"
        try:
            for packet in self._container.demux(self._stream):
                if packet_checks and packet.size and packet.has_sidedata("encryption_info"):
                    raise AudioError(f"{self._name}: DRM-protected (encrypted) audio; it cannot be decoded")
                for frame in packet.decode():
                    block = self._samples(frame)
                    if skip is not None and frame.time is not None:
                        drop = int(round((skip - frame.time) * rate))
                        block = block[max(0, drop):]
                    if len(block):
                        decoded_s += len(block) / rate
                        decoded += len(block)
                        yield block
        except av.error.FFmpegError as err:
            raise AudioError(f"{self._name}: corrupt {self.info.format} data after {decoded_s:.1f} s of audio "
                             f"({_reason(err)})") from None
        if start_frame == 0 or decoded > start_frame:
            self._check_length(decoded)

    def _seek(self, start_frame: int) -> float | None:
        """Go to the start (every pass begins there) or near ``start_frame``; returns the time in s before
        which decoded samples are to be dropped (None: keep all)."""
        import av

        target = start_frame / self.info.sample_rate
        try:
            self._container.seek(0)
            if start_frame:
                self._container.seek(int(target * av.time_base), backward=True)
        except av.error.FFmpegError as err:
            raise AudioError(f"{self._name}: cannot seek in its {self.info.format} data ({_reason(err)})") from None
        self._stream.codec_context.flush_buffers()
        return target if start_frame else None

    def _samples(self, frame) -> np.ndarray:
        return frame_samples(frame, self.info.channels, self._name)

    def _format_name(self) -> str:
        return self._container.format.name.split(",")[0]

    def _container_name(self) -> str:
        name = self._format_name()
        return _CONTAINER_NAMES.get(name, name.upper())

    def _check_length(self, decoded: int) -> None:
        declared = self.info.frames
        if declared is None or self._format_name() in _ESTIMATED_LENGTH:
            return
        if too_short(decoded, declared):
            raise short_decode(self._name, self.info.format, decoded, declared, self.info.sample_rate)

    def close(self) -> None:
        self._container.close()


def open_ffmpeg(file: str | Path | BinaryIO, name: str, block_seconds: float):
    """A plain MP4/M4A's audio through the streaming reader (mp4_audio.py), everything else through
    FFmpeg's own demuxers."""
    source = Mp4Source.open(file, name, block_seconds)
    return source if source is not None else FFmpegSource(file, name, block_seconds)


class Mp4Source:
    """An MP4's AAC or ALAC track: packets from mp4_audio.Mp4Packets, decoded by FFmpeg's decoder. The
    encoder's priming is dropped as the edit says (the same samples FFmpeg's mov demuxer gives), and the
    decode stops at the edit's end, the encoder's input length (FFmpeg keeps the last frame's padding)."""

    @classmethod
    def open(cls, file: str | Path | BinaryIO, name: str, block_seconds: float) -> "Mp4Source | None":
        owned = isinstance(file, (str, Path))
        f = open(file, "rb") if owned else file
        start = None if owned else f.tell()
        track = read_track(f)
        if track is None:
            if owned:
                f.close()
            else:
                f.seek(start)
            return None
        try:
            return cls(f, owned, str(name), track, block_seconds)
        except BaseException:
            if owned:
                f.close()
            raise

    def __init__(self, f: BinaryIO, owned: bool, name: str, track: Mp4Track, block_seconds: float):
        import av

        av.logging.set_level(None)
        self._f, self._owned, self._name, self._track = f, owned, name, track
        self._packets = Mp4Packets(f, track)
        self._format = f"{track.codec.upper()} in MP4"
        rate, channels = self._probe()
        self._ratio = rate / track.timescale
        self._skip = round(track.skip * self._ratio)
        if track.edit_duration_s is not None:
            frames = round(track.edit_duration_s * rate)
        else:
            frames = round(track.media_duration * self._ratio) - self._skip
        if frames <= 0:
            raise AudioError(f"{name}: holds no decodable audio (0 s of {track.codec} declared)")
        self.info = AudioInfo(name, rate, channels, frames, frames / rate, self._format, codec=track.codec)
        self._block_frames = max(1, int(block_seconds * rate))

    def _decoder(self):
        import av

        ctx = av.CodecContext.create(self._track.codec, "r")
        ctx.extradata = self._track.extradata
        return ctx

    def _probe(self) -> tuple[int, int]:
        """Rate and channels as the decoder gives them (HE-AAC doubles the declared rate)."""
        import av

        ctx = self._decoder()
        try:
            for i, data in enumerate(self._packets.read(0)):
                for frame in ctx.decode(av.Packet(data)):
                    return frame.sample_rate, len(frame.layout.channels)
                if i > 16:
                    break
        except (av.error.FFmpegError, EOFError) as err:
            raise AudioError(f"{self._name}: not a decodable audio file ({_reason(err)})") from None
        raise AudioError(f"{self._name}: holds no decodable audio (its first packets decode to nothing)")

    def blocks(self, start_frame: int = 0) -> Iterator[np.ndarray]:
        """(frames, channels) float32 blocks from ``start_frame`` to the end."""
        return gathered(self._frames(start_frame), self._block_frames)

    def _frames(self, start_frame: int) -> Iterator[np.ndarray]:
        """Decoded samples in [start_frame, frames), counted after the priming."""
        import av

        first = self._skip + start_frame  # in decoded samples, priming included
        end = self._skip + self.info.frames
        target = self._packets.sample_at(int(first / self._ratio))
        begin = max(0, target - PREROLL_PACKETS)
        position = round(self._packets.media_start(begin) * self._ratio)
        try:
            for frame in self._decoded(begin):
                block = frame_samples(frame, self.info.channels, self._name)
                lo, hi = max(first, position), min(end, position + len(block))
                if hi > lo:
                    yield block[lo - position:hi - position]
                position += len(block)
                if position >= end:
                    return
        except av.error.FFmpegError as err:
            seconds = max(0, position - self._skip) / self.info.sample_rate
            raise AudioError(f"{self._name}: corrupt {self._format} data after {seconds:.1f} s of audio "
                             f"({_reason(err)})") from None
        except EOFError:  # the file ends inside its packets: certainly cut, however little is missing
            raise self._short(position - self._skip) from None
        if too_short(position - self._skip, self.info.frames):
            raise self._short(position - self._skip)

    def _decoded(self, begin: int):
        """Decoded frames from packet ``begin`` on, the decoder's held frames last."""
        import av

        ctx = self._decoder()
        for data in self._packets.read(begin):
            yield from ctx.decode(av.Packet(data))
        yield from ctx.decode(None)

    def _short(self, decoded: int) -> AudioError:
        return short_decode(self._name, self._format, decoded, self.info.frames, self.info.sample_rate)

    def close(self) -> None:
        if self._owned:
            self._f.close()
