"""Audio -> 30 s windows -> log-mel -> audio backend -> LLM embeddings, one window at a time.

:func:`embed_windows` yields a :class:`WindowEmbedding` as soon as each window's audio has arrived and
been encoded. With ``overlap`` the reading, front end and encoders run on a worker thread one window
ahead, so while the caller (the decoder) prefills window k the encoders already work on window k+1.
ONNX Runtime and llama.cpp both release the GIL, so the two really run at the same time. The queue
between them holds one window, which bounds memory for a file of any length.

``batch`` > 1 (whole files, tagging: where the caller does not need the first window before the next ones
are read) encodes up to that many windows in one backend call, which keeps a GPU busier; the windows are
still yielded one by one, in order, and the embeddings are the same as window by window.
"""

from __future__ import annotations

import itertools
import queue
import sys
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from gamma_rt.errors import BundleError
from gamma_rt.manifest import AudioSection
from gamma_rt.token_count import TokenRule

from .backends import AudioBackend
from .embed_cache import EmbeddingCache
from .fbank import KaldiFbank
from .mel import FrontEnd
from .timings import StageTimes
from .windows import Window, windows


@dataclass
class WindowEmbedding:
    """One window's LLM input: embeddings (n_tokens, n_embd) float32, padding tokens already dropped.

    start_s, end_s: the window's real audio in the source, seconds."""

    index: int
    start_s: float
    end_s: float
    embeddings: np.ndarray


# manifest audio.front_end -> the front end it names
FRONT_ENDS = {"whisper_mel": FrontEnd, "kaldi_fbank": KaldiFbank}


