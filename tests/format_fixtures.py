"""Real audio files in every common format, written with the FFmpeg encoders of the PyAV wheel.

Each entry of FORMATS is one way a music library stores a song: its container, codec, rate and channel
layout, and the tag container mutagen writes into it. ``write_format`` synthesizes music (gamma_rt/synth.py)
and encodes it; a codec the wheel's FFmpeg lacks raises ``MissingCodec`` naming it, for the test to skip.
``damage`` makes the corrupt and truncated copies a real library also holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gamma_rt.synth import Music, synthesize

LAYOUTS = {1: "mono", 2: "stereo", 6: "5.1"}


class MissingCodec(Exception):
    """The wheel's FFmpeg has no encoder for this codec."""


@dataclass(frozen=True)
class Format:
    """One way to store a song: container (FFmpeg muxer) + codec (FFmpeg encoder)."""

    ext: str
    container: str
    codec: str
    rate: int = 44100
    channels: int = 2
    options: dict = field(default_factory=dict)  # muxer options
    codec_options: dict = field(default_factory=dict)  # encoder options
    video: bool = False  # an MP4 video whose second stream is the audio
    tags: str | None = None  # the mutagen class that tags it; None: mutagen cannot
    # samples a lossy codec may add or drop at the ends (priming, padding to whole frames)
    slack: int = 0


FORMATS = {
    "aac.m4a": Format(".m4a", "ipod", "aac", tags="MP4", slack=2048 + 1024),
    # the index at the front, as iTunes and `-movflags faststart` write it: a cut then leaves the
    # tables whole and loses packets (the other .m4a keep their index at the end)
    "aac-faststart.m4a": Format(".m4a", "ipod", "aac", options={"movflags": "faststart"}, tags="MP4",
                                slack=2048 + 1024),
    "alac.m4a": Format(".m4a", "ipod", "alac", tags="MP4", slack=4096),
    "aac-5.1.m4a": Format(".m4a", "ipod", "aac", channels=6, tags="MP4", slack=2048 + 1024),
    "opus.ogg": Format(".opus", "ogg", "libopus", rate=48000, tags="OggOpus", slack=960 + 312),
    "opus.webm": Format(".webm", "webm", "libopus", rate=48000, slack=960 + 312),
    "vorbis.ogg": Format(".ogg", "ogg", "vorbis", codec_options={"strict": "experimental"}, tags="OggVorbis",
                         slack=2048),
    "xing.mp3": Format(".mp3", "mp3", "libmp3lame", tags="MP3", slack=2 * 1152 + 529),
    "cbr-no-xing.mp3": Format(".mp3", "mp3", "libmp3lame", options={"write_xing": "0"}, tags="MP3",
                              slack=2 * 1152 + 529),
    "pcm.aiff": Format(".aiff", "aiff", "pcm_s16be", tags="AIFF"),
    "wma.wma": Format(".wma", "asf", "wmav2", codec_options={"b": "128000"}, tags="ASF", slack=4096),
    "wavpack.wv": Format(".wv", "wv", "wavpack", tags="WavPack"),
    "flac.flac": Format(".flac", "flac", "flac", tags="FLAC"),
    "aac-video.mp4": Format(".mp4", "mp4", "aac", video=True, tags="MP4", slack=2048 + 1024),
}


def available(fmt: Format) -> str | None:
    """None when the wheel's FFmpeg can write ``fmt``, else the name of what it lacks."""
    import av

    for name in [fmt.codec, *(["mpeg4"] if fmt.video else [])]:
        try:
            av.codec.Codec(name, "w")
        except av.codec.codec.UnknownCodecError:
            return f"encoder {name}"
    if fmt.container not in av.formats_available:
        return f"muxer {fmt.container}"
    return None


def music(fmt: Format, seconds: float, seed: int = 0) -> np.ndarray:
    """The (samples, channels) float32 the file is encoded from."""
    return synthesize(Music(seconds, fmt.rate, fmt.channels, seed, level=0.8))


def write_format(path: Path, fmt: Format, seconds: float = 2.0, seed: int = 0) -> Path:
    """Encode ``seconds`` of synthesized music into ``path`` (its extension decides nothing; fmt does)."""
    import av

    missing = available(fmt)
    if missing:
        raise MissingCodec(missing)
    audio = music(fmt, seconds, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=fmt.container, options=dict(fmt.options)) as out:
        video = _add_video(out) if fmt.video else None
        stream = out.add_stream(fmt.codec, rate=fmt.rate, layout=LAYOUTS[fmt.channels])
        stream.codec_context.options = dict(fmt.codec_options)
        stream.codec_context.format = _best_sample_format(stream.codec_context.codec)
        stream.codec_context.open()  # fixes the encoder's frame size
        ctx = stream.codec_context
        resampler = av.AudioResampler(format=ctx.format.name, layout=LAYOUTS[fmt.channels], rate=fmt.rate,
                                      frame_size=ctx.frame_size or 1024)
        block = 4096
        for i in range(0, len(audio), block):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[i:i + block].T), format="fltp",
                                               layout=LAYOUTS[fmt.channels])
            frame.sample_rate = fmt.rate
            frame.pts = i
            for piece in resampler.resample(frame):
                out.mux(stream.encode(piece))
        for piece in resampler.resample(None):
            out.mux(stream.encode(piece))
        out.mux(stream.encode(None))
        if video is not None:
            _write_video(out, video, seconds)
    return path


def _best_sample_format(codec) -> str:
    """The encoder's most precise sample format (a lossless codec then keeps float input exactly)."""
    offered = [f.name for f in codec.audio_formats or []]
    return next((f for f in _PRECISION_ORDER if f in offered), offered[0] if offered else "fltp")


_PRECISION_ORDER = ("fltp", "flt", "s32p", "s32", "s16p", "s16", "u8p", "u8")


def _add_video(out):
    video = out.add_stream("mpeg4", rate=10)
    video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
    return video


def _write_video(out, video, seconds: float) -> None:
    import av

    for i in range(int(seconds * 10)):
        frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 10 % 256, np.uint8), format="rgb24")
        frame.pts = i
        out.mux(video.encode(frame))
    out.mux(video.encode(None))


def write_video_only(path: Path, seconds: float = 1.0) -> Path:
    """An MP4 with a video stream and no audio at all."""
    import av

    with av.open(str(path), "w", format="mp4") as out:
        _write_video(out, _add_video(out), seconds)
    return path


def damage(path: Path, how: str) -> Path:
    """A damaged copy beside ``path``: 'truncated' keeps the first 60 % of the bytes; 'corrupt' overwrites
    the middle half with noise (headers intact). Returns the copy's path."""
    data = bytearray(path.read_bytes())
    copy = path.with_name(f"{path.stem}.{how}{path.suffix}")
    if how == "truncated":
        data = data[: int(len(data) * 0.6)]
    else:
        start, end = len(data) // 4, 3 * len(data) // 4
        data[start:end] = np.random.default_rng(7).integers(0, 256, end - start, dtype=np.uint8).tobytes()
    copy.write_bytes(bytes(data))
    return copy
