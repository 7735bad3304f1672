"""Labelled synthetic songs (gamma_rt/synth.py) and their questions (gamma_rt/synthetic_tasks.py): the labels
are what the audio holds, measured with plain signal processing, and the template answers score as true."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gamma_rt.synth import INSTRUMENTS, MODES, SCALES, TONICS, Song, render, song_for_seed
from gamma_rt.synthetic_tasks import (ATTRIBUTES, EVAL_SEED_BASE, QUESTIONS, answers, eval_song, parse_key, score,
                                      train_song)

RATE = 16000


def onset_envelope(audio: np.ndarray, hop: int = 160) -> np.ndarray:
    """Half-wave rectified frame-energy rise, 100 frames a second."""
    frames = audio[: len(audio) // hop * hop].reshape(-1, hop)
    energy = np.log1p(100 * (frames**2).mean(1))
    return np.maximum(0, np.diff(energy, prepend=energy[0]))


def autocorrelation(x: np.ndarray) -> np.ndarray:
    x = x - x.mean()
    ac = np.correlate(x, x, "full")[len(x) - 1:]
    return ac / ac[0]


def tempo_by_autocorrelation(audio: np.ndarray) -> float:
    """BPM from the strongest onset-autocorrelation lag of 50-190 BPM, or the shortest lag dividing it (a bar
    of 2, 3 or 4 beats) whose peak is nearly as strong: the beat, not the bar."""
    ac = autocorrelation(onset_envelope(audio))
    lags = np.arange(int(100 * 60 / 190), int(100 * 60 / 50) + 1)
    best = int(lags[np.argmax(ac[lags])])
    for k in (4, 3, 2):
        near = np.arange(best // k - 2, best // k + 3)
        near = near[near >= lags[0]]
        if len(near) and ac[near].max() > 0.7 * ac[best]:
            best = int(near[np.argmax(ac[near])])
            break
    return 60 * 100 / best


def chroma(audio: np.ndarray) -> np.ndarray:
    """(12,) spectral energy per pitch class, C first, from 200-2000 Hz."""
    spectrum = np.abs(np.fft.rfft(audio)) ** 2
    hz = np.fft.rfftfreq(len(audio), 1 / RATE)
    band = (hz > 200) & (hz < 2000)
    pitch_class = np.round(12 * np.log2(hz[band] / 440) + 69).astype(int) % 12
    return np.bincount(pitch_class, spectrum[band], 12)


@pytest.mark.parametrize("bpm", [64, 97, 128, 175])
def test_tempo_is_recovered_by_autocorrelation_within_4_percent(bpm):
    song = Song(bpm=bpm, instruments=("piano", "drums"), event_instrument="drums", event_second=1)
    assert tempo_by_autocorrelation(render(song)) == pytest.approx(bpm, rel=0.04)


@pytest.mark.parametrize("tonic, mode", [("C", "major"), ("F#", "minor"), ("A#", "major"), ("E", "minor")])
def test_key_is_the_chroma_of_the_scale_with_the_tonic_triad_on_top(tonic, mode):
    song = Song(tonic=tonic, mode=mode, instruments=("piano", "organ"), event_instrument="organ", event_second=1)
    energy = chroma(render(song))
    root = TONICS.index(tonic)
    scale = {(root + s) % 12 for s in SCALES[mode]}
    triad = {(root + SCALES[mode][k]) % 12 for k in (0, 2, 4)}
    assert energy[sorted(scale)].sum() > 0.9 * energy.sum()
    assert set(np.argsort(energy)[-3:]) == triad


@pytest.mark.parametrize("beats", [3, 4])
def test_meter_is_the_bar_length_the_onsets_repeat_at(beats):
    song = Song(bpm=120, beats_per_bar=beats, instruments=("piano", "bass", "drums"), event_instrument="drums",
                event_second=1, seconds=20.0)
    audio = render(song)
    spectrum = np.fft.rfft(audio)
    spectrum[np.fft.rfftfreq(len(audio), 1 / RATE) > 200] = 0  # the kick and the accented bass
    ac = autocorrelation(onset_envelope(np.fft.irfft(spectrum, len(audio))))
    beat = 50  # frames of 10 ms at 120 BPM
    assert (ac[3 * beat] > ac[4 * beat]) == (beats == 3)


@pytest.mark.parametrize("event", ["enters", "stops"])
def test_the_event_instrument_is_silent_on_one_side_of_its_second(event):
    song = Song(instruments=("piano", "drums"), event_instrument="drums", event=event, event_second=6)
    audio = render(song)
    spectrum = lambda part: np.abs(np.fft.rfft(part))  # noqa: E731
    hz = np.fft.rfftfreq(RATE * 5, 1 / RATE)
    before, after = (spectrum(audio[s * RATE:(s + 5) * RATE])[hz > 5000].sum() for s in (0, 8))
    assert (after > 20 * before) if event == "enters" else (before > 20 * after)


def test_every_instrument_sounds_and_each_is_its_own_timbre():
    spectra = []
    for name in INSTRUMENTS:
        audio = render(Song(instruments=(name,), event_instrument=name, event_second=0))
        assert np.abs(audio).max() == pytest.approx(0.8, abs=1e-3)
        spectra.append(np.log1p(np.abs(np.fft.rfft(audio[:RATE * 4]))[::40]))
    corr = np.corrcoef(spectra)
    assert (corr[~np.eye(len(INSTRUMENTS), dtype=bool)] < 0.97).all()


def test_songs_from_seeds_are_deterministic_and_cover_every_label():
    songs = [song_for_seed(s) for s in range(400)]
    assert song_for_seed(5) == song_for_seed(5)
    np.testing.assert_array_equal(render(songs[5]), render(song_for_seed(5)))
    assert {s.tonic for s in songs} == set(TONICS) and {s.mode for s in songs} == set(MODES)
    assert {s.beats_per_bar for s in songs} == {3, 4} and {i for s in songs for i in s.instruments} == set(INSTRUMENTS)
    assert min(s.bpm for s in songs) < 70 and max(s.bpm for s in songs) > 170
    assert all(s.event_instrument in s.instruments and 3 <= s.event_second <= s.seconds - 3 for s in songs)


def test_held_out_seeds_are_disjoint_from_training_seeds():
    assert max(train_song(i, seed).seed for i in range(2000) for seed in (0, 1, 99)) < EVAL_SEED_BASE
    assert min(eval_song(i, seed).seed for i in range(2000) for seed in (0, 1)) >= EVAL_SEED_BASE


def test_template_answers_score_as_true_and_other_songs_answers_do_not():
    for i in range(50):
        song = train_song(i)
        assert score(song, answers(song)) == {a: 1.0 for a in ATTRIBUTES}
    song = Song(tonic="D", mode="minor", bpm=96, beats_per_bar=3)
    other = dataclasses.replace(song, tonic="A", bpm=150, beats_per_bar=4, instruments=("organ", "lead"),
                                event_instrument="lead", event_second=12)
    assert score(song, answers(other)) == {"key": 0.0, "tempo": 0.0, "meter": 0.0, "instruments": 0.0, "event": 0.0}
    assert parse_key('{"tonic": "D", "mode": "minor"}') == parse_key("in D minor at 96 BPM") == "D minor"


def test_the_tagging_prompts_are_training_questions_genre_aside():
    import tomllib
    from pathlib import Path

    import gamma_rt.runtime.tagging as tagging

    prompts = tomllib.loads((Path(tagging.__file__).parent / "default_prompts.toml").read_text())["prompt"]
    asked = {q.text for q in QUESTIONS}
    assert {p["question"] for p in prompts if p["name"] != "genre"} <= asked
