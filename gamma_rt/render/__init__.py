"""Labelled training audio with real instrument timbres: the project's own MIDI through a GM soundfont.

Entry points:

- :func:`rendered_song` ``(seed, seconds) -> (float32 audio at 16 kHz, Song)``: the labels of
  ``synth.song_for_seed`` (so the same seeds split train from eval), composed as MIDI (``compose``),
  rendered by FluidSynth (``fluid``) and, unless ``augment=False``, augmented (``augment``). Training data.
- :func:`rendered_songs` ``(seeds, seconds)``: the same clips, rendered 16 to a FluidSynth run (4x faster).
- :func:`gamma_rt.render.real.real_compositions` ``(n) -> (name, audio, Song)``: real compositions from
  music21's corpus rendered the same way. Eval only: nothing in this module imports it.
"""

from __future__ import annotations

from itertools import islice
from typing import Iterable, Iterator

import numpy as np

from gamma_rt.render.augment import augment as _augment
from gamma_rt.render.compose import compose
from gamma_rt.render.fluid import RATE, RenderError, available, render_piece, render_pieces
from gamma_rt.synth import Song, song_for_seed

PEAK = 0.8  # a render is scaled to this peak before augmentation, like synth.render

__all__ = ["RATE", "RenderError", "available", "compose", "render_song", "rendered_song", "rendered_songs"]


def render_song(song: Song, augment: bool = True, timeout_s: float = 120.0) -> np.ndarray:
    """float32 (round(song.seconds * 16000),) mono: ``song`` composed, rendered, scaled to PEAK, augmented
    with the song's seed (``augment=False``: the clean render)."""
    return _finish(render_piece(compose(song), RATE, timeout_s), song, augment)


def _finish(audio: np.ndarray, song: Song, augment: bool) -> np.ndarray:
    peak = float(np.abs(audio).max())
    if peak > 0:
        audio = audio * (PEAK / peak)
    return _augment(audio, song.seed) if augment else audio.astype(np.float32)


def rendered_song(seed: int, seconds: float = 15.0, augment: bool = True) -> tuple[np.ndarray, Song]:
    """Training clip ``seed``: (float32 audio at 16 kHz mono, its Song labels from ``song_for_seed``)."""
    song = song_for_seed(seed, seconds)
    return render_song(song, augment), song


def rendered_songs(seeds: Iterable[int], seconds: float = 15.0, augment: bool = True,
                   batch: int = 16) -> Iterator[tuple[np.ndarray, Song]]:
    """:func:`rendered_song` of each seed, in order, ``batch`` songs to a FluidSynth run."""
    seeds = iter(seeds)
    while chunk := [song_for_seed(s, seconds) for s in islice(seeds, batch)]:
        for audio, song in zip(render_pieces([compose(s) for s in chunk], RATE), chunk):
            yield _finish(audio, song, augment), song
