"""The numpy Whisper front end against transformers' WhisperFeatureExtractor (the oracle)."""

import numpy as np
import pytest

from gamma_rt.runtime import mel

transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4  # absolute, in the (x + 4) / 4 log-mel units


@pytest.fixture(scope="module")
def extractor():
    return transformers.WhisperFeatureExtractor(feature_size=128)


def _signal(kind: str, seconds: float, seed: int = 0) -> np.ndarray:
    n = int(round(seconds * mel.SAMPLE_RATE))
    t = np.arange(n) / mel.SAMPLE_RATE
    if kind == "noise":
        return (0.1 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)
    if kind == "sines":
        x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 2999 * t) + 0.05 * np.sin(2 * np.pi * 7400 * t)
        return x.astype(np.float32)
    return np.zeros(n, np.float32)


@pytest.mark.parametrize("seconds", [30.0, 7.3, 1.0])
@pytest.mark.parametrize("kind", ["noise", "sines", "silence"])
def test_log_mel_matches_whisper_feature_extractor(extractor, kind, seconds):
    audio = _signal(kind, seconds)
    reference = extractor(audio, sampling_rate=mel.SAMPLE_RATE, return_tensors="np").input_features[0]
    ours = mel.log_mel_spectrogram(mel.pad_or_trim(audio))
    assert ours.shape == (mel.N_MELS, mel.N_FRAMES) == reference.shape
    assert ours.dtype == np.float32
    assert np.abs(ours - reference).max() <= TOLERANCE


def test_batch_equals_each_window_alone(extractor):
    batch = np.stack([_signal("noise", 30.0, seed=1), mel.pad_or_trim(_signal("sines", 7.3)), _signal("silence", 30.0)])
    together = mel.log_mel_spectrogram(batch)
    assert together.shape == (3, mel.N_MELS, mel.N_FRAMES)
    for i, window in enumerate(batch):
        np.testing.assert_array_equal(together[i], mel.log_mel_spectrogram(window))
    reference = extractor(list(batch), sampling_rate=mel.SAMPLE_RATE, return_tensors="np").input_features
    assert np.abs(together - reference).max() <= TOLERANCE


def test_mel_filters_match_transformers_slaney_bank(extractor):
    ours = mel.mel_filters()
    assert ours.shape == (128, 201) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, extractor.mel_filters.T, rtol=0, atol=1e-7)


def test_constants_describe_a_30_second_window():
    assert mel.N_SAMPLES == 480000 and mel.N_FRAMES == 3000
    assert mel.N_SAMPLES // mel.HOP_LENGTH == mel.N_FRAMES


def test_pad_or_trim_pads_with_zeros_and_cuts_the_tail():
    short = np.ones(10, np.float32)
    padded = mel.pad_or_trim(short, 16)
    np.testing.assert_array_equal(padded, np.r_[np.ones(10), np.zeros(6)])
    long = np.arange(20, dtype=np.float32).reshape(2, 10)
    np.testing.assert_array_equal(mel.pad_or_trim(long, 4), long[:, :4])


def test_silence_is_the_floor_value():
    # log10(1e-10) = -10 everywhere, so (x + 4) / 4 = -1.5
    out = mel.log_mel_spectrogram(np.zeros(mel.N_SAMPLES, np.float32))
    assert np.all(out == np.float32(-1.5))


def test_wrong_rank_is_refused():
    with pytest.raises(ValueError, match="shape"):
        mel.log_mel_spectrogram(np.zeros((1, 2, mel.N_SAMPLES), np.float32))
