"""30 s windows: cut as blocks arrive, last one zero-padded, padding tokens dropped."""

import numpy as np
import pytest
import soundfile as sf

from gamma_rt.runtime.audio import load_audio, open_audio
from gamma_rt.runtime.mel import N_SAMPLES, SAMPLE_RATE
from gamma_rt.runtime.windows import Window, windows

TOKENS_PER_WINDOW = 750  # 1500 encoder frames pooled by 2


def _audio(seconds: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.5, 0.5, int(seconds * SAMPLE_RATE)).astype(np.float32)


def _split(audio: np.ndarray, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.integers(0, len(audio), 25))
    return np.split(audio, cuts)  # includes empty and tiny blocks


def test_streaming_windows_equal_whole_file_windows():
    audio = _audio(75.2)
    whole = list(windows([audio]))
    streamed = list(windows(_split(audio, seed=1)))
    assert len(whole) == len(streamed) == 3
    for a, b in zip(whole, streamed):
        assert (a.index, a.start_s, a.end_s, a.n_valid) == (b.index, b.start_s, b.end_s, b.n_valid)
        np.testing.assert_array_equal(a.samples, b.samples)
    np.testing.assert_array_equal(np.concatenate([w.samples[:w.n_valid] for w in whole]), audio)


def test_last_window_is_zero_padded_and_times_mark_real_audio():
    audio = _audio(37.5)
    first, last = windows([audio])
    assert first.samples.shape == last.samples.shape == (N_SAMPLES,)
    assert last.samples.dtype == np.float32
    assert (first.start_s, first.end_s, first.n_valid) == (0.0, 30.0, N_SAMPLES)
    assert (last.index, last.start_s, last.end_s, last.n_valid) == (1, 30.0, 37.5, 7.5 * SAMPLE_RATE)
    np.testing.assert_array_equal(last.samples[:last.n_valid], audio[N_SAMPLES:])
    assert not last.samples[last.n_valid:].any()


def test_valid_tokens_drop_the_padding_and_keep_at_least_one():
    def window(n_valid: int) -> Window:
        return Window(0, 0.0, n_valid / SAMPLE_RATE, np.zeros(N_SAMPLES, np.float32), n_valid)

    assert window(N_SAMPLES).valid_tokens(TOKENS_PER_WINDOW) == 750
    assert window(int(7.3 * SAMPLE_RATE)).valid_tokens(TOKENS_PER_WINDOW) == 183  # 182.5 rounded up
    assert window(640).valid_tokens(TOKENS_PER_WINDOW) == 1  # exactly one token's worth (40 ms)
    assert window(641).valid_tokens(TOKENS_PER_WINDOW) == 2
    assert window(1).valid_tokens(TOKENS_PER_WINDOW) == 1


def test_each_window_is_yielded_as_soon_as_its_samples_arrived():
    consumed = []

    def live_blocks():
        for i in range(8):  # 8 blocks of 10 s
            consumed.append(i)
            yield _audio(10.0, seed=i)

    it = windows(live_blocks())
    next(it)
    assert consumed == [0, 1, 2]  # the first window needed only the first 30 s
    next(it)
    assert consumed == [0, 1, 2, 3, 4, 5]


def test_exact_multiple_has_no_padding_window_and_empty_input_has_none():
    assert [w.n_valid for w in windows([_audio(60.0)])] == [N_SAMPLES, N_SAMPLES]
    assert list(windows([])) == []
    assert list(windows([np.zeros(0, np.float32)])) == []


def test_windows_own_their_samples():
    kept = list(windows(_split(_audio(65.0), seed=2)))
    assert len({id(w.samples) for w in kept}) == 3
    assert not np.shares_memory(kept[0].samples, kept[1].samples)


def test_other_window_lengths_and_rates():
    ws = list(windows([np.ones(25, np.float32)], sample_rate=10, window_seconds=1))
    assert [(w.start_s, w.end_s, w.n_valid) for w in ws] == [(0.0, 1.0, 10), (1.0, 2.0, 10), (2.0, 2.5, 5)]
    with pytest.raises(ValueError, match="at least one sample"):
        list(windows([np.ones(3, np.float32)], window_seconds=0))


def test_windows_of_a_streamed_file_equal_windows_of_the_loaded_file(tmp_path):
    path = tmp_path / "song.flac"
    rate = 22050  # resampled to 16 kHz on the way in
    sf.write(path, np.random.default_rng(3).uniform(-0.4, 0.4, 31 * rate), rate)
    streamed = list(windows(open_audio(path, block_seconds=1.7)))
    whole = list(windows([load_audio(path)]))
    assert [w.n_valid for w in streamed] == [w.n_valid for w in whole] == [N_SAMPLES, SAMPLE_RATE]
    for a, b in zip(streamed, whole):
        np.testing.assert_array_equal(a.samples, b.samples)
