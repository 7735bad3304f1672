"""``gamma-rt tag --in-flight N``: N songs in flight on the runtime's batching engine (runtime/engine/).

One model serves the run. Each track is one job of the engine: its prompt head and audio are prefilled on one
sequence, and each prompt of the set forks that prefix onto a sequence of its own, as ``Pipeline.ask`` does
for one song. The decode steps of every song in flight go in one llama.cpp batch, and one song's windows and
prefill interleave with the others' steps (scheduler.py).

The KV cache is sized when the run starts, for N songs as long as the longest of the first tracks. It is
one of two layouts (:func:`per_sequence_cells`):

- one pool of cells for the songs in flight, a song's questions sharing its audio's cells: a longer song
  later waits until there is room for it. So it is with one song in flight, and where llama.cpp runs flash
  attention (an F16 cache: a quantized or F16 GGUF), which skips the cells of other sequences;
- cells of its own for each question (llama.cpp's streams), the song's audio prefix copied from its first
  question's to the others' (a copy of the KV buffer, no evaluation). So it is with N > 1 songs and an F32
  cache (an all-F32 GGUF, where flash attention is off for exact parity): there attention computes every cell
  in use, masked or not, so in one shared pool a song's prefill reads the other songs' cells too. Measured on
  the small preset, 2 cores: 1,024 embeddings prefilled in 7.2 s alone, 30.9 s beside 7 other songs of 900
  cells in one pool, 6.9 s with cells per sequence. A song longer than the first ones does not fit a
  sequence's cells.

A song too long for the pool (or for a sequence's cells) is tagged at the end, alone, on a pipeline of its
own size (worker.TrackTagger).

Memory per song in flight: its KV cells (prompt head, audio tokens, every prompt's question and max_tokens,
the head and audio once per question with cells per sequence; :meth:`InFlight.song_cells`), its decoded
audio (up to 20 min of 16 kHz float32 is held; longer tracks stream from disk) and two encoded windows. The
default N (:func:`default_in_flight`) is what half the free memory holds, at most 4 per core and
:data:`MAX_IN_FLIGHT`.

With ``--timeout-per-minute`` a song shares the machine with up to N - 1 others, so it is allowed N times its
one-at-a-time time, counted from when the engine takes it.
"""

from __future__ import annotations

import queue
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator

from gamma_rt.bundle_id import bundle_identity
from gamma_rt.errors import DiskFull, GammaError, is_disk_full
from gamma_rt.machine import available_cores

from ..audio import AudioStream, AudioTimeout
from ..cores import Cores, cores_shared
from ..decoder import DecoderSession
from ..engine.events import Done, Failed, Piece
from ..engine.job import Branch, Job, Plan, audio_windows, cells_needed
from ..engine.listen import Listener
from ..engine.scheduler import Scheduler
from ..options import RuntimeOptions
from ..sampling import Sampling
from .library import Track
from .prompt_sets import PromptSet
from .segment import Segment
from .worker import (Decoded, TrackTagger, TrackTimeout, answered, decode, late_message, new_record, timeout_for,
                     track_audio, track_error)

MAX_IN_FLIGHT = 8  # the default at most (--in-flight sets more): bounds the pool and the per-song latency
MAX_SEQUENCES = 256  # llama.cpp's LLAMA_MAX_SEQ
MIN_SONG_SECONDS = 30.0  # the pool holds at least one window per song
MAX_SONG_SECONDS = 600.0  # past this the pool is sized for 10-minute songs and longer ones wait for room


def free_memory_bytes() -> int | None:
    """MemAvailable of /proc/meminfo, None where there is none."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def per_sequence_cells(n: int | None, flash_attention: bool) -> bool:
    """Whether N songs in flight get KV cells per question (module docstring): only with more than one song
    (None: the default, which is more than one unless memory holds one) and no flash attention."""
    return not flash_attention and n != 1


def default_in_flight(bytes_per_song: int, n_prompts: int, cores: int | None = None, free: int | None = None) -> int:
    """Songs in flight by default: as many as half the free memory holds KV cells for, at most 4 per core,
    :data:`MAX_IN_FLIGHT`, and the sequences llama.cpp has (one per prompt per song)."""
    cores = cores or available_cores()
    free = free if free is not None else free_memory_bytes()
    by_memory = MAX_IN_FLIGHT if free is None else free // 2 // max(1, bytes_per_song)
    return max(1, min(4 * cores, MAX_IN_FLIGHT, MAX_SEQUENCES // max(1, n_prompts), by_memory))


class SongJob(Job):
    """One track as a job of the engine: one branch per prompt, the answers' text gathered as it comes."""

    def __init__(self, item: Decoded, audio: AudioStream, plan: Plan, done: "queue.Queue[SongJob]"):
        super().__init__(audio, self._on_event)
        self.item, self.plan, self._done = item, plan, done
        self.where = item.track.path
        self.texts = [[] for _ in plan.branches]
        self.open = len(plan.branches)
        self.failure: Failed | None = None
        self.heard = None
        self.started = time.perf_counter()

    def make_plan(self, session, prompt, layout) -> Plan:
        return self.plan  # planned by the run from tokens counted once (the pool is sized from them)

    def on_heard(self, heard) -> None:
        self.heard = heard

    def _on_event(self, event) -> None:  # on the scheduler thread
        if isinstance(event, Piece):
            self.texts[event.branch].append(event.text)
        elif isinstance(event, Done):
            self.open -= 1
            if self.open == 0:
                self._done.put(self)
        elif isinstance(event, Failed):
            self.failure = event
            self._done.put(self)


