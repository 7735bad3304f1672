"""The job loop of a tagging run: walk a library, hand tracks to an engine, journal the results.

The driver is the only writer of the journal (see journal.py): it commits each record as it comes back, then
appends it to the result file. Engines only turn tracks into records:

- ``local``: decoding and hashing of the next tracks on CPU threads (a small prefetch window) while
  ``workers`` pipelines, one per thread, answer the current ones;
- ``ray``: the same on Ray actors (ray_actors.py).

Every pipeline is opened with the job's one :class:`RuntimeOptions`; only its cache folder is filled in
here (default ``OUT/embedding-cache``).

SIGINT: no new track is started, the ones being answered finish and are journaled, the run exits 130.
A second SIGINT interrupts at once (the journal is consistent either way); later ones are ignored while it exits.

A track that cannot be read, or is gone since the library was listed, gets a failed record like a file
that does not decode. A full disk stops the run with one line (DiskFull, exit code 2); every record
committed before it stays, and the same command resumes once there is space.

One run per results folder (run_lock.py). A dry run (``plan``) says what would be asked and why, and
writes nothing.
"""

from __future__ import annotations

import signal
import threading
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from queue import Queue
from typing import Callable, Iterable, Iterator

from gamma_rt.errors import DiskFull, GammaError, stop_on_full_disk
from gamma_rt.hashing import sha256_file

from gamma_rt.bundle_id import bundle_identity
from ..options import RuntimeOptions
from .journal import Journal
from .library import Track, walk
from .prompt_sets import PromptSet
from .records import RecordFile, results_path
from .run_lock import RunLock
from .segment import Segment
from .worker import TrackTagger, decode

JOURNAL_NAME = "journal.sqlite"
CACHE_NAME = "embedding-cache"


@dataclass
class TagJob:
    """What to tag, where the results go, and how the model runs."""

    library: Path  # folder searched recursively for audio files
    bundle: Path
    out: Path  # journal, result file and (by default) the embedding cache
    prompt_set: PromptSet
    fmt: str = "jsonl"  # result file: jsonl | csv | sqlite
    workers: int = 1  # model instances: threads (local) or Ray actors
    in_flight: int | None = None  # songs at once on one model's batching engine (workers 1, local); None: default
    prefetch: int = 2  # tracks decoded ahead on CPU threads (local engine)
    engine: str = "local"  # local | ray
    retry_failed: bool = False
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)  # cache_dir None: OUT/embedding-cache
    segment: Segment | None = None  # analyse only this span of each track (None: the whole track)
    timeout_per_minute: float | None = None  # seconds per minute of audio analysed (None: no timeout)
    wait: bool = False  # another run holds OUT: wait for it instead of exiting

    @property
    def key(self) -> str:
        """The journal's prompt_set_hash of this job: the prompt set, and the segment when there is one."""
        return job_key(self.prompt_set, self.segment)


def job_key(prompt_set: PromptSet, segment: Segment | None) -> str:
    return prompt_set.hash if segment is None else f"{prompt_set.hash}@{segment}"


@dataclass
class TagSummary:
    todo: int = 0
    done_before: int = 0
    ok: int = 0
    failed: int = 0
    interrupted: bool = False
    library_counts: dict = field(default_factory=dict)
    records_file: Path | None = None
    unlisted: list[str] = field(default_factory=list)  # folders that could not be listed, one line each


class Stop:
    """Set by SIGINT: finish what is in flight, start nothing new. A second SIGINT raises KeyboardInterrupt,
    and any later one is ignored: the way out (the engine stops after its current step, the journal closes)
    is short, and cut in the middle it would leave native threads running as Python exits (SIGABRT)."""

    def __init__(self):
        self.event = threading.Event()
        self.forced = False

    def __bool__(self) -> bool:
        return self.event.is_set()

    def install(self):
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = signal.getsignal(signal.SIGINT)

        def on_sigint(signum, frame):
            if not self.event.is_set():
                self.event.set()
                return
            self.forced = True
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # until the process ends
            raise KeyboardInterrupt  # a second Ctrl-C: stop now

        def restore():
            if not self.forced:
                signal.signal(signal.SIGINT, previous)

        signal.signal(signal.SIGINT, on_sigint)
        return restore


