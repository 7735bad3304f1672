"""How many of a window's LLM tokens the decoder gets: one table of rules, named by the manifest.

The manifest's ``audio.token_count`` names a rule and its parameters, ``{"rule": "proportional"}`` (a plain
string, as schema-2 bundles wrote it, still reads). Each rule maps one window, ``n_valid`` real samples of
``window_samples``, to a token count in ``0..tokens_per_window``; 0 drops the window.

- ``proportional``: the share of real samples, rounded up, at least 1 (GaMMA);
- ``conv_pool``: Whisper's conv2 (stride 2) then a stride-2 average pool over the real mel frames, as the
  Audio Flamingo processor counts them;
- ``all``: every token of the padded window, padding included (OpenMU, as LLaVA feeds them);
- ``whole``: every token of the padded window, as models that pass no mask keep them, but a window after
  the first with ``min_seconds`` of audio or less is dropped (MuFun: audio of at most one window is one
  chunk however short; a longer song's short tail is cut off).

A new rule is one function under ``@rule("name", param=default)``. Pure Python: the runtime imports this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from gamma_rt.errors import BundleError


@dataclass(frozen=True)
class Coverage:
    """One window as the rules see it. n_valid, window_samples: samples; hop_length: samples per mel frame;
    index: the window's place in the song (0 first)."""

    n_valid: int
    window_samples: int
    tokens_per_window: int
    hop_length: int = 160
    sample_rate: int = 16000
    index: int = 0

    @property
    def valid_frames(self) -> int:
        """Mel frames that hold real audio: ceil(n_valid / hop_length), as WhisperFeatureExtractor's mask."""
        return min(self.window_samples // self.hop_length, math.ceil(self.n_valid / self.hop_length))


@dataclass(frozen=True)
class _Rule:
    count: Callable[..., int]
    defaults: dict


RULES: dict[str, _Rule] = {}


def rule(name: str, **defaults):
    """Register ``count(coverage, **params) -> int`` as rule ``name``; ``defaults`` are its parameters."""

    def add(count):
        RULES[name] = _Rule(count, defaults)
        return count

    return add


@rule("proportional")
def _proportional(c: Coverage) -> int:
    covered = math.ceil(c.n_valid * c.tokens_per_window / c.window_samples)
    return max(1, min(c.tokens_per_window, covered))


def conv_pool_tokens(frames: int) -> int:
    """Tokens of ``frames`` mel frames after conv2 (stride 2) and avg-pool 2: 3000 frames -> 750."""
    conv = (frames - 1) // 2 + 1
    return max(0, (conv - 2) // 2 + 1)


@rule("conv_pool")
def _conv_pool(c: Coverage) -> int:
    return min(c.tokens_per_window, conv_pool_tokens(c.valid_frames))


@rule("all")
def _all(c: Coverage) -> int:
    return c.tokens_per_window


@rule("whole", min_seconds=0.0)
def _whole(c: Coverage, min_seconds: float) -> int:
    return c.tokens_per_window if c.index == 0 or c.n_valid > min_seconds * c.sample_rate else 0


@dataclass(frozen=True)
class TokenRule:
    """A rule of ``RULES`` with its parameters (defaults filled in)."""

    name: str = "proportional"
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.name not in RULES:
            raise ValueError(f"unknown token-count rule {self.name!r}; known: {', '.join(RULES)}")
        object.__setattr__(self, "params", {**RULES[self.name].defaults, **self.params})

    def __hash__(self):
        return hash((self.name, tuple(sorted(self.params.items()))))

    def tokens(self, coverage: Coverage) -> int:
        return RULES[self.name].count(coverage, **self.params)

    @classmethod
    def read(cls, value, where: str) -> "TokenRule":
        """The manifest's ``audio.token_count``: a rule name, or ``{"rule": name, param: value, ...}``."""
        field_name = "audio.token_count"
        if isinstance(value, TokenRule):
            return value
        if isinstance(value, str):
            value = {"rule": value}
        if not isinstance(value, dict) or not isinstance(value.get("rule"), str):
            raise BundleError(f"{where}: field {field_name} must be a rule name or an object with 'rule', "
                              f"got {value!r}")
        name = value["rule"]
        if name not in RULES:
            raise BundleError(f"{where}: field {field_name} is {name!r}; this gamma-rt knows {', '.join(RULES)}")
        params = {k: v for k, v in value.items() if k != "rule"}
        defaults = RULES[name].defaults
        for key, v in params.items():
            if key not in defaults:
                known = ", ".join(defaults) or "none"
                raise BundleError(f"{where}: field {field_name}.{key} is not a parameter of rule {name!r} "
                                  f"(it takes: {known})")
            wanted = (int, float) if isinstance(defaults[key], float) else type(defaults[key])
            if isinstance(v, bool) or not isinstance(v, wanted):
                raise BundleError(f"{where}: field {field_name}.{key} must be {type(defaults[key]).__name__}, "
                                  f"got {v!r}")
        return cls(name, params)

    def to_manifest(self) -> dict:
        return {"rule": self.name, **self.params}
