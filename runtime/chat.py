"""A multi-turn conversation about one song, on top of :class:`Pipeline`.

The audio is prefilled once on sequence 0. Every turn appends its text to that same sequence and the
answer's tokens stay in the cache (the decoder evaluates each accepted token), so a follow-up question
costs only its own tokens, never the audio again.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Iterator

from .decoder import Sampling

if TYPE_CHECKING:
    from .pipeline import AudioPrefix, Pipeline


class Conversation:
    def __init__(self, pipeline: "Pipeline", prefix: "AudioPrefix"):
        self.pipeline = pipeline
        self.prefix = prefix
        self.turns: list[tuple[str, str]] = []
        pipeline._finish(prefix)

    def say(self, question: str, sampling: Sampling | None = None, max_tokens: int = 256) -> Iterator[str]:
        """Ask the next question; yields the answer's text pieces as they are decoded."""
        p = self.pipeline
        text = p.prompt.tail(question) if not self.turns else p.prompt.follow_up(question)
        with p.times.stage("question"):
            p.session.eval_tokens(p.tokens(text))
        t0 = time.perf_counter()
        answer = []
        for piece in p.session.generate(sampling or Sampling(), max_tokens, p.prompt.stop):
            answer.append(piece)
            yield piece
        p.times.add("decode", (time.perf_counter() - t0) * 1e3)
        self.turns.append((question, "".join(answer)))

    def ask(self, question: str, sampling: Sampling | None = None, max_tokens: int = 256) -> str:
        return "".join(self.say(question, sampling, max_tokens))