def pending_tracks(journal: Journal, tracks: Iterable[Track], b_hash: str, ps_hash: str,
                   retry_failed: bool, refresh: bool = True) -> tuple[list[tuple[Track, str]], int]:
    """Tracks without a record for this bundle + prompt set, each with why (journal.why_pending); and how
    many already have one."""
    todo, done = [], 0
    for t in tracks:
        reason = journal.why_pending(t, b_hash, ps_hash, retry_failed=retry_failed, refresh=refresh)
        if reason is None:
            done += 1
        else:
            todo.append((t, reason))
    return todo, done


def plan(job: TagJob, unlisted: Callable[[str], None] | None = None) -> tuple[list[tuple[Track, str]], int]:
    """What a run of ``job`` would ask, and why; writes nothing. Returns (to do with reasons, done);
    ``unlisted`` hears of each folder that cannot be listed."""
    from gamma_rt.manifest import Manifest

    Manifest.read(job.bundle)
    journal_path = Path(job.out) / JOURNAL_NAME
    tracks = walk(job.library, unlisted)
    if not journal_path.exists():
        return [(t, "new") for t in tracks], 0
    with Journal(journal_path) as journal:
        return pending_tracks(journal, tracks, bundle_identity(job.bundle), job.key, job.retry_failed, refresh=False)


def run_local(tracks: list[Track], make_tagger: Callable[[], TrackTagger], workers: int, prefetch: int,
              stop: Stop, segment: Segment | None = None) -> Iterator[dict]:
    """Records of ``tracks`` as they finish. ``workers`` pipelines, and up to ``workers + prefetch`` tracks
    decoded ahead on CPU threads."""
    taggers: Queue = Queue()
    for _ in range(workers):
        taggers.put(make_tagger())

    def answer(decoded: Future) -> dict:
        item = decoded.result()
        tagger = taggers.get()
        try:
            return tagger.tag(item)
        finally:
            taggers.put(tagger)

    window = workers + prefetch
    queue = iter(tracks)
    in_flight: deque[Future] = deque()
    with ThreadPoolExecutor(max(1, prefetch), thread_name_prefix="decode") as decoders, \
            ThreadPoolExecutor(workers, thread_name_prefix="model") as models:
        try:
            while True:
                while not stop and len(in_flight) < window:
                    track = next(queue, None)
                    if track is None:
                        break
                    in_flight.append(models.submit(answer, decoders.submit(decode, track, segment)))
                if not in_flight:
                    return
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED, timeout=0.5)
                for f in [f for f in in_flight if f in done]:
                    in_flight.remove(f)
                    yield f.result()
                if stop:  # drop what has not started; what has, finishes and is journaled
                    for f in list(in_flight):
                        if f.cancel():
                            in_flight.remove(f)
        finally:
            for f in in_flight:
                f.cancel()


def run(job: TagJob, on_record: Callable[[dict], None] | None = None,
        on_start: Callable[[list[Track]], None] | None = None,
        on_wait: Callable[[str], None] | None = None,
        on_engine: Callable[[str], None] | None = None) -> TagSummary:
    """One tagging run to the end (or to SIGINT). Returns the summary; the journal and the result file in
    ``job.out`` hold the records. Raises ResultsBusy when another run holds ``job.out`` (unless
    ``job.wait``: then ``on_wait`` hears why it waits). ``on_engine`` hears the songs in flight and their
    memory, once the batching engine is open."""
    from gamma_rt.manifest import Manifest

    if not Path(job.library).is_dir():  # the arguments in their order: LIBRARY_DIR, then --bundle
        raise GammaError(f"{job.library}: library folder not found (LIBRARY_DIR must be a folder of audio files)")
    Manifest.read(job.bundle)  # a missing or foreign bundle fails here, in one line, before any work
    try:
        with stop_on_full_disk(f"writing {job.out}"):
            return _run(job, on_record, on_start, on_wait, on_engine)
    except DiskFull as e:
        raise DiskFull(f"{e} to resume") from None  # "...; free space and rerun to resume"


