"""The audio side of a job: its stream encoded window by window on the listener thread, while the scheduler
thread decodes other jobs' answers.

One listener thread encodes jobs in arrival order; ONNX Runtime releases the GIL, so its encoders run
at the same time as llama.cpp's decode steps, or take turns with them where both would share too few cores
(cores.py). Each window goes to the job's own queue (two windows at most, so a long song holds little
memory) and the scheduler prefills it when its turn comes. The embedding cache (``--cache-dir``) is the
CLI's: the same song sent twice is encoded once.

With ``batch`` > 1 (``--batch-windows``) the listener keeps up to that many jobs open at once and encodes one
window of each in one backend call, so a GPU sees several songs' windows together. The embeddings are the
same as one window at a time (a window's tokens do not depend on the others in the call). If the call
fails, its windows are encoded again one by one, so only the job whose window is refused fails.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from gamma_rt.errors import AudioError

from ..audio import AudioStream
from ..embed import AudioLayout, WindowEmbedding, cut_windows, embed_windows, encode_window_batch
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

    @classmethod
    def of(cls, windows: int, seconds: float, times: StageTimes) -> "Heard":
        cached = windows - times.calls.get("front_end", 0)  # a window read from the cache skips the front end
        return cls(windows, cached, seconds, {stage: ms for stage, ms, _ in times.rows()})


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


@dataclass
class _Open:
    """A job the batched listener has started: its windows still to cut, and what it has had so far."""

    listening: Listening
    cut: Iterator
    times: StageTimes
    windows: int = 0
    seconds: float = 0.0
    last: object = None  # its Heard or the exception that stopped it, handed over once its queue has room


class Listener:
    """The listener thread: encodes each submitted :class:`Listening` in turn, one window per turn on ``cores``;
    with ``batch`` > 1, one window of each of up to ``batch`` jobs per backend call."""

    def __init__(self, backend, layout: AudioLayout, cache: EmbeddingCache | None, cores: Cores | None = None,
                 batch: int = 1):
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        self.backend, self.layout, self.cache, self.batch = backend, layout, cache, batch
        self.cores = cores or Cores(shared=False)
        self._todo: queue.Queue = queue.Queue()
        target = self._run if batch == 1 else self._run_batched
        self._thread = threading.Thread(target=target, name="gamma-rt-listener", daemon=True)
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
        listening._put(Heard.of(windows, seconds, times))

    # --- batch > 1: windows of several jobs in one backend call ---

    def _run_batched(self) -> None:
        jobs: list[_Open] = []
        closing = False
        while True:
            while not closing and len(jobs) < self.batch:  # take new jobs while there is room
                try:
                    item = self._todo.get(block=not jobs)
                except queue.Empty:
                    break
                if item is None:
                    closing = True
                    break
                times = StageTimes()
                jobs.append(_Open(item, cut_windows(item._blocks(), self.layout, times), times))
            if not jobs:
                if closing:
                    return
                continue
            gathered = self._gather(jobs)
            if gathered:
                self._encode_gathered(gathered)
            settled = self._settle(jobs)
            if not gathered and not settled:  # every open job's queue is full: let the scheduler take some
                threading.Event().wait(0.01)

    def _gather(self, jobs: list[_Open]) -> list[tuple[_Open, object]]:
        """The next window of each open job whose queue has room, read from its stream."""
        gathered = []
        for job in jobs:
            if job.last is not None or job.listening.cancelled.is_set() or job.listening.out.full():
                continue
            try:
                with self.cores.turn():
                    window = next(job.cut, None)
            except Exception as e:  # a corrupt file, a stream that ran too long: this job only
                job.last = e
                continue
            if window is None:
                job.last = Heard.of(job.windows, job.seconds, job.times)
                continue
            gathered.append((job, window))
        return gathered

    def _encode_gathered(self, gathered: list[tuple[_Open, object]]) -> None:
        """One backend call for the gathered windows; if it fails, one call per window, so that only the jobs
        whose windows are refused fail."""
        try:
            with self.cores.turn():
                embedded = encode_window_batch([(w, job.times) for job, w in gathered], self.backend, self.layout,
                                               self.cache)
        except Exception as error:
            if len(gathered) == 1:
                gathered[0][0].last = error
                return
            for job, window in gathered:
                try:
                    with self.cores.turn():
                        one = encode_window_batch([(window, job.times)], self.backend, self.layout, self.cache)
                except Exception as e:
                    job.last = e
                    continue
                self._hand(job, one[0])
            return
        for (job, _), window in zip(gathered, embedded):
            self._hand(job, window)

    @staticmethod
    def _hand(job: _Open, window: WindowEmbedding) -> None:
        # the queue had room when the window was gathered, and only this thread puts into it: never waits
        job.windows, job.seconds = job.windows + 1, window.end_s
        job.listening._put(window)

    def _settle(self, jobs: list[_Open]) -> bool:
        """Jobs that are done leave: each hands over its Heard or error once its queue has room (never waiting,
        so one job whose windows the scheduler has not taken yet holds up no other). True if any left."""
        left = False
        for job in list(jobs):
            cancelled = job.listening.cancelled.is_set()
            if not cancelled and (job.last is None or job.listening.out.full()):
                continue
            if not cancelled:
                job.listening._put(job.last)
            close = getattr(job.cut, "close", None)
            if close:
                close()
            job.listening.stream.close()
            jobs.remove(job)
            left = True
        return left


__all__ = ["AudioTooLong", "Heard", "Listener", "Listening", "WindowEmbedding"]
