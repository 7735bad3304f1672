"""gamma_rt/synth.py: the one music generator of the tests, the demo and the benchmarks."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from gamma_rt.synth import G_MAJOR_I_VI_IV_V, Music, blocks, synthesize, write


@pytest.mark.parametrize("rate, channels", [(8000, None), (16000, 1), (44100, 2), (96000, 8)])
def test_any_rate_and_channel_count_gives_float32_of_the_asked_shape(rate, channels):
    audio = synthesize(Music(1.25, rate, channels))
    n = int(round(1.25 * rate))
    assert audio.dtype == np.float32
    assert audio.shape == ((n,) if channels is None else (n, channels))
    assert np.isfinite(audio).all() and 0.05 < np.abs(audio).max() < 0.9


def test_same_seed_same_music_other_seed_other_music():
    a = synthesize(Music(2.0, 16000, seed=1))
    np.testing.assert_array_equal(a, synthesize(Music(2.0, 16000, seed=1)))
    assert not np.array_equal(a, synthesize(Music(2.0, 16000, seed=2)))
    assert not np.array_equal(a, synthesize(Music(2.0, 16000, seed=1, chords=G_MAJOR_I_VI_IV_V)))


def test_channels_differ_so_a_mixdown_is_not_a_no_op():
    stereo = synthesize(Music(2.0, 22050, 2))
    assert not np.allclose(stereo[:, 0], stereo[:, 1])
    assert not np.allclose(stereo[:, 0] / np.abs(stereo[:, 0]).max(), stereo[:, 1] / np.abs(stereo[:, 1]).max())


def test_music_has_a_beat_and_tones():
    audio = synthesize(Music(4.0, 16000))
    spectrum = np.abs(np.fft.rfft(audio))
    freqs = np.fft.rfftfreq(len(audio), 1 / 16000)
    assert spectrum[(freqs > 250) & (freqs < 700)].max() > 20 * np.median(spectrum)  # the chords' notes
    energy = (audio.reshape(-1, 400) ** 2).mean(axis=1)  # 25 ms frames
    assert energy.max() > 10 * energy.min()  # decaying notes and kicks, not a steady drone


def test_blocks_concatenate_to_the_whole_and_the_written_file_holds_it(tmp_path):
    music = Music(65.0, 16000, 2, seed=3)
    whole = synthesize(music)
    parts = list(blocks(music))
    assert [len(p) for p in parts] == [480000, 480000, 80000]
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    path = write(tmp_path / "song.wav", music, subtype="FLOAT")
    read, rate = sf.read(path, dtype="float32")
    assert rate == 16000
    np.testing.assert_array_equal(read, whole)


def test_write_takes_the_format_from_the_suffix_or_as_given(tmp_path):
    flac = write(tmp_path / "a.flac", Music(0.5, 44100, 2))
    assert sf.info(str(flac)).format == "FLAC" and sf.info(str(flac)).channels == 2
    ogg = write(tmp_path / "b.audio", Music(0.5, 48000), format="OGG", subtype="VORBIS")
    assert sf.info(str(ogg)).format == "OGG" and sf.info(str(ogg)).duration == pytest.approx(0.5, abs=0.01)
    seen = []
    write(tmp_path / "c.wav", Music(61.0, 8000), progress=lambda items, **kw: seen.append(kw) or items)
    assert seen == [{"description": "writing c.wav", "total": 3}]
