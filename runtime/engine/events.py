"""What the engine tells a job's front end, through the job's ``emit``, from the scheduler thread."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Piece:
    """Text of branch ``branch``'s next token ("" while a UTF-8 character or a possible stop string is held
    back), and the token's logprobs entry (Job.logprob_entry) when the branch asked for them."""

    text: str
    logprob: object | None = None
    branch: int = 0


@dataclass
class Done:
    """Branch ``branch``'s answer is complete: ``finish_reason`` "stop" (end token or stop string) or "length"
    (max_tokens)."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    branch: int = 0


@dataclass
class Failed:
    """The job failed, all its branches: an HTTP-style status, the one-line message, and the exception that
    caused it when there is one (an AudioTimeout, a GammaError of the audio side)."""

    status: int
    message: str
    cause: BaseException | None = None


class QueueFull(Exception):
    """Every sequence is busy and max_queue jobs already wait."""
