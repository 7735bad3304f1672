"""The decoder scheduler: one thread owns the DecoderSession (llama.cpp is not thread-safe) and runs every
job's answers as sequences of its context, all of them stepped together.

A job (job.py) is one audio prefix and one or more branches after it. Every turn of the loop:

1. admit waiting jobs, oldest first, while enough sequences are free (one per branch) and the KV cache has
   room for all the job may need (prompt, audio, every branch's max_tokens); its audio goes to the listener
   thread to be encoded;
2. prefill one piece (at most n_batch tokens or embeddings) of one admitted job: the prompt head, an audio
   window as the listener hands it over, then, once the audio is in, each branch's question on its own
   sequence, forked from the prefix (the first branch keeps the prefix's sequence);
3. one decode step: every answering sequence has its last token evaluated and its next token drawn by its
   own sampler, in one llama_decode batch, in increasing sequence order. Without shared cells each sequence
   has cells of its own, and llama.cpp then runs a batch as one pass only over consecutive sequence ids in
   increasing order: any other order or gap is split into a pass per run, each reading all the weights. So a
   job takes the lowest free sequences, and the running ones stay packed from sequence 0.

Steps 2 and 3 are one turn on the CPU (cores.py): where the encoders and the decoder would oversubscribe the
cores, they alternate with the listener's windows instead of running at the same time.

So a job that arrives while others answer joins them at the next turn (continuous batching), its audio is
encoded while they decode (or between their steps), and its prefill holds them up one piece at a time. A
cancelled job (its client went away) frees its sequences at the next turn. Events go back to each job
through its ``emit`` callback (events.py): :class:`Piece` per token and :class:`Done` per branch, or one
:class:`Failed`.

A job's own work (its plan: tokenizing its prompt; its branches' samplers: a grammar may take a while, or be
refused) is done by :meth:`Scheduler.submit` on the caller's thread, before the job is queued. So the
scheduler thread only admits, prefills and steps: nothing one job brings can hold the others up, and a job
that cannot run is refused before it takes a sequence or KV cells. Once submitted, a job is the scheduler's:
each way out (answered, failed, cancelled, shut down) frees its samplers, its audio and its reservation.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections import deque

import numpy as np

from gamma_rt.errors import GammaError

from ..decoder import AnswerText, DecoderSession
from ..embed import AudioLayout, WindowEmbedding
from .events import Done, Failed, Piece, QueueFull
from .job import Branch, Job, Plan
from .listen import Heard, Listener, Listening

__all__ = ["Done", "Failed", "Job", "Piece", "QueueFull", "Scheduler"]

log = logging.getLogger("gamma_rt.engine")


class _Lane:
    """One branch of an admitted job on its sequence ``seq``: its question to prefill, then its answer."""

    def __init__(self, index: int, branch: Branch, seq: int, sampler):
        self.index, self.branch, self.seq, self.sampler = index, branch, seq, sampler
        self.todo: deque = deque()
        self.next_token: int | None = None  # set once the question is in: the token the next step evaluates
        self.answer = AnswerText(branch.stop)
        self.ids: list[int] = []
        self.own_tokens = 0  # prompt tokens evaluated on this lane after the shared prefix
        self.last_token_at: float | None = None
        self.done = False


class _Admitted:
    """An admitted job: its prefix prefilled on the first lane's sequence, then one lane per branch."""

    def __init__(self, job: Job, plan: Plan, listening: Listening, lanes: list[_Lane]):
        self.job, self.plan, self.listening, self.lanes = job, plan, listening, lanes
        self.todo: deque = deque([plan.head])  # token lists and (n, n_embd) embedding arrays, in order
        self.heard = False
        self.forked = False
        self.prefix_tokens = 0

    @property
    def seq(self) -> int:
        return self.lanes[0].seq


class NoMetrics:
    """A front end without metrics (tag): every report is dropped."""

    def scheduler(self, waiting: int, active: int) -> None: ...
    def heard(self, seconds: float, windows: int, cached: int) -> None: ...
    def first_token(self, seconds: float) -> None: ...
    def next_token(self, seconds: float) -> None: ...
    def answered(self, tokens: int) -> None: ...
    def cancelled(self) -> None: ...