class InFlight:
    """One pipeline's audio backend and decoder, shared by up to ``n`` songs at once (None: the default)."""

    def __init__(self, bundle: str | Path, prompt_set: PromptSet, options: RuntimeOptions, n: int | None,
                 song_seconds: float, job_key: str | None = None, timeout_per_minute: float | None = None):
        from ..pipeline import Pipeline

        self.bundle, self.prompt_set, self.options = Path(bundle), prompt_set, options
        self.job_key = job_key or prompt_set.hash
        self.timeout_per_minute = timeout_per_minute
        self.bundle_hash = bundle_identity(bundle)
        self.pipeline = pipe = Pipeline.open(bundle, options)
        self._done: queue.Queue[SongJob] = queue.Queue()
        base = dict(prompt_set.sampling)
        samplings = [Sampling(**base, grammar=p.grammar) for p in prompt_set.prompts]
        self.head = pipe.tokens(pipe.prompt.head())
        self.branches = [Branch(pipe.tokens(pipe.prompt.tail(p.question)), s, p.max_tokens, pipe.prompt.stop)
                         for p, s in zip(prompt_set.prompts, samplings)]
        self.song_seconds = min(MAX_SONG_SECONDS, max(MIN_SONG_SECONDS, song_seconds))
        k, cell_bytes = len(self.branches), pipe.session.kv_bytes_per_cell
        self.own_cells = per_sequence_cells(n, pipe.session.flash_attention)
        self.n = n or default_in_flight(self._pool_cells(self.song_seconds) * cell_bytes, k)
        if self.own_cells and self.n == 1:  # the default came to one song: one pool, the prefix shared
            self.own_cells = False
        per_song = self._pool_cells(self.song_seconds)
        pipe.session.close()  # Pipeline.open sized one for a single song
        pipe.session = DecoderSession(pipe.decoder_file, n_ctx=self.n * per_song, n_threads=options.threads,
                                      n_gpu_layers=options.gpu_layers, n_seq_max=self.n * k,
                                      shared_cells=not self.own_cells, lora=pipe.lora_file,
                                      kv_type=options.kv_type)
        self.bytes_per_song = per_song * pipe.session.kv_bytes_per_cell
        cores = Cores(cores_shared(pipe.backend.name, pipe.session.gpu_layers, options.threads))
        self.listener = Listener(pipe.backend, pipe.layout, pipe.cache, cores, batch=options.batch_windows)
        self.scheduler = Scheduler(pipe.session, pipe.prompt, pipe.layout, self.listener, max_queue=0)

    def describe(self) -> str:
        """One line: songs in flight and the memory each takes."""
        later = ("cells per question, the audio copied to each; a longer one is tagged at the end" if self.own_cells
                 else "a longer one waits for room")
        return (f"{self.n} songs in flight, {self.bytes_per_song / 2**20:.0f} MiB of KV cells each (songs up to "
                f"{self.song_seconds:.0f} s; {later})")

    def song_cells(self, seconds: float) -> int:
        """KV cells one song of ``seconds`` analysed may need: head, audio, every question and answer (the head
        and audio once per question with cells per sequence)."""
        windows = audio_windows(seconds, self.pipeline.layout)
        return cells_needed(self.head, self.branches, windows, self.pipeline.layout,
                            shared_cells=not self.own_cells)[0]

    def _question_cells(self, seconds: float) -> int:
        """Cells the longest question of a song of ``seconds`` needs on a sequence of its own (prefix copied)."""
        windows = audio_windows(seconds, self.pipeline.layout)
        return cells_needed(self.head, self.branches, windows, self.pipeline.layout, shared_cells=False)[1]

    def _pool_cells(self, seconds: float) -> int:
        """Cells the pool holds per song of ``seconds``: with cells per sequence, each question's sequence gets
        the longest one's, rounded up to llama.cpp's 256 (its share of n_ctx must be whole)."""
        if not self.own_cells:
            return -(-self.song_cells(seconds) // 256) * 256
        return len(self.branches) * -(-self._question_cells(seconds) // 256) * 256

    def fits(self, item: Decoded) -> bool:
        seconds = item.analysed_s or MAX_SONG_SECONDS
        if self.own_cells:
            return self._question_cells(seconds) <= self.pipeline.session.cells_per_sequence
        return self.song_cells(seconds) <= self.pipeline.session.n_ctx

    def submit(self, item: Decoded) -> None:
        """Start ``item`` (decoded, and fitting the pool) on the engine."""
        need = self.song_cells(item.analysed_s or MAX_SONG_SECONDS)
        job = SongJob(item, self._audio(item), Plan(self.head, self.branches, need), self._done)
        self.scheduler.submit(job)

    def finished(self, timeout: float) -> SongJob | None:
        try:
            return self._done.get(timeout=timeout)
        except queue.Empty:
            return None

    def record(self, job: SongJob) -> dict:
        """The record of a finished job (records.py has its fields)."""
        item = job.item
        record = new_record(item, self.bundle_hash, self.job_key)
        if job.failure is not None:
            cause = job.failure.cause
            if isinstance(cause, DiskFull) or (cause is not None and is_disk_full(cause)):
                raise cause  # not this track's fault: the run stops, and the track is asked again on resume
            if isinstance(cause, AudioTimeout):
                cause = TrackTimeout(str(cause))
            record["error"] = track_error(item.track, cause) if cause is not None else job.failure.message
            return record
        limit = self._limit(item)
        took = item.decode_s + time.perf_counter() - job.started
        if limit is not None and took > limit:  # the answers' decode cannot be cut short: judge it after
            record["error"] = f"TrackTimeout: {late_message(item, took, limit, self.timeout_per_minute, self.n)}"
            return record
        info = {}
        if job.heard is not None:
            info = {f"{stage}_ms": round(ms, 2) for stage, ms in job.heard.stages_ms.items()}
            info["cached_windows"] = job.heard.cached
        return answered(record, self.prompt_set, ["".join(t) for t in job.texts], info, job.started)

    def _limit(self, item: Decoded) -> float | None:
        if self.timeout_per_minute is None:
            return None
        return self.n * timeout_for(item.analysed_s, self.timeout_per_minute)

    def _audio(self, item: Decoded) -> AudioStream:
        """The audio to ask about, as a stream that stops at the track's deadline when there is one."""
        stream = track_audio(item)
        limit = self._limit(item)
        if limit is None:
            return stream
        message = late_message(item, None, limit, self.timeout_per_minute, self.n)
        return stream.until(time.perf_counter() + limit - item.decode_s, message)

    def close(self) -> None:
        self.scheduler.close()
        self.listener.close()
        self.pipeline.close()

    def __enter__(self) -> "InFlight":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_in_flight(tracks: Iterable[Track], open_engine: Callable[[float], InFlight],
                  make_tagger: Callable[[], TrackTagger], prefetch: int, stop,
                  segment: Segment | None = None, on_open: Callable[[str], None] | None = None) -> Iterator[dict]:
    """Records of ``tracks`` as they finish, up to the engine's N songs in flight. ``open_engine(seconds)``
    opens the engine sized for songs of ``seconds``, the longest of the first tracks; ``make_tagger`` opens
    the one-at-a-time pipeline for songs too long for its pool (tagged last)."""
    queue_ = iter(tracks)
    ahead: deque[Future] = deque()
    too_long: list[Track] = []  # not their decoded audio: it could be a library's worth
    with ThreadPoolExecutor(max(1, prefetch), thread_name_prefix="decode") as decoders:
        def fill(k: int) -> None:
            while not stop and len(ahead) < k:
                track = next(queue_, None)
                if track is None:
                    return
                ahead.append(decoders.submit(decode, track, segment))

        fill(MAX_IN_FLIGHT)
        lengths = [d.analysed_s for d in (f.result() for f in ahead) if d.error is None and d.analysed_s]
        with open_engine(max(lengths, default=MIN_SONG_SECONDS)) as engine:
            if on_open:
                on_open(engine.describe())
            yield from _drive(engine, ahead, fill, prefetch, stop, too_long)
    if too_long and not stop:
        tagger = make_tagger()
        try:
            for track in too_long:
                if stop:
                    break
                yield tagger.tag(decode(track, segment))
        finally:
            tagger.pipeline.close()


def _drive(engine: InFlight, ahead: deque, fill: Callable[[int], None], prefetch: int, stop,
           too_long: list[Track]) -> Iterator[dict]:
    """Keep the engine's N songs in flight from the decoded tracks ``ahead``; records as songs finish."""
    running = 0
    while True:
        fill(engine.n + prefetch)
        while not stop and running < engine.n and ahead and (running == 0 or ahead[0].done()):
            item = ahead.popleft().result()
            if item.error:
                yield new_record(item, engine.bundle_hash, engine.job_key)
            elif not engine.fits(item):
                too_long.append(item.track)
            else:
                try:
                    engine.submit(item)
                except GammaError as e:  # refused before it took a sequence (Scheduler.submit): this track only
                    record = new_record(item, engine.bundle_hash, engine.job_key)
                    record["error"] = track_error(item.track, e)
                    yield record
                    continue
                running += 1
            fill(engine.n + prefetch)
        if stop:  # drop what has not started; what has, finishes and is journaled
            while ahead:
                ahead.popleft().cancel()
        if running == 0 and not ahead:
            return
        job = engine.finished(timeout=0.05 if ahead and running < engine.n else 0.5)
        if job is not None:
            running -= 1
            yield engine.record(job)
