"""The audio side of a request: its bytes (or local file) opened and checked, then encoded window by window on
the listener thread, while the scheduler thread decodes other requests' answers.

One listener thread encodes requests in arrival order; ONNX Runtime releases the GIL, so its encoders run
at the same time as llama.cpp's decode steps, or take turns with them where both would share too few cores
(cores.py). Each window goes to the request's own queue (two windows at most, so a long song holds little
memory) and the scheduler prefills it when its turn comes. The embedding cache (``--cache-dir``) is the
CLI's: the same song sent twice is encoded once.
"""

from __future__ import annotations

import io
import queue
import threading
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from ..audio import AudioStream, open_audio
from ..embed import AudioLayout, WindowEmbedding, embed_windows
from ..embed_cache import EmbeddingCache
from ..timings import StageTimes
from ..cores import Cores
from .protocol import AudioInput, Limits, RequestError

WINDOWS_AHEAD = 2  # encoded windows a request may hold before the scheduler has prefilled them


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


@dataclass
class Heard:
    """The end of a request's audio: windows encoded, windows read from the cache, seconds of audio."""

    windows: int
    cached: int
    seconds: float


class Listening:
    """One request's audio on its way through the encoders. The scheduler reads :meth:`ready` items:
    WindowEmbedding, then a Heard at the end (or the exception that stopped it)."""

    def __init__(self, stream: AudioStream, max_seconds: float, where: str, wake: Callable[[], None]):
        self.stream, self.max_seconds, self.where, self._wake = stream, max_seconds, where, wake
        self.out: queue.Queue = queue.Queue(maxsize=WINDOWS_AHEAD)
        self.cancelled = threading.Event()

    def ready(self):
        """The next item if one is there, else None (never blocks)."""
        try:
            return self.out.get_nowait()
        except queue.Empty:
            return None

    def _put(self, item) -> bool:
        """Hand ``item`` to the scheduler; False when the request was cancelled meanwhile."""
        while not self.cancelled.is_set():
            try:
                self.out.put(item, timeout=0.05)
                self._wake()
                return True
            except queue.Full:
                continue
        return False

    def _blocks(self) -> Iterator[np.ndarray]:
        """The stream's blocks, refused past ``max_seconds`` (a stream that did not declare its length)."""
        rate, seen = self.stream.target_rate, 0
        for block in self.stream:
            seen += block.size
            if seen > self.max_seconds * rate:
                raise RequestError(413, f"{self.where}: audio longer than this server's --max-audio-seconds "
                                   f"{self.max_seconds:g}", self.where)
            yield block


class Listener:
    """The listener thread: encodes each submitted :class:`Listening` in turn, one window per turn on ``cores``."""

    def __init__(self, backend, layout: AudioLayout, cache: EmbeddingCache | None, cores: Cores | None = None):
        self.backend, self.layout, self.cache = backend, layout, cache
        self.cores = cores or Cores(shared=False)
        self._todo: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="gamma-rt-listener", daemon=True)
        self._thread.start()

    def submit(self, listening: Listening) -> None:
        self._todo.put(listening)

    def close(self) -> None:
        self._todo.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            listening = self._todo.get()
            if listening is None:
                return
            try:
                self._encode(listening)
            except Exception as e:  # handed to the scheduler, which answers the request with it
                listening._put(e)
            finally:
                listening.stream.close()

    def _encode(self, listening: Listening) -> None:
        if listening.cancelled.is_set():
            return
        windows, seconds = 0, 0.0
        times = StageTimes()
        encoded = embed_windows(listening._blocks(), self.backend, self.layout, times, self.cache, overlap=False)
        while True:
            with self.cores.turn():  # reading, front end and graphs of one window; never the wait in _put
                window = next(encoded, None)
            if window is None:
                break
            windows, seconds = windows + 1, window.end_s
            if not listening._put(window):
                encoded.close()
                return
        cached = windows - times.calls.get("front_end", 0)  # a window read from the cache skips the front end
        listening._put(Heard(windows, cached, seconds))


__all__ = ["Heard", "Listener", "Listening", "WindowEmbedding", "open_request_audio"]