class Scheduler:
    """Owns ``session`` on its own thread; :meth:`submit` hands it jobs from any thread."""

    def __init__(self, session: DecoderSession, prompt, layout: AudioLayout, listener: Listener, metrics=None,
                 max_queue: int = 16, retry_after_s: int = 1):
        self.session, self.prompt, self.layout, self.listener = session, prompt, layout, listener
        self.cores = listener.cores
        self.metrics, self.max_queue, self.retry_after_s = metrics or NoMetrics(), max_queue, retry_after_s
        self.lanes = session.n_seq_max
        self._lock = threading.Lock()
        self._inbox: deque[Job] = deque()
        self._in_flight = 0  # submitted and not finished, waiting or admitted
        self._waiting: deque[Job] = deque()
        self._jobs: list[_Admitted] = []  # in admission order
        self._free = list(range(session.n_seq_max))  # a heap: a job takes the lowest free sequences
        self._reserved = 0
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="gamma-rt-scheduler", daemon=True)
        self._thread.start()

    # --- any thread -------------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Prepare ``job`` on this thread (its plan, its branches' samplers), then queue it. Takes ``job``
        over: on any failure its samplers and audio are freed before the error is raised. QueueFull when every
        sequence is busy and ``max_queue`` jobs already wait; the front end's error (from Job.make_plan) or a
        GammaError when the job cannot run."""
        try:
            self._check_room()  # before the work, so a full engine refuses cheaply
            self._prepare(job)
            with self._lock:
                self._check_room()
                self._in_flight += 1
                self._inbox.append(job)
        except BaseException:
            self._release(job)
            raise
        job._wake = self._wake.set
        self._wake.set()

    def _check_room(self) -> None:
        if self._stopping or self._in_flight >= self.lanes + self.max_queue:
            raise QueueFull()

    def _prepare(self, job: Job) -> None:
        """The job's own work, off the scheduler thread. llama.cpp's vocabulary, which tokenizing and a grammar
        read, does not change once loaded, so this may run while the scheduler decodes."""
        plan = job.plan = job.plan or job.make_plan(self.session, self.prompt, self.layout)
        if plan.need > self.session.n_ctx or len(plan.branches) > self.session.n_seq_max:
            raise GammaError(f"{job.where}: this job may need {plan.need} tokens of context on "
                             f"{len(plan.branches)} sequences; the engine holds {self.session.n_ctx} on "
                             f"{self.session.n_seq_max}")
        for branch in plan.branches:  # freed by _release if one of them is refused
            job.samplers.append(self.session.sampler(branch.sampling))

    def _release(self, job: Job) -> None:
        """Free what a job holds outside the lanes: its samplers and its audio (each once)."""
        samplers, job.samplers = job.samplers, []
        for sampler in samplers:
            self.session.free_sampler(sampler)
        job.audio.close()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def close(self) -> None:
        """Stop the thread; jobs still running fail with 503."""
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
                log.exception("scheduler turn failed; failing the running jobs")
                for admitted in list(self._jobs):
                    self._end(admitted, Failed(500, "internal error in the decoder scheduler (see the log)"))
                busy = True
            if not busy:
                self._wake.wait(timeout=0.5)
        for admitted in list(self._jobs):
            self._end(admitted, Failed(503, "the engine is shutting down"))
        for job in self._take_inbox() + list(self._waiting):
            self._drop(job, Failed(503, "the engine is shutting down"))

    def _turn(self) -> bool:
        """One turn: admissions, one prefill piece, one decode step. False when there was nothing to do."""
        self._waiting.extend(self._take_inbox())
        self._drop_cancelled()
        self._admit()
        with self.cores.turn():
            prefilled = self._prefill_one()
            stepped = self._step()
        self.metrics.scheduler(len(self._waiting), len(self._jobs))
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
        for admitted in [a for a in self._jobs if a.job.cancelled.is_set()]:
            self._end(admitted, None)

    def _admit(self) -> None:
        """Bookkeeping only: submit prepared the job (plan, samplers), so nothing here can fail half-way."""
        while self._waiting:
            job = self._waiting[0]
            plan = job.plan
            if len(self._free) < len(plan.branches) or self._reserved + plan.need > self.session.n_ctx:
                return  # the oldest waits for room; the others wait behind it
            self._waiting.popleft()
            seqs = sorted(heapq.heappop(self._free) for _ in plan.branches)
            self._reserved += plan.need
            lanes = [_Lane(i, b, seq, sampler)
                     for i, (b, seq, sampler) in enumerate(zip(plan.branches, seqs, job.samplers))]
            job.samplers = []  # the lanes' now: each is freed with its lane
            listening = Listening(job.audio, job.max_seconds, job.where, self._wake.set)
            self._jobs.append(_Admitted(job, plan, listening, lanes))
            for seq in seqs:
                self.session.clear(seq)
            self.listener.submit(listening)

    def _prefill_one(self) -> bool:
        """Evaluate one piece of the oldest admitted job that has one ready."""
        for admitted in list(self._jobs):
            if not admitted.forked:
                self._collect(admitted)
                if admitted not in self._jobs:
                    continue  # its audio failed
                if admitted.todo:
                    admitted.prefix_tokens += self._eval_piece(admitted.todo, admitted.seq)
                    return True
                if not admitted.heard:
                    continue
                self._fork(admitted)
            for lane in admitted.lanes:
                if lane.done or lane.next_token is not None:
                    continue
                if lane.todo:
                    lane.own_tokens += self._eval_piece(lane.todo, lane.seq)
                    return True
                lane.next_token = lane.branch.rest[-1]
        return False

    def _collect(self, admitted: _Admitted) -> None:
        """Move what the listener has encoded into the job's prefill items."""
        while not admitted.heard:
            item = admitted.listening.ready()
            if item is None:
                return
            if isinstance(item, WindowEmbedding):
                marker = self.prompt.marker(item.index, item.start_s)
                if marker:
                    admitted.todo.append(self.session.tokenize(marker))
                admitted.todo.append(item.embeddings)
            elif isinstance(item, Heard):
                admitted.heard = True
                admitted.job.on_heard(item)
                self.metrics.heard(item.seconds, item.windows, item.cached)
            else:
                if not isinstance(item, GammaError) and not hasattr(item, "status"):
                    log.error("audio side failed", exc_info=item)
                self._end(admitted, _failure(item))
                return

    def _fork(self, admitted: _Admitted) -> None:
        """The audio is in: every other branch continues from the prefix on its own sequence, and each
        branch's question (but its last token, which the first step evaluates) goes on its sequence."""
        for lane in admitted.lanes[1:]:
            self.session.fork(admitted.seq, lane.seq)
        for lane in admitted.lanes:
            lane.todo.append(lane.branch.rest[:-1])
        admitted.forked = True

    def _eval_piece(self, todo: deque, seq: int) -> int:
        """Evaluate the next piece of ``todo`` on ``seq``; the tokens (or embeddings) it held."""
        item = todo.popleft()
        n = self.session.n_batch
        piece, left = item[:n], item[n:]
        if len(left):
            todo.appendleft(left)
        if len(piece) == 0:
            return 0
        if isinstance(piece, np.ndarray):
            self.session.eval_embeddings(piece, seq)
        else:
            self.session.eval_tokens(piece, seq)
        return len(piece)

    def _step(self) -> bool:
        """One token for every answering sequence, in one batch, in increasing sequence order: llama.cpp runs
        a batch over a cache with cells per sequence as one pass only for consecutive sequence ids in
        increasing order, and splits it into more passes otherwise (DecoderSession.step)."""
        lanes = sorted(((a, lane) for a in self._jobs for lane in a.lanes
                        if not lane.done and lane.next_token is not None), key=lambda al: al[1].seq)
        if not lanes:
            return False
        try:
            drawn = self.session.step([(lane.seq, lane.next_token) for _, lane in lanes],
                                      [lane.sampler for _, lane in lanes])
        except GammaError as e:  # the KV cache is full despite the admission bookkeeping: shed this batch
            for admitted in {id(a): a for a, _ in lanes}.values():
                self._end(admitted, Failed(503, str(e), e))
            return True
        now = time.perf_counter()
        for i, ((admitted, lane), token) in enumerate(zip(lanes, drawn)):
            if admitted in self._jobs:
                self._accept(admitted, lane, token, now, i)
        return True

    def _logprob(self, job: Job, lane: _Lane, index: int, token: int) -> object | None:
        """The logprobs entry of ``token``, drawn from output ``index`` of the step, if its branch asked."""
        top = lane.branch.top_logprobs
        if top is None:
            return None
        logprob, best = self.session.logprobs(index, token, top)
        as_bytes = self.session.token_bytes
        return job.logprob_entry(as_bytes(token), logprob, [(as_bytes(t), lp) for t, lp in best])

    def _accept(self, admitted: _Admitted, lane: _Lane, token: int, now: float, index: int) -> None:
        """Take ``token``, drawn from output ``index`` of the step, into ``lane``'s answer."""
        job = admitted.job
        if lane.last_token_at is None:
            lane.own_tokens += 1
            self.metrics.first_token(now - job.arrived)
        else:
            self.metrics.next_token(now - lane.last_token_at)
        lane.last_token_at = now
        if self.session.is_end(token):
            self._finish(admitted, lane, "stop")
            return
        lane.ids.append(token)
        text = lane.answer.feed(self.session.token_bytes(token))
        job.emit(Piece(text, self._logprob(job, lane, index, token), lane.index))
        if lane.answer.stopped:
            self._finish(admitted, lane, "stop")
        elif len(lane.ids) >= lane.branch.max_tokens:
            self._finish(admitted, lane, "length")
        else:
            lane.next_token = token

    def _finish(self, admitted: _Admitted, lane: _Lane, reason: str) -> None:
        """One branch's answer is complete; the job leaves when all of its branches are."""
        tail = lane.answer.finish()
        if tail:
            admitted.job.emit(Piece(tail, None, lane.index))
        admitted.job.emit(Done(reason, admitted.prefix_tokens + lane.own_tokens, len(lane.ids), lane.index))
        self.metrics.answered(len(lane.ids))
        self._free_lane(lane)
        if all(lane.done for lane in admitted.lanes):
            self._leave(admitted, None)

    def _free_lane(self, lane: _Lane) -> None:
        lane.done = True
        self.session.free_sampler(lane.sampler)
        self.session.clear(lane.seq)
        heapq.heappush(self._free, lane.seq)

    def _end(self, admitted: _Admitted, failure: Failed | None) -> None:
        """End a job before its answers are complete: ``failure``, or None for a cancelled job."""
        admitted.listening.cancelled.set()
        for lane in admitted.lanes:
            if not lane.done:
                self._free_lane(lane)
        self._leave(admitted, failure)

    def _leave(self, admitted: _Admitted, failure: Failed | None) -> None:
        self._jobs.remove(admitted)
        self._reserved -= admitted.plan.need
        self._drop(admitted.job, failure, counted=True)

    def _drop(self, job: Job, failure: Failed | None, counted: bool = False) -> None:
        """The job leaves the scheduler; ``failure`` is sent to its client if there is one."""
        if failure is not None:
            job.emit(failure)
        if job.cancelled.is_set():
            self.metrics.cancelled()
        if not counted:
            self._release(job)
        with self._lock:
            self._in_flight -= 1


def _failure(e: BaseException) -> Failed:
    status = getattr(e, "status", None)
    if status is not None:  # the front end's own refusal (serve's RequestError), or audio past its limit
        return Failed(status, getattr(e, "message", str(e)), e)
    if isinstance(e, GammaError):
        return Failed(400, str(e), e)
    return Failed(500, f"internal error ({type(e).__name__}); see the log", e)
