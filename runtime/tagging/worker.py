"""The per-track work of a tagging run: decode a track, ask the prompt set about it, build its record.

Both halves run off the driver: :func:`decode` on CPU prefetch threads (local engine) or in a Ray actor,
:class:`TrackTagger` wherever a pipeline lives. Neither touches the journal; the driver commits records.
A user-level problem with one track (undecodable audio, a file that cannot be read or is gone since it was
listed, an answer that does not parse, a timeout) becomes a ``status: failed`` record with its one-line
error; a full disk (DiskFull) stops the run, and anything else is a bug and propagates.

Two controls shape the work per track: a :class:`Segment` (only that span of the song is decoded and
asked about) and ``timeout_per_minute`` (seconds allowed per minute of audio analysed, decode included;
the audio is cut off at the next block once the time is up, and a late answer is not kept).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gamma_rt.errors import DiskFull, GammaError, is_disk_full
from gamma_rt.hashing import sha256_file

from gamma_rt.bundle_id import bundle_identity
from ..options import RuntimeOptions
from .library import Track
from .prompt_sets import PromptSet
from .schema_grammar import parse_answer
from .segment import Segment

# Tracks longer than this are not decoded ahead of time: the pipeline streams them from disk instead,
# so a 3-hour file never sits whole in the prefetch queue. 20 min at 16 kHz float32 is 77 MB.
PREFETCH_MAX_SECONDS = 20 * 60
# A track shorter than this is allowed the timeout of this many minutes (loading and answering cost a
# fixed time whatever the length).
TIMEOUT_FLOOR_MINUTES = 1.0


class TrackTimeout(GammaError):
    """A track took longer than its timeout (``--timeout-per-minute``)."""


@dataclass
class Decoded:
    """A track ready for the model: ``audio`` is (samples,) float32 mono 16 kHz, or None when the track is
    too long to hold (the pipeline reads ``track.path`` itself) or failed to decode (``error`` says why)."""

    track: Track
    content_sha256: str  # "" when the file could not be read
    duration_s: float | None  # the whole track's
    audio: np.ndarray | None
    error: str | None
    decode_s: float
    span: tuple[float, float] | None = None  # (start s, seconds) analysed, when a segment was asked for

    @property
    def analysed_s(self) -> float | None:
        return self.span[1] if self.span else self.duration_s


def decode(track: Track, segment: Segment | None = None) -> Decoded:
    """Hash and decode one track (16 kHz mono float32), only ``segment`` of it when given; a bad file
    gives ``error``, not an exception."""
    from ..audio import open_audio

    t0 = time.perf_counter()
    digest, span = "", None
    try:
        digest = sha256_file(track.path)
        with open_audio(track.path) as stream:
            duration = float(stream.info.duration_s)
            if segment is not None:
                span = segment.span(duration)
                stream = stream.clip(*span)
            audio = np.concatenate([np.asarray(b, np.float32).reshape(-1) for b in stream]) \
                if stream.info.duration_s <= PREFETCH_MAX_SECONDS else None
        if audio is not None and audio.size == 0:
            raise GammaError(f"{track.path}: no audio samples")
    except (GammaError, OSError) as e:
        return Decoded(track, digest, None, None, track_error(track, e), time.perf_counter() - t0, span)
    return Decoded(track, digest, duration, audio, None, time.perf_counter() - t0, span)


def track_error(track: Track, e: Exception) -> str:
    """The one-line error of a failed record: ``AudioError: /x.flac: ...``, ``FileNotFoundError: /x.flac:
    cannot read it (No such file or directory)``."""
    if isinstance(e, OSError):
        return f"{type(e).__name__}: {track.path}: cannot read it ({e.strerror or e})"
    return f"{type(e).__name__}: {e}"


def new_record(item: Decoded, bundle_hash: str, job_key: str) -> dict:
    """A track's record before it is asked about: failed with the decode error, or with none yet."""
    return {
        "path": item.track.path, "size": item.track.size, "mtime_ns": item.track.mtime_ns,
        "content_sha256": item.content_sha256, "duration_s": item.duration_s, "status": "failed",
        "error": item.error, "answers": {}, "timings": {"decode_s": round(item.decode_s, 4)},
        "bundle_hash": bundle_hash, "prompt_set_hash": job_key,
        "segment": None if item.span is None else {"start_s": round(item.span[0], 3),
                                                   "seconds": round(item.span[1], 3)},
    }


def answered(record: dict, prompt_set: PromptSet, texts: list[str], info: dict, t0: float) -> dict:
    """``record`` with the answers ``texts`` parsed (failed with the parse error if one does not), the
    timings ``info`` and the answer time since ``t0`` (perf_counter)."""
    try:
        record["answers"] = {p.name: parse_answer(t, p.schema, p.name) for p, t in zip(prompt_set.prompts, texts)}
    except GammaError as e:
        record["error"] = f"{type(e).__name__}: {e}"
        return record
    record["timings"].update(info, answer_s=round(time.perf_counter() - t0, 4))
    record.update(status="ok", error=None)
    return record


