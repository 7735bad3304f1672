"""The audio side of a job: its stream encoded window by window on the listener thread, while the scheduler
thread decodes other jobs' answers.

One listener thread encodes jobs in arrival order; ONNX Runtime releases the GIL, so its encoders run
at the same time as llama.cpp's decode steps, or take turns with them where both would share too few cores
(cores.py). Each window goes to the job's own queue (two windows at most, so a long song holds little
memory) and the scheduler prefills it when its turn comes. The embedding cache (``--cache-dir``) is the
CLI's: the same song sent twice is encoded once.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from gamma_rt.errors import AudioError

from ..audio import AudioStream
from ..embed import AudioLayout, WindowEmbedding, embed_windows
from ..embed_cache import EmbeddingCache
from ..timings import StageTimes
from ..cores import Cores

WINDOWS_AHEAD = 2  # encoded windows a job may hold before the scheduler has prefilled them


class AudioTooLong(AudioError):
    """A stream that did not declare its length ran past the job's ``max_seconds``."""

    status = 413


@dataclass
class Heard:
    """The end of a job's audio: windows encoded, windows read from the cache, seconds of audio, and the ms
    of each audio stage the listener ran for it (front end, ...)."""

    windows: int
    cached: int
    seconds: float
    stages_ms: dict[str, float] = field(default_factory=dict)


class Listening:
    """One job's audio on its way through the encoders. The scheduler reads :meth:`ready` items:
    WindowEmbedding, then a Heard at the end (or the exception that stopped it)."""

    def __init__(self, stream: AudioStream, max_seconds: float | None, where: str, wake: Callable[[], None]):
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
        """Hand ``item`` to the scheduler; False when the job was cancelled meanwhile."""
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
            if self.max_seconds is not None and seen > self.max_seconds * rate:
                raise AudioTooLong(f"{self.where}: audio longer than this server's --max-audio-seconds "
                                   f"{self.max_seconds:g}")
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
            except Exception as e:  # handed to the scheduler, which fails the job with it
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
        listening._put(Heard(windows, cached, seconds, {stage: ms for stage, ms, _ in times.rows()}))


__all__ = ["AudioTooLong", "Heard", "Listener", "Listening", "WindowEmbedding"]
