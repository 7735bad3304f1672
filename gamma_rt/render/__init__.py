"""Labelled training audio with real instrument timbres: the project's own MIDI through a GM soundfont.

Entry points:

- :func:`rendered_song` ``(seed, seconds) -> (float32 audio at 16 kHz, Song)``: the labels of
  ``synth.song_for_seed`` (so the same seeds split train from eval), composed as MIDI (``compose``),
  rendered by FluidSynth (``fluid``) and, unless ``augment=False``, augmented (``augment``). Training data.
- :func:`gamma_rt.render.real.real_compositions` ``(n) -> (name, audio, Song)``: real compositions from
  music21's corpus rendered the same way. Eval only: nothing in this module imports it.
"""

from __future__ import annotations

import numpy as np

from gamma_rt.render.augment import augment as _augment
from gamma_rt.render.compose import compose
from gamma_rt.render.fluid import RATE, RenderError, available, render_piece
from gamma_rt.synth import Song, song_for_seed

PEAK = 0.8  # a render is scaled to this peak before augmentation, like synth.render

__all__ = ["RATE", "RenderError", "available", "compose", "render_song", "rendered_song"]


def render_song(song: Song, augment: bool = True, timeout_s: float = 120.0) -> np.ndarray:
    """float32 (round(song.seconds * 16000),) mono: ``song`` composed, rendered, scaled to PEAK, augmented
    with the song's seed (``augment=False``: the clean render)."""
    audio = render_piece(compose(song), RATE, timeout_s)
    peak = float(np.abs(audio).max())
    if peak > 0:
        audio = audio * (PEAK / peak)
    return _augment(audio, song.seed) if augment else audio.astype(np.float32)


def rendered_song(seed: int, seconds: float = 15.0, augment: bool = True) -> tuple[np.ndarray, Song]:
    """Training clip ``seed``: (float32 audio at 16 kHz mono, its Song labels from ``song_for_seed``)."""
    song = song_for_seed(seed, seconds)
    return render_song(song, augment), song
