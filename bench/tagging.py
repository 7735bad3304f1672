"""Songs per hour of `gamma-rt tag`'s per-track work on a bundle, with and without prefix reuse.

``songs_per_hour(bundle, tracks)`` times the model side of tagging (decode, encode, prefill, answers) on the
given audio files, twice, in the same run so the ratio holds on a noisy machine:

- ``with_prefix_reuse``: one ``Pipeline.ask`` per track with every prompt of the set, so the questions share
  one encode and one audio prefill (what ``gamma-rt tag`` does);
- ``without_prefix_reuse``: one ``ask`` per prompt, on a pipeline with no embedding cache, so every question
  pays its own encode and prefill (what a naive loop over questions costs).

Returns a JSON-ready dict: the two rates (songs/hour), their ratio, the audio hours per hour, the inputs and
the versions. The bench engineer calls it from bench/'s runner; it imports no torch.
"""

from __future__ import annotations

import time
from pathlib import Path

from gamma_rt.machine import describe


def songs_per_hour(bundle: str | Path, tracks: list[str | Path], prompt_set_path: str | Path | None = None,
                   backend: str = "auto", repeats: int = 1) -> dict:
    """Both rates over ``tracks`` (audio files), ``repeats`` passes each; see the module docstring."""
    import llama_cpp

    from gamma_rt.runtime.options import RuntimeOptions
    from gamma_rt.runtime.tagging.library import Track
    from gamma_rt.runtime.tagging.prompt_sets import PromptSet
    from gamma_rt.runtime.tagging.worker import TrackTagger, decode

    prompt_set = PromptSet.load(prompt_set_path) if prompt_set_path else PromptSet.default()
    items = [decode(Track.stat(t)) for t in tracks]
    bad = [i.track.path for i in items if i.error]
    if bad:
        raise ValueError(f"bench tracks must decode: {bad}")
    audio_hours = sum(i.duration_s for i in items) / 3600

    options = RuntimeOptions(backend=backend)  # no embedding cache: both rates pay for their encodes
    reuse = TrackTagger(bundle, prompt_set, options)
    t0 = time.perf_counter()
    for _ in range(repeats):
        for item in items:
            record = reuse.tag(item)
            if record["status"] != "ok":  # a failed track would time an error path, not tagging
                raise RuntimeError(f"bench track failed: {record['error']}")
    with_reuse_s = (time.perf_counter() - t0) / repeats

    single = TrackTagger(bundle, prompt_set, options)
    t0 = time.perf_counter()
    for _ in range(repeats):
        for item in items:
            for prompt, sampling in zip(prompt_set.prompts, single.samplings):
                single.pipeline.ask(item.audio, [prompt.question], sampling=[sampling],
                                    max_tokens=[prompt.max_tokens])
    without_reuse_s = (time.perf_counter() - t0) / repeats

    n = len(items)
    return {
        "bench": "tagging.songs_per_hour",
        "songs": n,
        "prompts": len(prompt_set.prompts),
        "prompt_set_hash": prompt_set.hash,
        "bundle": str(bundle),
        "with_prefix_reuse": {"seconds": with_reuse_s, "songs_per_hour": 3600 * n / with_reuse_s,
                              "audio_hours_per_hour": 3600 * audio_hours / with_reuse_s},
        "without_prefix_reuse": {"seconds": without_reuse_s, "songs_per_hour": 3600 * n / without_reuse_s},
        "speedup": without_reuse_s / with_reuse_s,
        "machine": describe(threads=0),  # the pipeline's default: all cores
        "versions": {"llama_cpp_python": llama_cpp.__version__},
    }
