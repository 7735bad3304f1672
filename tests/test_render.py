"""The rendered training source: MIDI that says its labels, FluidSynth renders that sound like them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gamma_rt.render import RATE, RenderError, available, compose, render_song, rendered_song, rendered_songs
from gamma_rt.render import augment as aug
from gamma_rt.render import fluid, midi
from gamma_rt.render.compose import CHANNELS
from gamma_rt.synth import TONICS, Song, song_for_seed

needs_fluidsynth = pytest.mark.skipif(available() is not None, reason=str(available()))


def stem(song: Song, *names: str) -> np.ndarray:
    """The clean render of only the named instruments of ``song``'s piece (same notes as in the mix)."""
    piece = compose(song)
    channels = {CHANNELS[n] for n in names}
    only = dataclasses.replace(piece, notes=[n for n in piece.notes if n.channel in channels],
                               programs={c: p for c, p in piece.programs.items() if c in channels},
                               sound_off={c: s for c, s in piece.sound_off.items() if c in channels})
    return fluid.render_piece(only)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


@pytest.mark.parametrize("seed", range(8))
def test_midi_file_parses_back_with_the_labelled_tempo_meter_and_key(tmp_path, seed):
    song = song_for_seed(seed)
    piece = midi.read(midi.write(tmp_path / "song.mid", compose(song)))
    assert round(piece.bpm) == song.bpm
    assert piece.beats_per_bar == song.beats_per_bar
    assert (TONICS[piece.tonic_pc], "minor" if piece.minor else "major") == (song.tonic, song.mode)
    assert piece.seconds == pytest.approx(song.seconds, abs=0.01)
    assert {CHANNELS[i] for i in song.instruments} == {n.channel for n in piece.notes}


