"""Cut a stream of audio blocks into the encoder's fixed 30 s windows, each yielded as soon as it is full.

Long audio is encoded window by window and the token sequences are concatenated in order; the last
window is zero-padded for the encoder, and the manifest's token rule says how many of its tokens the decoder
gets (``Window.valid_tokens``, gamma_rt/token_count.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from gamma_rt.token_count import Coverage, TokenRule

from .mel import CHUNK_SECONDS, SAMPLE_RATE


@dataclass
class Window:
    """One encoder window.

    samples: (window_seconds * sample_rate,) float32, 16 kHz mono; zero-padded after n_valid samples.
    start_s, end_s: position of its real audio in the source, seconds (end_s - start_s = n_valid / rate).
    """

    index: int
    start_s: float
    end_s: float
    samples: np.ndarray
    n_valid: int

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
            window_seconds: float = CHUNK_SECONDS) -> Iterator[Window]:
    """Windows of ``window_seconds`` from 1-D float32 blocks of any size; the last one zero-padded.

    Empty input yields no window. Each window owns a fresh array, so callers may keep them.
    """
    size = int(round(window_seconds * sample_rate))
    if size <= 0:
        raise ValueError(f"a window must hold at least one sample, got {window_seconds} s at {sample_rate} Hz")
    buffer = np.zeros(size, np.float32)
    filled = 0
    index = 0
    for block in blocks:
        block = np.asarray(block, dtype=np.float32).reshape(-1)
        offset = 0
        while offset < len(block):
            take = min(size - filled, len(block) - offset)
            buffer[filled:filled + take] = block[offset:offset + take]
            filled += take
            offset += take
            if filled == size:
                yield _window(index, buffer, size, sample_rate)
                buffer = np.zeros(size, np.float32)
                filled = 0
                index += 1
    if filled:
        yield _window(index, buffer, filled, sample_rate)


def _window(index: int, samples: np.ndarray, n_valid: int, sample_rate: int) -> Window:
    start = index * len(samples) / sample_rate
    return Window(index, start, start + n_valid / sample_rate, samples, n_valid)