@dataclass(frozen=True)
class AudioLayout:
    """What the embedding path needs from the manifest's ``audio`` section."""

    sample_rate: int
    window_seconds: float
    tokens_per_window: int
    front_end: FrontEnd | KaldiFbank
    token_count: TokenRule = TokenRule()
    max_seconds: float | None = None

    @classmethod
    def from_manifest(cls, audio: AudioSection) -> "AudioLayout":
        return cls(audio.sample_rate, float(audio.window_seconds), audio.tokens_per_window,
                   FRONT_ENDS[audio.front_end].from_manifest(audio), audio.token_count, audio.max_seconds)

    @property
    def max_windows(self) -> int | None:
        """Windows the model takes at most (its processor cuts the audio after them), None for no limit."""
        if self.max_seconds is None:
            return None
        return max(1, int(self.max_seconds // self.window_seconds))


def _timed_blocks(blocks: Iterable[np.ndarray], times: StageTimes) -> Iterator[np.ndarray]:
    """Count time spent inside the audio reader (decode + resample) as the ``read`` stage."""
    it = iter(blocks)
    while True:
        t0 = time.perf_counter()
        try:
            block = next(it)
        except StopIteration:
            return
        finally:
            times.add("read", (time.perf_counter() - t0) * 1e3)
        yield block


def cut_windows(blocks: Iterable[np.ndarray], layout: AudioLayout, times: StageTimes) -> Iterator[Window]:
    """The stream's windows, in order, up to the model's limit (``audio.max_seconds``); the time spent reading
    goes to ``times`` as the ``read`` stage. Audio past the limit is not used, and the user is told."""
    cut = windows(_timed_blocks(blocks, times), layout.sample_rate, layout.window_seconds,
                  layout.front_end.lookahead)
    limit = layout.max_windows
    try:
        yield from itertools.islice(cut, limit)
        if limit is not None and next(cut, None) is not None:
            # as the model's own processor does
            print(f"gamma-rt: audio longer than the model's {layout.max_seconds:g} s (manifest audio.max_seconds); "
                  f"using the first {limit * layout.window_seconds:g} s", file=sys.stderr)
    finally:
        close = getattr(cut, "close", None)
        if close:
            close()


def _encode_windows(blocks: Iterable[np.ndarray], backend: AudioBackend, layout: AudioLayout, times: StageTimes,
                    cache: EmbeddingCache | None, batch: int = 1) -> Iterator[WindowEmbedding]:
    pending: list[Window] = []
    for window in cut_windows(blocks, layout, times):
        pending.append(window)
        if len(pending) == batch:
            yield from _encode_batch(pending, backend, layout, times, cache)
            pending = []
    yield from _encode_batch(pending, backend, layout, times, cache)


def window_feeds(window: Window, layout: AudioLayout) -> dict[str, np.ndarray]:
    """The values the audio chain reads, for one window: ``mel`` (1, n_mels, frames) float32,
    ``mel_mask`` (1, frames) int64 (1 where the frame holds real audio), ``window_index`` (1,) int64."""
    mel = layout.front_end(window.samples[None], window.n_valid, window.after)
    mask = np.zeros((1, mel.shape[-1]), np.int64)
    mask[0, :window.valid_frames(layout.front_end.hop_length)] = 1
    return {"mel": mel, "mel_mask": mask, "window_index": np.array([window.index], np.int64)}


def checked_embeddings(encoded, batch: list[Window], layout: AudioLayout, backend) -> np.ndarray:
    """``encoded`` (B, tokens_per_window, n_embd) float32, refused in one line otherwise: the audio graphs are
    untrusted, and a projector that returns 0 or 150,000 tokens, or NaN, must not reach the decoder."""
    where = f"{backend.name} audio graphs (the bundle's last audio component)"
    shape = getattr(encoded, "shape", ())
    want = (len(batch), layout.tokens_per_window)
    if len(shape) != 3 or tuple(shape[:2]) != want or shape[2] < 1:
        raise BundleError(f"{where} returned embeddings of shape {tuple(shape)} for {len(batch)} window(s); the "
                          f"manifest's audio.tokens_per_window says ({want[0]}, {want[1]}, n_embd)")
    finite = np.isfinite(encoded).all(axis=(1, 2))
    if not finite.all():
        window = batch[int(np.argmin(finite))]
        raise BundleError(f"{where} returned NaN or infinite embeddings for the window at {window.start_s:g} s")
    return encoded


def _encode_batch(batch: list[Window], backend: AudioBackend, layout: AudioLayout, times: StageTimes,
                  cache: EmbeddingCache | None) -> list[WindowEmbedding]:
    """The windows of ``batch`` in order; those not in the cache go through the backend in one call."""
    return encode_window_batch([(window, times) for window in batch], backend, layout, cache)


def encode_window_batch(batch: list[tuple[Window, StageTimes]], backend: AudioBackend, layout: AudioLayout,
                        cache: EmbeddingCache | None) -> list[WindowEmbedding]:
    """WindowEmbeddings of windows that may come from different streams (songs in flight), in order: each
    window's cache lookup and front end is timed on its own stream's StageTimes, and the windows not in the
    cache go through the backend in one call. A window's embeddings do not depend on the others in the call."""
    full: list[np.ndarray | None] = [None] * len(batch)
    keys: list = [None] * len(batch)
    if cache is not None:
        for i, (window, times) in enumerate(batch):
            with times.stage("cache"):
                audio = np.concatenate([window.samples, window.after]) if len(window.after) else window.samples
                keys[i] = cache.key(audio, window.index, window.n_valid)
                full[i] = cache.get(keys[i])
    todo = [i for i, f in enumerate(full) if f is None]
    if todo:
        per_window = []
        for i in todo:
            window, times = batch[i]
            with times.stage("front_end"):
                per_window.append(window_feeds(window, layout))
        feeds = {k: np.concatenate([f[k] for f in per_window]) for k in per_window[0]}
        encoded = checked_embeddings(backend.encode(feeds), [batch[i][0] for i in todo], layout, backend)
        for j, i in enumerate(todo):
            full[i] = encoded[j]
            if cache is not None:
                window, times = batch[i]
                with times.stage("cache"):
                    cache.put(keys[i], full[i])
    out = []
    for (window, _), embeddings in zip(batch, full):
        n = window.valid_tokens(layout.tokens_per_window, layout.token_count, layout.front_end.hop_length,
                                layout.sample_rate)
        out.append(WindowEmbedding(window.index, window.start_s, window.end_s, embeddings[:n]))
    return out


def embed_windows(blocks: Iterable[np.ndarray], backend: AudioBackend, layout: AudioLayout,
                  times: StageTimes | None = None, cache: EmbeddingCache | None = None,
                  overlap: bool = True, batch: int = 1) -> Iterator[WindowEmbedding]:
    """WindowEmbeddings of a stream of 1-D float32 blocks at ``layout.sample_rate``, in order; ``batch``
    windows per backend call at most (1: each window as soon as it has arrived).

    Errors raised while reading or encoding (AudioError for a corrupt file, ...) reach the caller with
    their own type and traceback, whichever thread they happened on."""
    times = times if times is not None else StageTimes()
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    produce = _encode_windows(blocks, backend, layout, times, cache, batch)
    if not overlap:
        yield from produce
        return
    yield from _ahead(produce, getattr(backend, "interrupt", None))


_DONE = object()


def _ahead(items: Iterator, on_stop=None) -> Iterator:
    """Run ``items`` on a worker thread one item ahead of the consumer. ``on_stop``: called when the
    consumer stops (Ctrl-C, an error, enough items), to stop the worker's backend call in flight."""
    handoff: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def work():
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        handoff.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            handoff.put((_DONE, None))
        except BaseException as e:  # handed to the consumer, which re-raises it with its traceback
            handoff.put((_DONE, e))

    worker = threading.Thread(target=work, name="gamma-rt-encoder", daemon=True)
    worker.start()
    try:
        while True:
            item, error = handoff.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()  # the consumer stopped early (an error, or it had enough): let the worker finish
        if on_stop is not None and worker.is_alive():
            on_stop()
        while worker.is_alive():
            try:
                handoff.get(timeout=0.1)
            except queue.Empty:
                pass
        worker.join()
        close = getattr(items, "close", None)
        if close:
            close()