def _run(job: TagJob, on_record, on_start, on_wait, on_engine) -> TagSummary:
    out = Path(job.out)  # created by RunLock, which says in one line when it cannot be
    b_hash, ps, key = bundle_identity(job.bundle), job.prompt_set, job.key
    options = job.runtime if job.runtime.cache_dir else job.runtime.replace(cache_dir=out / CACHE_NAME)
    summary = TagSummary(records_file=results_path(out, job.fmt))
    stop = Stop()
    with RunLock(out, job.wait, on_wait), Journal(out / JOURNAL_NAME) as journal:
        records = RecordFile(summary.records_file, job.fmt, [p.name for p in ps.prompts])
        records.rebuild(journal.records(b_hash, key))  # repairs a file torn by a killed run
        tracks = walk(job.library, summary.unlisted.append)
        pending, summary.done_before = pending_tracks(journal, tracks, b_hash, key, job.retry_failed)
        todo = [t for t, _ in pending]
        summary.todo = len(todo)
        if on_start:
            on_start(todo)
        if job.engine == "ray":
            from .ray_actors import run_ray

            results = run_ray(todo, job.bundle, ps, options, job.workers, stop, job.segment, job.timeout_per_minute,
                              key)
        elif job.workers == 1:
            results = _in_flight(job, todo, options, stop, on_engine)
        else:
            results = run_local(todo, lambda: TrackTagger(job.bundle, ps, options, key, job.timeout_per_minute),
                                job.workers, job.prefetch, stop, job.segment)
        restore = stop.install()
        try:
            for record in results:
                if journal.commit(record):
                    records.append(record)
                summary.ok += record["status"] == "ok"
                summary.failed += record["status"] == "failed"
                if on_record:
                    on_record(record)
        finally:
            results.close()  # on an error here (a full disk): drop the queued tracks, let the started ones end
            restore()
        summary.interrupted = bool(stop)
        records.rebuild(journal.records(b_hash, key))
        summary.library_counts = journal.counts(b_hash, key)
    return summary


def _in_flight(job: TagJob, todo: list[Track], options: RuntimeOptions, stop: Stop,
               on_engine: Callable[[str], None] | None) -> Iterator[dict]:
    """The local engine with one model: ``job.in_flight`` songs at once on the batching engine."""
    from .in_flight import InFlight, run_in_flight

    def open_engine(song_seconds: float) -> InFlight:
        return InFlight(job.bundle, job.prompt_set, options, job.in_flight, song_seconds, job.key,
                        job.timeout_per_minute)

    def one_at_a_time() -> TrackTagger:
        return TrackTagger(job.bundle, job.prompt_set, options, job.key, job.timeout_per_minute)

    return run_in_flight(todo, open_engine, one_at_a_time, job.prefetch, stop, job.segment, on_engine)


def write_file_tags(job: TagJob, dry_run: bool, report: Callable[[str], None]) -> int:
    """Write genre/mood/caption of every ok record not yet written (or, dry run, report the diff).
    Returns how many files failed."""
    from gamma_rt.errors import TagWriteError, is_disk_full

    from .file_tags import TagsUnsupported, plan, write_tags

    b_hash, ps = bundle_identity(job.bundle), job.prompt_set
    tagged = [p for p in ps.prompts if p.tag]
    failures = 0
    if not (Path(job.out) / JOURNAL_NAME).exists():
        return 0
    with Journal(Path(job.out) / JOURNAL_NAME) as journal:
        for record in journal.untagged(b_hash, job.key):
            values = {p.tag: p.tag_value(record["answers"].get(p.name)) for p in tagged}
            values = {k: v for k, v in values.items() if v is not None}
            path = record["path"]
            try:
                changes = (plan if dry_run else write_tags)(path, values)
                written = None if dry_run else (Track.stat(path), sha256_file(path))
            except TagsUnsupported as e:  # a format without writable tags is a fact, not a failure
                report(f"tags not written: {e}")
                continue
            except (TagWriteError, OSError) as e:
                if is_disk_full(e):
                    raise DiskFull(f"disk full: writing tags into {path} ({e.strerror}); free space and rerun") \
                        from None
                failures += 1
                report(f"tags not written: {e}" if isinstance(e, TagWriteError) else
                       f"tags not written: {path}: {e.strerror or e}")
                continue
            for name, old, new in changes:
                report(f"{path}: {name}: {old!r} -> {new!r}" + (" (dry run)" if dry_run else ""))
            if written:
                journal.mark_tags_written(record, *written)
    return failures
