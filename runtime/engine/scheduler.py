"""The decoder scheduler: one thread owns the DecoderSession (llama.cpp is not thread-safe) and runs each
request's answer as one sequence of its context, all of them stepped together.

Every turn of its loop:

1. admit waiting requests, oldest first, while a sequence is free and the KV cache has room for all the
   request may need (prompt, audio, max_tokens; a sequence with cells of its own has room for any request
   it took); its audio goes to the listener thread to be encoded;
2. prefill one piece (at most n_batch tokens or embeddings) of one admitted request: the prompt head, an
   audio window as the listener hands it over, then the question;
3. one decode step: every answering sequence has its last token evaluated and its next token drawn by its
   own sampler, in one llama_decode batch, in increasing sequence order. Each sequence has cells of its own,
   and llama.cpp then runs a batch as one pass only over consecutive sequence ids in increasing order: any
   other order or gap is split into a pass per run, each reading all the weights. So a request takes the
   lowest free sequence, and the running ones stay packed from sequence 0.

Steps 2 and 3 are one turn on the CPU (cores.py): where the encoders and the decoder would oversubscribe the
cores, they alternate with the listener's windows instead of running at the same time.

So a request that arrives while others answer joins them at the next turn (continuous batching), its audio
is encoded while they decode (or between their steps), and its prefill holds them up one piece at a time. A
cancelled request (its client went away) frees its sequence at the next turn. Events go back to each request
through its ``emit`` callback: :class:`Piece` per token, then :class:`Done` or :class:`Failed`.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from gamma_rt.errors import GammaError

from ..audio import AudioStream
from ..decoder import AnswerText, DecoderSession
from ..embed import AudioLayout, WindowEmbedding
from ..pipeline import MARKER_TOKENS
from ..serve.listen import Heard, Listener, Listening
from ..serve.protocol import ChatRequest, Limits, RequestError, token_logprob

log = logging.getLogger("gamma_rt.serve")


@dataclass
class Piece:
    """Text of the answer's next token ("" while a UTF-8 character or a possible stop string is held back),
    and the token's logprobs entry (protocol.token_logprob) when the request asked for them."""

    text: str
    logprob: dict | None = None


@dataclass
class Done:
    """The answer is complete: ``finish_reason`` "stop" (end token or stop string) or "length" (max_tokens)."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class Failed:
    """The request failed: the HTTP status and the one-line message to send."""

    status: int
    message: str


class QueueFull(Exception):
    """Every sequence is busy and --max-queue requests already wait."""


class Job:
    """One request as the scheduler sees it. ``emit`` is called from the scheduler thread with each event."""

    def __init__(self, request: ChatRequest, audio: AudioStream, emit: Callable[[object], None]):
        self.request, self.audio, self.emit = request, audio, emit
        self.arrived = time.perf_counter()
        self.cancelled = threading.Event()
        self._wake: Callable[[], None] = lambda: None
        self.plan: _Plan | None = None  # the scheduler's, once it has tokenized the prompt

    def cancel(self) -> None:
        """The client went away: drop the request and free its sequence."""
        self.cancelled.set()
        self._wake()


@dataclass
class _Plan:
    """A request's prompt in tokens, and the KV cells it may need at most."""

    head: list[int]
    rest: list[int]  # after the audio: the question (and earlier turns); never empty
    need: int


class _Lane:
    """An admitted request on its sequence ``seq``: prefill items to do, then its answer as it is decoded."""

    def __init__(self, job: Job, seq: int, plan: _Plan, listening: Listening, sampler):
        self.job, self.seq, self.plan, self.listening, self.sampler = job, seq, plan, listening, sampler
        self.todo: deque = deque([plan.head])  # token lists and (n, n_embd) embedding arrays, in order
        self.heard = False
        self.next_token: int | None = None  # set once the prompt is in: the token the next step evaluates
        self.answer = AnswerText(job.request.stop)
        self.ids: list[int] = []
        self.prompt_tokens = 0
        self.last_token_at: float | None = None