def test_pieces_use_several_programs_progressions_and_both_meters():
    songs = [song_for_seed(s) for s in range(60)]
    pieces = [compose(s) for s in songs]
    programs = {}
    for song, piece in zip(songs, pieces):
        for name in song.instruments:
            programs.setdefault(name, set()).add(piece.programs[CHANNELS[name]])
    assert all(len(p) >= 3 for p in programs.values()), programs
    assert {s.beats_per_bar for s in songs} == {3, 4}
    # the pitch classes the chord player plays in bar two, relative to the tonic: the progressions differ
    second_bars = set()
    for song, piece in zip(songs, pieces):
        bar = 60 / song.bpm * song.beats_per_bar
        chord = CHANNELS[next(i for i in song.instruments if i in ("piano", "guitar", "organ"))]
        second_bars.add((song.mode, frozenset((n.pitch - TONICS.index(song.tonic)) % 12 for n in piece.notes
                                              if n.channel == chord and (n.start_s + 0.02) // bar == 1)))
    roots = {pcs for mode, pcs in second_bars if mode == "major"}
    assert len(roots) >= 3, second_bars


@needs_fluidsynth
@pytest.mark.parametrize("seed", [0, 3, 11])
def test_rendered_song_has_the_labelled_length_and_is_not_silent(seed):
    audio, song = rendered_song(seed, seconds=12.0)
    assert audio.dtype == np.float32 and audio.shape == (12 * RATE,)
    assert rms(audio) > 1e-3 and np.abs(audio).max() <= 1.0
    assert all(rms(audio[i:i + RATE]) > 1e-4 for i in range(0, len(audio), 3 * RATE))  # no silent stretch


def onset_envelope(audio: np.ndarray, hop: int = 160) -> np.ndarray:
    """Half-wave rectified spectral flux, one value per 10 ms."""
    frames = np.lib.stride_tricks.sliding_window_view(audio, 1024)[::hop] * np.hanning(1024)
    mag = np.log1p(100 * np.abs(np.fft.rfft(frames, axis=1)))
    flux = np.maximum(0.0, np.diff(mag, axis=0)).sum(axis=1)
    return flux - flux.mean()


@needs_fluidsynth
@pytest.mark.parametrize("seed", [1, 2, 4, 6])
def test_onset_autocorrelation_peaks_near_the_labelled_beat(seed):
    song = song_for_seed(seed)
    envelope = onset_envelope(render_song(song, augment=False))
    corr = np.correlate(envelope, envelope, "full")[len(envelope) - 1:]
    beat = 60.0 / song.bpm * 100  # in 10 ms frames
    lags = np.arange(int(beat * 0.7), int(beat * 1.4) + 1)
    best = lags[np.argmax(corr[lags])]
    assert abs(best - beat) <= 0.05 * beat + 1, (song, best, beat)


@needs_fluidsynth
def test_mix_is_the_sum_of_its_instruments_and_drums_sound_only_when_labelled():
    with_drums = next(song_for_seed(s) for s in range(100) if "drums" in song_for_seed(s).instruments)
    without = next(song_for_seed(s) for s in range(100) if "drums" not in song_for_seed(s).instruments)
    for song in (with_drums, without):
        mix = fluid.render_piece(compose(song))
        drums = stem(song, "drums")
        others = stem(song, *[i for i in song.instruments if i != "drums"])
        assert rms(mix - drums - others) < 0.02 * rms(mix)  # FluidSynth mixes voices additively
        assert (rms(drums) > 1e-3) == ("drums" in song.instruments)
    assert not any(n.channel == midi.DRUM_CHANNEL for n in compose(without).notes)


@needs_fluidsynth
@pytest.mark.parametrize("event", ["enters", "stops"])
def test_event_instrument_is_silent_on_the_far_side_of_its_second(event):
    song = next(s for s in map(song_for_seed, range(200)) if s.event == event)
    part = stem(song, song.event_instrument)
    at = song.event_second * RATE
    before, after = part[: at - RATE // 50], part[at + RATE // 10:]
    silent, sounding = (before, after) if event == "enters" else (after, before)
    assert rms(silent) < 1e-5, (song, rms(silent))
    assert rms(sounding) > 1e-3, (song, rms(sounding))


@needs_fluidsynth
def test_augmentation_is_seeded_keeps_the_length_and_changes_the_audio():
    audio, _ = rendered_song(5, seconds=6.0, augment=False)
    for seed in (0, 1, 2, 5):
        once, twice = aug.augment(audio, seed), aug.augment(audio, seed)
        assert once.dtype == np.float32 and once.shape == audio.shape
        np.testing.assert_array_equal(once, twice)
        assert rms(once - audio) > 1e-4
    assert rms(aug.augment(audio, 0) - aug.augment(audio, 1)) > 1e-4


@pytest.mark.parametrize("codec", ["mp3", "opus"])
def test_codec_round_trip_stays_aligned_with_its_input(codec):
    t = np.arange(3 * RATE) / RATE
    audio = 0.3 * np.sin(2 * np.pi * 440 * t) * (np.sin(2 * np.pi * 2 * t) > 0)  # bursts: any delay shows
    out = aug.codec_round_trip(audio, codec, 64)
    assert out.shape == audio.shape
    assert np.corrcoef(out, audio)[0, 1] > 0.95


def test_missing_fluidsynth_or_soundfont_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RenderError, match="apt-get install -y fluidsynth fluid-soundfont-gm"):
        fluid.fluidsynth_binary()
    monkeypatch.setenv("GAMMA_RT_SOUNDFONT", str(tmp_path / "none.sf2"))
    with pytest.raises(RenderError, match="no such soundfont"):
        fluid.soundfont()


@needs_fluidsynth
def test_a_render_past_its_time_limit_is_stopped(tmp_path):
    path = midi.write(tmp_path / "song.mid", compose(song_for_seed(0, 60.0)))
    with pytest.raises(RenderError, match="took over"):
        fluid.render_midi(path, 60.0, timeout_s=0.01)


@needs_fluidsynth
def test_songs_rendered_in_one_run_sound_like_songs_rendered_apart():
    together = list(rendered_songs(range(20, 24), seconds=8.0, augment=False, batch=3))
    for seed, (audio, song) in zip(range(20, 24), together):
        apart, labels = rendered_song(seed, seconds=8.0, augment=False)
        assert labels == song and audio.shape == apart.shape
        assert np.corrcoef(audio, apart)[0, 1] > 0.99


@needs_fluidsynth
def test_nothing_of_one_piece_sounds_in_the_next_one_rendered_in_the_same_run():
    loud = compose(song_for_seed(4))
    quiet = dataclasses.replace(loud, notes=[], sound_off={})
    first, second = fluid.render_pieces([loud, quiet])
    assert rms(first) > 1e-2 and rms(second) < 1e-6
