"""Songs per hour with several questions per song: prefix reuse against one song per question, via ``Pipeline.ask``.

- ``with_prefix_reuse``: one ``ask`` per song with all its questions. The song is encoded and prefilled once;
  the questions fork the audio prefix and decode as parallel sequences.
- ``without_prefix_reuse``: one ``ask`` per question, on a pipeline with no embedding cache, so every question
  pays for the song's encode and prefill again (what a loop of single-question calls costs).

Both run on one opened Pipeline (same threads, decoder and backend), alternating song by song so load that
drifts on a shared machine hits both. Greedy answers of the same ``max_tokens`` make both modes decode the same
tokens. (bench/tagging.py measures the same through `gamma-rt tag`'s own per-track worker.)
"""

from __future__ import annotations

import time
from pathlib import Path

QUESTIONS = (
    "What is the genre of this piece?",
    "What is the mood of this piece?",
    "Which instruments can you hear?",
    "What is the tempo, in beats per minute?",
    "Is there singing? If so, describe the voice.",
)


def songs_per_hour(pipe, tracks: list[str | Path], questions: int, max_tokens: int) -> dict:
    """Both rates over ``tracks`` (audio files) with the first ``questions`` of QUESTIONS; a JSON-ready dict."""
    if not 1 <= questions <= len(QUESTIONS):
        raise ValueError(f"questions must be 1..{len(QUESTIONS)}, got {questions}")
    asked = list(QUESTIONS[:questions])
    seconds = {"with_prefix_reuse": 0.0, "without_prefix_reuse": 0.0}
    answers = {"with_prefix_reuse": [], "without_prefix_reuse": []}
    for track in tracks:
        t0 = time.perf_counter()
        answers["with_prefix_reuse"] += [a.text for a in pipe.ask(track, asked, max_tokens=max_tokens)]
        t1 = time.perf_counter()
        for q in asked:
            answers["without_prefix_reuse"] += [a.text for a in pipe.ask(track, q, max_tokens=max_tokens)]
        t2 = time.perf_counter()
        seconds["with_prefix_reuse"] += t1 - t0
        seconds["without_prefix_reuse"] += t2 - t1
    n = len(tracks)
    return {
        "bench": "throughput.songs_per_hour (Pipeline.ask)",
        "songs": n,
        "prompts": questions,
        "max_tokens": max_tokens,
        "questions": asked,
        # greedy and forked from the same prefix: the parallel answers should equal the one-by-one ones
        "same_answers": answers["with_prefix_reuse"] == answers["without_prefix_reuse"],
        **{mode: {"seconds": s, "songs_per_hour": 3600 * n / s} for mode, s in seconds.items()},
        "speedup": seconds["without_prefix_reuse"] / seconds["with_prefix_reuse"],
    }