class Scheduler:
    """Owns ``session`` on its own thread; :meth:`submit` hands it requests from any thread."""

    def __init__(self, session: DecoderSession, prompt, layout: AudioLayout, listener: Listener, metrics,
                 limits: Limits, max_queue: int = 16, retry_after_s: int = 1):
        self.session, self.prompt, self.layout, self.listener = session, prompt, layout, listener
        self.cores = listener.cores
        self.metrics, self.limits, self.max_queue, self.retry_after_s = metrics, limits, max_queue, retry_after_s
        self.lanes = session.n_seq_max
        self._lock = threading.Lock()
        self._inbox: deque[Job] = deque()
        self._in_flight = 0  # submitted and not finished, waiting or admitted
        self._waiting: deque[Job] = deque()
        self._active: dict[int, _Lane] = {}  # by sequence, in admission order
        self._free = list(range(session.n_seq_max))  # a heap: a request takes the lowest free sequence
        self._reserved = 0
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="gamma-rt-scheduler", daemon=True)
        self._thread.start()

    # --- any thread -------------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue ``job``; QueueFull when every sequence is busy and ``max_queue`` jobs already wait."""
        with self._lock:
            if self._stopping or self._in_flight >= self.lanes + self.max_queue:
                raise QueueFull()
            self._in_flight += 1
            self._inbox.append(job)
        job._wake = self._wake.set
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def close(self) -> None:
        """Stop the thread; requests still running fail with 503."""
        with self._lock:
            self._stopping = True
        self._wake.set()
        self._thread.join(timeout=30)

    # --- the scheduler thread ---------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                busy = self._turn()
            except Exception:  # a bug: keep serving, fail what was running, and log the traceback
                log.exception("scheduler turn failed; failing the running requests")
                for lane in list(self._active.values()):
                    self._end(lane, Failed(500, "internal error in the decoder scheduler (see the server log)"))
                busy = True
            if not busy:
                self._wake.wait(timeout=0.5)
        for lane in list(self._active.values()):
            self._end(lane, Failed(503, "the server is shutting down"))
        for job in self._take_inbox() + list(self._waiting):
            self._drop(job, Failed(503, "the server is shutting down"))

    def _turn(self) -> bool:
        """One turn: admissions, one prefill piece, one decode step. False when there was nothing to do."""
        self._waiting.extend(self._take_inbox())
        self._drop_cancelled()
        self._admit()
        with self.cores.turn():
            prefilled = self._prefill_one()
            stepped = self._step()
        self.metrics.scheduler(len(self._waiting), len(self._active))
        return prefilled or stepped

    def _take_inbox(self) -> list[Job]:
        with self._lock:
            jobs = list(self._inbox)
            self._inbox.clear()
        return jobs

    def _drop_cancelled(self) -> None:
        for job in [j for j in self._waiting if j.cancelled.is_set()]:
            self._waiting.remove(job)
            self._drop(job, None)
        for lane in [lane for lane in self._active.values() if lane.job.cancelled.is_set()]:
            self._end(lane, None)

    def _admit(self) -> None:
        while self._waiting and self._free:
            job = self._waiting[0]
            try:
                plan = job.plan = job.plan or self._plan(job)
            except (GammaError, RequestError) as e:
                self._waiting.popleft()
                self._drop(job, _failure(e))
                continue
            if self._reserved + plan.need > self.session.n_ctx:
                return  # the oldest waits for room; the others wait behind it
            self._waiting.popleft()
            seq = heapq.heappop(self._free)
            self._reserved += plan.need
            listening = Listening(job.audio, self.limits.max_audio_seconds, job.request.audio.where, self._wake.set)
            self._active[seq] = _Lane(job, seq, plan, listening, self.session.sampler(job.request.sampling))
            self.session.clear(seq)
            self.listener.submit(listening)

    def _plan(self, job: Job) -> _Plan:
        req, s = job.request, self.session
        prompt = self.prompt if req.system is None else dataclasses.replace(self.prompt, system=req.system)
        head = s.tokenize(prompt.head())
        rest: list[int] = []
        for k, (question, answer) in enumerate(req.turns):
            rest += s.tokenize(prompt.tail(question) if k == 0 else prompt.follow_up(question))
            if answer is not None:
                rest += s.tokenize(answer, special=False)
        seconds = job.audio.info.duration_s or self.limits.max_audio_seconds
        windows = math.ceil(seconds / self.layout.window_seconds)
        if self.layout.max_windows is not None:
            windows = min(windows, self.layout.max_windows)
        need = len(head) + len(rest) + windows * (self.layout.tokens_per_window + MARKER_TOKENS) + req.max_tokens
        if need > s.cells_per_sequence:
            raise RequestError(400, f"this request may need {need} tokens of context (prompt, audio and "
                               f"max_tokens); each of the server's sequences holds {s.cells_per_sequence} "
                               f"(--ctx-size / --parallel)", "messages")
        return _Plan(head, rest, need)

    def _prefill_one(self) -> bool:
        """Evaluate one piece of the oldest admitted request that has one ready."""
        for lane in list(self._active.values()):
            if lane.next_token is not None:
                continue
            self._collect(lane)
            if lane.seq not in self._active:
                continue  # its audio failed
            if lane.todo:
                self._eval_piece(lane)
                return True
            if lane.heard:
                lane.next_token = lane.plan.rest[-1]
        return False

    def _collect(self, lane: _Lane) -> None:
        """Move what the listener has encoded into the lane's prefill items."""
        while not lane.heard:
            item = lane.listening.ready()
            if item is None:
                return
            if isinstance(item, WindowEmbedding):
                marker = self.prompt.marker(item.index, item.start_s)
                if marker:
                    lane.todo.append(self.session.tokenize(marker))
                lane.todo.append(item.embeddings)
            elif isinstance(item, Heard):
                lane.heard = True
                lane.todo.append(lane.plan.rest[:-1])
                self.metrics.heard(item.seconds, item.windows, item.cached)
            else:
                if not isinstance(item, (GammaError, RequestError)):
                    log.error("audio side failed", exc_info=item)
                self._end(lane, _failure(item))
                return

    def _eval_piece(self, lane: _Lane) -> None:
        item = lane.todo.popleft()
        n = self.session.n_batch
        piece, left = item[:n], item[n:]
        if len(left):
            lane.todo.appendleft(left)
        if len(piece) == 0:
            return
        if isinstance(piece, np.ndarray):
            self.session.eval_embeddings(piece, lane.seq)
        else:
            self.session.eval_tokens(piece, lane.seq)
        lane.prompt_tokens += len(piece)

    def _step(self) -> bool:
        """One token for every answering sequence, in one batch, in increasing sequence order: llama.cpp runs
        a batch over a cache with cells per sequence as one pass only for consecutive sequence ids in
        increasing order, and splits it into more passes otherwise (DecoderSession.step)."""
        lanes = sorted((lane for lane in self._active.values() if lane.next_token is not None), key=lambda l: l.seq)
        if not lanes:
            return False
        try:
            drawn = self.session.step([(lane.seq, lane.next_token) for lane in lanes], [lane.sampler for lane in lanes])
        except GammaError as e:  # the KV cache is full despite the admission bookkeeping: shed this batch
            for lane in lanes:
                self._end(lane, Failed(503, str(e)))
            return True
        now = time.perf_counter()
        for i, (lane, token) in enumerate(zip(lanes, drawn)):
            self._accept(lane, token, now, i)
        return True

    def _logprob(self, lane: _Lane, index: int, token: int) -> dict | None:
        """The logprobs entry of ``token``, drawn from output ``index`` of the step, if its request asked."""
        request = lane.job.request
        if not request.logprobs:
            return None
        logprob, top = self.session.logprobs(index, token, request.top_logprobs)
        as_bytes = self.session.token_bytes
        return token_logprob(as_bytes(token), logprob, [(as_bytes(t), lp) for t, lp in top])

    def _accept(self, lane: _Lane, token: int, now: float, index: int) -> None:
        """Take ``token``, drawn from output ``index`` of the step, into ``lane``'s answer."""
        if lane.last_token_at is None:
            lane.prompt_tokens += 1
            self.metrics.first_token(now - lane.job.arrived)
        else:
            self.metrics.next_token(now - lane.last_token_at)
        lane.last_token_at = now
        if self.session.is_end(token):
            self._end(lane, "stop")
            return
        lane.ids.append(token)
        text = lane.answer.feed(self.session.token_bytes(token))
        lane.job.emit(Piece(text, self._logprob(lane, index, token)))
        if lane.answer.stopped:
            self._end(lane, "stop")
        elif len(lane.ids) >= lane.job.request.max_tokens:
            self._end(lane, "length")
        else:
            lane.next_token = token

    def _end(self, lane: _Lane, outcome: str | Failed | None) -> None:
        """Finish a lane: ``outcome`` is a finish reason, a failure, or None for a cancelled request."""
        if isinstance(outcome, str):
            tail = lane.answer.finish()
            if tail:
                lane.job.emit(Piece(tail))
            lane.job.emit(Done(outcome, lane.prompt_tokens, len(lane.ids)))
            self.metrics.answered(len(lane.ids))
        lane.listening.cancelled.set()
        self.session.free_sampler(lane.sampler)
        self.session.clear(lane.seq)
        del self._active[lane.seq]
        heapq.heappush(self._free, lane.seq)
        self._reserved -= lane.plan.need
        self._drop(lane.job, outcome if isinstance(outcome, Failed) else None, counted=True)

    def _drop(self, job: Job, failure: Failed | None, counted: bool = False) -> None:
        """The job leaves the scheduler; ``failure`` is sent to its client if there is one."""
        if failure is not None:
            job.emit(failure)
        if job.cancelled.is_set():
            self.metrics.cancelled()
        if not counted:
            job.audio.close()
        with self._lock:
            self._in_flight -= 1


def _failure(e: BaseException) -> Failed:
    if isinstance(e, RequestError):
        return Failed(e.status, e.message)
    if isinstance(e, GammaError):
        return Failed(400, str(e))
    return Failed(500, f"internal error ({type(e).__name__}); see the server log")
