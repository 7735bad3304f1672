"""A request's song opened from its bytes (or local file) and checked before anything is queued."""

from __future__ import annotations

import io

from ..audio import AudioStream, open_audio
from .protocol import AudioInput, Limits, RequestError


class _NamedBytes(io.BytesIO):
    """Request bytes with a name, so an AudioError names the request field (``messages[0].content[1]...``)."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self.name = name


def open_request_audio(audio: AudioInput, sample_rate: int, limits: Limits) -> AudioStream:
    """The request's audio, opened: AudioError when it does not decode, RequestError 413 past the length limit.

    Opening reads only the header, so this runs in the request handler and the client hears of a bad file
    before anything is queued."""
    source = _NamedBytes(audio.data, audio.where) if audio.data is not None else audio.path
    stream = open_audio(source, sample_rate)
    duration = stream.info.duration_s
    if duration is not None and duration > limits.max_audio_seconds:
        stream.close()
        raise RequestError(413, f"{audio.where}: {duration:.1f} s of audio is longer than this server's "
                           f"--max-audio-seconds {limits.max_audio_seconds:g}", audio.where)
    return stream
