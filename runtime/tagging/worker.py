"""The per-track work of a tagging run: decode a track, ask the prompt set about it, build its record.

Both halves run off the driver: :func:`decode` on CPU prefetch threads (local engine) or in a Ray actor,
:class:`TrackTagger` wherever a pipeline lives. Neither touches the journal; the driver commits records.
A user-level problem with one track (undecodable audio, an answer that does not parse) becomes a
``status: failed`` record with its one-line error; anything else is a bug and propagates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gamma_rt.errors import GammaError
from gamma_rt.hashing import sha256_file

from ..embed_cache import bundle_identity
from ..options import RuntimeOptions
from .library import Track
from .prompt_sets import PromptSet
from .schema_grammar import parse_answer

# Tracks longer than this are not decoded ahead of time: the pipeline streams them from disk instead,
# so a 3-hour file never sits whole in the prefetch queue. 20 min at 16 kHz float32 is 77 MB.
PREFETCH_MAX_SECONDS = 20 * 60


@dataclass
class Decoded:
    """A track ready for the model: ``audio`` is (samples,) float32 mono 16 kHz, or None when the track is
    too long to hold (the pipeline reads ``track.path`` itself) or failed to decode (``error`` says why)."""

    track: Track
    content_sha256: str
    duration_s: float | None
    audio: np.ndarray | None
    error: str | None
    decode_s: float


def decode(track: Track) -> Decoded:
    """Hash and decode one track (16 kHz mono float32); a bad file gives ``error``, not an exception."""
    from ..audio import open_audio

    t0 = time.perf_counter()
    digest = sha256_file(track.path)
    try:
        stream = open_audio(track.path)
        duration = float(stream.info.duration_s)
        audio = np.concatenate([np.asarray(b, np.float32).reshape(-1) for b in stream]) \
            if duration <= PREFETCH_MAX_SECONDS else None
        if audio is not None and audio.size == 0:
            raise GammaError(f"{track.path}: no audio samples")
    except GammaError as e:
        return Decoded(track, digest, None, None, f"{type(e).__name__}: {e}", time.perf_counter() - t0)
    return Decoded(track, digest, duration, audio, None, time.perf_counter() - t0)


class TrackTagger:
    """One pipeline (one model instance) answering a prompt set about decoded tracks. ``options`` says how
    the pipeline runs (backend, precision, threads, GPU layers, embedding cache); the default runs on all
    cores with no cache."""

    def __init__(self, bundle: str | Path, prompt_set: PromptSet, options: RuntimeOptions | None = None):
        from ..pipeline import Pipeline
        from ..sampling import Sampling

        self.prompt_set = prompt_set
        self.options = options or RuntimeOptions()
        self.bundle_hash = bundle_identity(bundle)
        self.pipeline = Pipeline.open(bundle, self.options)
        base = {k: v for k, v in prompt_set.sampling.items()}
        self.samplings = [Sampling(**base, grammar=p.grammar) for p in prompt_set.prompts]

    def tag(self, item: Decoded) -> dict:
        """The record of one track (see records.py for its fields)."""
        record = {
            "path": item.track.path, "size": item.track.size, "mtime_ns": item.track.mtime_ns,
            "content_sha256": item.content_sha256, "duration_s": item.duration_s, "status": "failed",
            "error": item.error, "answers": {}, "timings": {"decode_s": round(item.decode_s, 4)},
            "bundle_hash": self.bundle_hash, "prompt_set_hash": self.prompt_set.hash,
        }
        if item.error:
            return record
        t0 = time.perf_counter()
        try:
            texts, info = self._ask(item)
            record["answers"] = {p.name: parse_answer(t, p.schema, p.name)
                                 for p, t in zip(self.prompt_set.prompts, texts)}
        except GammaError as e:
            record["error"] = f"{type(e).__name__}: {e}"
            return record
        record["timings"].update(info, answer_s=round(time.perf_counter() - t0, 4))
        record.update(status="ok", error=None)
        return record

    def _ask(self, item: Decoded) -> tuple[list[str], dict]:
        """All prompts about one track: one encode, one audio prefill, the questions decoded together."""
        audio = item.audio if item.audio is not None else item.track.path
        prompts = self.prompt_set.prompts
        cache = self.pipeline.cache
        hits = cache.hits if cache is not None else 0
        answers = self.pipeline.ask(audio, [p.question for p in prompts], sampling=self.samplings,
                                    max_tokens=[p.max_tokens for p in prompts])
        # per-stage ms of this ask (front end, encoders, prefill, question, decode) and the windows whose
        # embeddings came from the cache, so a re-run with a new prompt set shows it skipped the encoders
        info = {f"{stage}_ms": round(ms, 2) for stage, ms, _ in self.pipeline.times.rows()}
        info["cached_windows"] = (cache.hits - hits) if cache is not None else 0
        return [a.text for a in answers], info
