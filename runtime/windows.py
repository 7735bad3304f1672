"""Cut a stream of audio blocks into the encoder's fixed 30 s windows, each yielded as soon as it is full.

Long audio is encoded window by window and the token sequences are concatenated in order; the last
window is zero-padded for the encoder, and the tokens that cover only padding are dropped afterwards
(``Window.valid_tokens``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

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
        return min(len(self.samples) // hop_length, math.ceil(self.n_valid / hop_length))

    def valid_tokens(self, tokens_per_window: int, rule: str = "proportional", hop_length: int = 160) -> int:
        """How many of the window's LLM tokens cover real audio, by the manifest's ``audio.token_count``."""
        return TOKEN_COUNTS[rule](self, tokens_per_window, hop_length)


def _proportional(window: Window, tokens_per_window: int, hop_length: int) -> int:
    """ceil(n_valid / window length * tokens_per_window), at least 1 (so one-sample audio still gives the
    model something)."""
    covered = math.ceil(window.n_valid * tokens_per_window / len(window.samples))
    return max(1, min(tokens_per_window, covered))


def _conv_pool(window: Window, tokens_per_window: int, hop_length: int) -> int:
    """Whisper's two convolutions (stride 1 then 2) and a stride-2 average pool over the real frames, as
    AF-Whisper's processor counts them: conv = (frames - 1) // 2 + 1, tokens = (conv - 2) // 2 + 1."""
    conv = (window.valid_frames(hop_length) - 1) // 2 + 1
    return max(0, min(tokens_per_window, (conv - 2) // 2 + 1))


def _all(window: Window, tokens_per_window: int, hop_length: int) -> int:
    """Every token, those of the padding too: the model was trained on fixed-length clips (OpenMU)."""
    return tokens_per_window


# manifest audio.token_count -> rule
TOKEN_COUNTS = {"proportional": _proportional, "conv_pool": _conv_pool, "all": _all}


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