def track_audio(item: Decoded):
    """The audio of a decoded track as a stream: the decoded samples when they were kept, else the file
    (clipped to ``--segment``'s span)."""
    from ..audio import AudioStream, open_audio

    if item.audio is not None:
        return AudioStream.from_array(item.audio, name=item.track.path)
    stream = open_audio(item.track.path)
    return stream if item.span is None else stream.clip(*item.span)


def timeout_for(analysed_s: float | None, per_minute: float) -> float:
    """Seconds one track may take: ``per_minute`` per minute of audio analysed, at least one minute's."""
    minutes = max(TIMEOUT_FLOOR_MINUTES, (analysed_s or 0.0) / 60)
    return per_minute * minutes


def late_message(item: Decoded, took: float | None, limit: float, per_minute: float, shared: int = 1) -> str:
    """The error of a track past its ``limit`` (s); ``shared``: songs in flight it shared the machine with."""
    took_text = "more than" if took is None else f"{took:.1f} s >"
    minutes = (item.analysed_s or 0) / 60
    among = f", {shared} songs in flight" if shared > 1 else ""
    return (f"{item.track.path}: timed out ({took_text} {limit:.1f} s allowed: {per_minute:g} s "
            f"per minute of {minutes:.1f} min analysed{among})")


class TrackTagger:
    """One pipeline (one model instance) answering a prompt set about decoded tracks. ``options`` says how
    the pipeline runs (backend, precision, threads, GPU layers, embedding cache); the default runs on all
    cores with no cache."""

    def __init__(self, bundle: str | Path, prompt_set: PromptSet, options: RuntimeOptions | None = None,
                 job_key: str | None = None, timeout_per_minute: float | None = None):
        from ..pipeline import Pipeline
        from ..sampling import Sampling

        self.prompt_set = prompt_set
        self.job_key = job_key or prompt_set.hash  # the journal's prompt_set_hash: prompt set (+ segment)
        self.timeout_per_minute = timeout_per_minute
        self.options = options or RuntimeOptions()
        self.bundle_hash = bundle_identity(bundle)
        self.pipeline = Pipeline.open(bundle, self.options)
        base = {k: v for k, v in prompt_set.sampling.items()}
        self.samplings = [Sampling(**base, grammar=p.grammar) for p in prompt_set.prompts]

    def tag(self, item: Decoded) -> dict:
        """The record of one track (see records.py for its fields)."""
        record = new_record(item, self.bundle_hash, self.job_key)
        if item.error:
            return record
        t0 = time.perf_counter()
        try:
            texts, info = self._ask(item, t0)
        except DiskFull:
            raise  # not this track's fault: the run stops, and the track is asked again on resume
        except (GammaError, OSError) as e:  # OSError: a long track streamed from disk, unreadable now
            if is_disk_full(e):
                raise
            record["error"] = track_error(item.track, e)
            return record
        return answered(record, self.prompt_set, texts, info, t0)

    def _audio(self, item: Decoded, t0: float):
        """The audio to ask about, as a stream that stops at the track's deadline when there is one."""
        stream = track_audio(item)
        if self.timeout_per_minute is None:
            return stream
        limit = timeout_for(item.analysed_s, self.timeout_per_minute)
        if item.decode_s > limit:
            raise TrackTimeout(self._late(item, item.decode_s, limit))
        return stream.until(t0 + limit - item.decode_s, self._late(item, None, limit))

    def _late(self, item: Decoded, took: float | None, limit: float) -> str:
        return late_message(item, took, limit, self.timeout_per_minute)

    def _ask(self, item: Decoded, t0: float) -> tuple[list[str], dict]:
        """All prompts about one track: one encode, one audio prefill, the questions decoded together."""
        from ..audio import AudioTimeout

        audio = self._audio(item, t0)
        prompts = self.prompt_set.prompts
        cache = self.pipeline.cache
        hits = cache.hits if cache is not None else 0
        try:
            answers = self.pipeline.ask(audio, [p.question for p in prompts], sampling=self.samplings,
                                        max_tokens=[p.max_tokens for p in prompts])
        except AudioTimeout as e:
            raise TrackTimeout(str(e)) from None
        finally:
            audio.close()
        if self.timeout_per_minute is not None:  # the answers' decode cannot be cut short: judge it after
            took = item.decode_s + time.perf_counter() - t0
            limit = timeout_for(item.analysed_s, self.timeout_per_minute)
            if took > limit:
                raise TrackTimeout(self._late(item, took, limit))
        # per-stage ms of this ask (front end, encoders, prefill, question, decode) and the windows whose
        # embeddings came from the cache, so a re-run with a new prompt set shows it skipped the encoders
        info = {f"{stage}_ms": round(ms, 2) for stage, ms, _ in self.pipeline.times.rows()}
        info["cached_windows"] = (cache.hits - hits) if cache is not None else 0
        return [a.text for a in answers], info
