"""A chat request as a job of the engine: its prefix is the system prompt and the song, its one branch the
conversation's turns after the audio, answered with the request's sampling, stop strings and logprobs."""

from __future__ import annotations

import dataclasses
from typing import Callable

from ..audio import AudioStream
from ..embed import AudioLayout
from ..engine.job import Branch, Job, Plan, audio_windows, cells_needed
from .protocol import ChatRequest, Limits, RequestError, token_logprob


class ChatJob(Job):
    """One /v1/chat/completions request."""

    def __init__(self, request: ChatRequest, audio: AudioStream, emit: Callable[[object], None], limits: Limits):
        super().__init__(audio, emit)
        self.request, self.limits = request, limits
        self.where, self.max_seconds = request.audio.where, limits.max_audio_seconds

    def make_plan(self, session, prompt, layout: AudioLayout) -> Plan:
        req, s = self.request, session
        prompt = prompt if req.system is None else dataclasses.replace(prompt, system=req.system)
        head = s.tokenize(prompt.head())
        rest: list[int] = []
        for k, (question, answer) in enumerate(req.turns):
            rest += s.tokenize(prompt.tail(question) if k == 0 else prompt.follow_up(question))
            if answer is not None:
                rest += s.tokenize(answer, special=False)
        branch = Branch(rest, req.sampling, req.max_tokens, req.stop, req.top_logprobs if req.logprobs else None)
        windows = audio_windows(self.audio.info.duration_s or self.limits.max_audio_seconds, layout)
        need, _ = cells_needed(head, [branch], windows, layout, shared_cells=False)
        if need > s.cells_per_sequence:
            raise RequestError(400, f"this request may need {need} tokens of context (prompt, audio and "
                               f"max_tokens); each of the server's sequences holds {s.cells_per_sequence} "
                               f"(--ctx-size / --parallel)", "messages")
        return Plan(head, [branch], need)

    def logprob_entry(self, token: bytes, logprob: float, top: list[tuple[bytes, float]]) -> dict:
        return token_logprob(token, logprob, top)
