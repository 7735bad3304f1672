"""What the engine runs: a job is one audio prefix (a prompt head, then a song's windows) and one or more
branches after it, each a question answered on a sequence of its own.

A front end (serve, tag) subclasses :class:`Job` and says, in :meth:`Job.plan`, what its prefix and its
branches are in tokens. Serve's jobs have one branch (the chat's turns after the audio); tag's have one per
prompt of the prompt set, so a song's questions fork its audio prefix instead of evaluating it again.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Callable

from ..audio import AudioStream
from ..embed import AudioLayout
from ..pipeline import MARKER_TOKENS
from ..sampling import Sampling


@dataclass
class Branch:
    """One answer after the shared prefix: its own tokens, how it samples, when it ends."""

    rest: list[int]  # after the audio: the question (and earlier turns); never empty
    sampling: Sampling
    max_tokens: int
    stop: tuple[str, ...] = ()
    top_logprobs: int | None = None  # None: no logprobs; else each token's, with this many most likely


@dataclass
class Plan:
    """A job in tokens: the prompt head, its branches, and the KV cells it may need at most."""

    head: list[int]
    branches: list[Branch]
    need: int


def audio_windows(seconds: float, layout: AudioLayout) -> int:
    """Windows of ``seconds`` of audio, at most the model's ``max_windows``."""
    windows = math.ceil(seconds / layout.window_seconds)
    return windows if layout.max_windows is None else min(windows, layout.max_windows)


def cells_needed(head: list[int], branches: list[Branch], windows: int, layout: AudioLayout,
                 shared_cells: bool) -> tuple[int, int]:
    """(cells the job may need in all, cells its longest branch may need on its own sequence).

    With shared cells the branches share the prefix's cells; without, each branch's sequence holds a copy."""
    prefix = len(head) + windows * (layout.tokens_per_window + MARKER_TOKENS)
    own = [len(b.rest) + b.max_tokens for b in branches]
    total = prefix + sum(own) if shared_cells else sum(prefix + n for n in own)
    return total, prefix + max(own)


class Job:
    """One job as the engine sees it. ``emit`` is called from the scheduler thread with each event
    (events.py): Piece and Done per branch, or one Failed for the whole job."""

    where = "audio"  # names the audio in error messages
    max_seconds: float | None = None  # audio past this is refused (a stream that did not declare its length)

    def __init__(self, audio: AudioStream, emit: Callable[[object], None]):
        self.audio, self.emit = audio, emit
        self.arrived = time.perf_counter()
        self.cancelled = threading.Event()
        self._wake: Callable[[], None] = lambda: None
        self.plan: Plan | None = None  # made by Scheduler.submit (make_plan) unless the front end gave one
        self.samplers: list = []  # one per branch, made by Scheduler.submit; the lanes free them

    def cancel(self) -> None:
        """The client went away: drop the job and free its sequences."""
        self.cancelled.set()
        self._wake()

    def make_plan(self, session, prompt, layout: AudioLayout) -> Plan:
        """The job in tokens, tokenized with ``session``; raises the front end's error when it cannot run."""
        raise NotImplementedError

    def on_heard(self, heard) -> None:
        """Its audio is all encoded (a listen.Heard: windows, cached windows, seconds, stage ms)."""

    def logprob_entry(self, token: bytes, logprob: float, top: list[tuple[bytes, float]]) -> object:
        """What a Piece carries for a branch that asked for logprobs (the front end's format)."""
        return None
