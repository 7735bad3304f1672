"""The ``ray`` engine of ``gamma-rt tag``: one pipeline per Ray actor (per GPU where there are GPUs).

The driver keeps the journal semantics of the local engine: actors only turn tracks into records, and every
record comes back to the driver, which commits it to the journal exactly once (journal.commit ignores a
second delivery of the same result, e.g. after an actor restart retried a task). Tracks are read by the
actors from their own file system, so on several nodes the library must be mounted at the same path on
every node (see docs/tagging.md). The runtime options cross to the actors as plain values
(``RuntimeOptions.to_dict``), with the cache folder made absolute so every actor resolves the same one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from ..options import RuntimeOptions
from .library import Track
from .prompt_sets import PromptSet

# Tasks queued per actor beyond the one it is running: the next track is decoded by the actor's Ray
# scheduler queue while the current one is answered, without piling a library's worth of work on one node.
_QUEUED_PER_ACTOR = 1


def _actor_class():
    import ray

    @ray.remote(max_restarts=1, max_task_retries=1)
    class TagActor:
        """One model instance. Holds a TrackTagger for the whole run (the model loads once per actor)."""

        def __init__(self, bundle: str, prompt_set: PromptSet, options: dict, segment, timeout_per_minute, key):
            from gamma_rt.runtime.options import RuntimeOptions
            from gamma_rt.runtime.tagging.worker import TrackTagger

            self.segment = segment
            self.tagger = TrackTagger(bundle, prompt_set, RuntimeOptions.from_dict(options), key, timeout_per_minute)

        def tag(self, track: Track) -> dict:
            from gamma_rt.runtime.tagging.worker import decode

            record = self.tagger.tag(decode(track, self.segment))
            record["timings"]["worker"] = f"{os.uname().nodename}:{os.getpid()}"
            return record

    return TagActor


def run_ray(tracks: list[Track], bundle: Path, prompt_set: PromptSet, options: RuntimeOptions, workers: int,
            stop, segment=None, timeout_per_minute: float | None = None, key: str | None = None) -> Iterator[dict]:
    """Records of ``tracks`` from ``workers`` Ray actors, as they finish. Joins the cluster named by
    RAY_ADDRESS, or starts a local Ray instance. ``segment``, ``timeout_per_minute`` and the journal
    ``key`` are those of the TagJob."""
    try:
        import ray
    except ModuleNotFoundError:
        from gamma_rt.errors import GammaError

        raise GammaError("--engine ray needs Ray: pip install 'gamma-rt[ray]'") from None
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if not tracks:
        return
    gpu = ray.cluster_resources().get("GPU", 0) >= 1
    actor = _actor_class().options(num_gpus=1) if gpu else _actor_class().options(num_cpus=1)
    if options.cache_dir is not None:
        options = options.replace(cache_dir=options.cache_dir.resolve())
    actors = [actor.remote(str(Path(bundle).resolve()), prompt_set, options.to_dict(), segment, timeout_per_minute,
                           key)
              for _ in range(min(workers, len(tracks)))]
    queue = iter(tracks)
    owner: dict = {}  # ObjectRef -> actor index
    load = [0] * len(actors)
    try:
        while True:
            for i, a in enumerate(actors):
                while not stop and load[i] <= _QUEUED_PER_ACTOR:
                    track = next(queue, None)
                    if track is None:
                        break
                    owner[a.tag.remote(track)] = i
                    load[i] += 1
            if not owner:
                return
            ready, _ = ray.wait(list(owner), num_returns=1, timeout=0.5)
            for ref in ready:
                load[owner.pop(ref)] -= 1
                yield _result(ray, ref)
    finally:
        for a in actors:
            ray.kill(a)


def _result(ray, ref) -> dict:
    """One actor's record. A full disk on its node stops the run with the actor's one line, not Ray's
    remote traceback (every other actor error is a bug and keeps it)."""
    from gamma_rt.errors import DiskFull

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, DiskFull):
            raise DiskFull(str(e.cause)) from None
        raise
