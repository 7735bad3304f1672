"""Cut a stream of audio blocks into the encoder's fixed 30 s windows, each yielded as soon as it is full.

Long audio is encoded window by window and the token sequences are concatenated in order; the last
window is zero-padded for the encoder, and the manifest's token rule says how many of its tokens the decoder
gets (``Window.valid_tokens``, gamma_rt/token_count.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

from gamma_rt.token_count import Coverage, TokenRule

from .mel import CHUNK_SECONDS, SAMPLE_RATE


@dataclass
class Window:
    """One encoder window.

    samples: (window_seconds * sample_rate,) float32, 16 kHz mono; zero-padded after n_valid samples.
    start_s, end_s: position of its real audio in the source, seconds (end_s - start_s = n_valid / rate).
    after: up to ``lookahead`` samples that follow the window in the source (empty for the last one), for a
    front end whose last frames reach past the window (Kaldi's 25 ms frames every 10 ms).
    """

    index: int
    start_s: float
    end_s: float
    samples: np.ndarray
    n_valid: int
    after: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def valid_frames(self, hop_length: int) -> int:
        """Mel frames that hold real audio: ceil(n_valid / hop_length), as WhisperFeatureExtractor's mask."""
        return self.coverage(0, hop_length).valid_frames

    def coverage(self, tokens_per_window: int, hop_length: int = 160, sample_rate: int = SAMPLE_RATE) -> Coverage:
        return Coverage(self.n_valid, len(self.samples), tokens_per_window, hop_length, sample_rate, self.index)

    def valid_tokens(self, tokens_per_window: int, rule: TokenRule | str = "proportional", hop_length: int = 160,
                     sample_rate: int = SAMPLE_RATE) -> int:
        """How many of the window's LLM tokens the decoder gets, by the manifest's ``audio.token_count``
        (gamma_rt/token_count.py)."""
        rule = TokenRule(rule) if isinstance(rule, str) else rule
        return rule.tokens(self.coverage(tokens_per_window, hop_length, sample_rate))


def windows(blocks: Iterable[np.ndarray], sample_rate: int = SAMPLE_RATE,
            window_seconds: float = CHUNK_SECONDS, lookahead: int = 0) -> Iterator[Window]:
    """Windows of ``window_seconds`` from 1-D float32 blocks of any size; the last one zero-padded.

    With ``lookahead`` a full window waits for that many more samples (or the end) and carries them as
    ``Window.after``. Empty input yields no window. Each window owns fresh arrays, so callers may keep them.
    """
    size = int(round(window_seconds * sample_rate))
    if size <= 0:
        raise ValueError(f"a window must hold at least one sample, got {window_seconds} s at {sample_rate} Hz")
    buffer = np.zeros(size + lookahead, np.float32)
    filled = 0
    index = 0
    for block in blocks:
        block = np.asarray(block, dtype=np.float32).reshape(-1)
        offset = 0
        while offset < len(block):
            take = min(len(buffer) - filled, len(block) - offset)
            buffer[filled:filled + take] = block[offset:offset + take]
            filled += take
            offset += take
            if filled == len(buffer):
                yield _window(index, buffer[:size].copy(), size, sample_rate, buffer[size:].copy())
                rest = buffer[size:filled].copy()
                buffer = np.zeros(size + lookahead, np.float32)
                buffer[:len(rest)] = rest
                filled = len(rest)
                index += 1
    if filled > size:
        yield _window(index, buffer[:size].copy(), size, sample_rate, buffer[size:filled].copy())
        buffer[:filled - size] = buffer[size:filled].copy()
        buffer[filled - size:] = 0
        filled -= size
        index += 1
    if filled:
        yield _window(index, buffer[:size].copy(), filled, sample_rate)


def _window(index: int, samples: np.ndarray, n_valid: int, sample_rate: int, after: np.ndarray | None = None) -> Window:
    start = index * len(samples) / sample_rate
    if after is None:
        return Window(index, start, start + n_valid / sample_rate, samples, n_valid)
    return Window(index, start, start + n_valid / sample_rate, samples, n_valid, after)
