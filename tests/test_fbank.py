"""The Kaldi fbank front end (runtime/fbank.py) against transformers' and torchaudio's Kaldi fbank.

transformers' ASTFeatureExtractor is AudioMAE's processor (Kaldi fbank, 128 bins, pad/cut, AudioSet
normalization); without torchaudio it runs its own numpy Kaldi path, which is the oracle here.
torchaudio's ``compliance/kaldi.py`` (what OpenMU calls) is compared too when GAMMA_RT_TORCHAUDIO_KALDI
names that file: torchaudio's wheels need their own torch, but that file is plain torch code.
"""

import importlib.util
import os
import sys
import types

import numpy as np
import pytest
import soundfile as sf

from gamma_rt.errors import BundleError
from gamma_rt.manifest import AudioSection
from gamma_rt.runtime.audio import load_audio
from gamma_rt.runtime.embed import AudioLayout, window_feeds
from gamma_rt.runtime.fbank import KaldiFbank, fbank
from gamma_rt.runtime.windows import windows
from gamma_rt.synth import Music, synthesize

RATE = 16000
FRAMES = 3072
OPENMU_AUDIO = {"sample_rate": RATE, "n_fft": 400, "hop_length": 160, "n_mels": 128, "window_seconds": 30.72,
                "window_frames": FRAMES, "tokens_per_window": 192, "front_end": "kaldi_fbank",
                "front_end_options": {"mean": -4.2677393, "std": 4.5689974}}


def _clip(tmp_path, seconds: float) -> np.ndarray:
    path = tmp_path / f"clip-{seconds}.wav"
    sf.write(path, synthesize(Music(seconds, RATE, 1)), RATE, subtype="FLOAT")
    return load_audio(path)


def _ast(audio: np.ndarray) -> np.ndarray:
    from transformers import ASTFeatureExtractor

    extractor = ASTFeatureExtractor(num_mel_bins=128, max_length=FRAMES)
    return extractor(audio, sampling_rate=RATE, return_tensors="np").input_values[0]  # (frames, bins)


@pytest.mark.parametrize("seconds", [1.0, 30.72, 41.3])
def test_fbank_features_equal_transformers_audiomae_processor(tmp_path, seconds):
    audio = _clip(tmp_path, seconds)
    ours = KaldiFbank()(audio)
    assert ours.shape == (128, FRAMES) and ours.dtype == np.float32
    np.testing.assert_allclose(ours.T, _ast(audio), rtol=0, atol=1e-4)


def _torchaudio_kaldi():
    path = os.environ.get("GAMMA_RT_TORCHAUDIO_KALDI")
    if not path:
        pytest.skip("GAMMA_RT_TORCHAUDIO_KALDI does not name torchaudio's compliance/kaldi.py")
    stub = "torchaudio" not in sys.modules  # kaldi.py imports torchaudio for mfcc's DCT only
    if stub:
        sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    try:
        spec = importlib.util.spec_from_file_location("torchaudio_kaldi", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if stub:  # transformers looks torchaudio up later; a stub without a spec would confuse it
            del sys.modules["torchaudio"]
    return module


def test_fbank_equals_torchaudio_kaldi_fbank_as_openmu_calls_it(tmp_path):
    import torch

    kaldi = _torchaudio_kaldi()
    audio = _clip(tmp_path, 12.5)
    reference = kaldi.fbank(torch.from_numpy(audio)[None], htk_compat=True, sample_frequency=RATE, use_energy=False,
                            window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10).numpy()
    ours = fbank(audio)
    assert ours.shape == reference.shape
    # torchaudio computes in float32: its own float64 run differs from its float32 run by about 8e-4 in the log
    normalized = (ours - reference) / (2 * 4.5689974)
    assert np.abs(normalized).max() <= 1e-4


def test_frames_are_those_that_fit_and_the_rest_is_normalized_zero(tmp_path):
    audio = _clip(tmp_path, 2.0)
    raw = fbank(audio)
    assert len(raw) == 1 + (len(audio) - 400) // 160
    features = KaldiFbank()(audio).T
    np.testing.assert_allclose(features[:len(raw)], (raw + 4.2677393) / (2 * 4.5689974), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(features[len(raw):], np.float32(4.2677393 / (2 * 4.5689974)))


def test_a_constant_offset_changes_nothing_as_each_frame_removes_its_mean(tmp_path):
    audio = _clip(tmp_path, 3.0)
    np.testing.assert_allclose(fbank(audio.astype(np.float64) + 0.25), fbank(audio), rtol=0, atol=1e-4)


def test_audio_shorter_than_one_frame_is_all_padding():
    features = KaldiFbank()(np.ones(399, np.float32))
    assert features.shape == (128, FRAMES)
    assert np.unique(features).size == 1


def test_a_padded_window_gives_the_features_of_its_real_audio(tmp_path):
    """The runtime's windows are zero-padded to 30.72 s; Kaldi must see only the real samples."""
    audio = _clip(tmp_path, 7.0)
    layout = AudioLayout.from_manifest(AudioSection.from_dict(OPENMU_AUDIO, "manifest.json"))
    assert isinstance(layout.front_end, KaldiFbank)
    (window,) = windows([audio], RATE, 30.72)
    mel = window_feeds(window, layout)["mel"]
    assert mel.shape == (1, 128, FRAMES)
    np.testing.assert_allclose(mel[0].T, _ast(audio), rtol=0, atol=1e-4)
    padded_whole = KaldiFbank()(window.samples)
    assert np.abs(padded_whole - mel[0]).max() > 0.1  # what reading the padding as audio would have given


@pytest.mark.parametrize("change,message", [
    ({"front_end": "mfcc"}, "audio.front_end is 'mfcc'"),
    ({"front_end_options": [1]}, "audio.front_end_options must be an object"),
])
def test_a_bad_front_end_is_refused_naming_the_field(change, message):
    with pytest.raises(BundleError, match=message):
        AudioSection.from_dict({**OPENMU_AUDIO, **change}, "manifest.json")


def test_unknown_fbank_options_are_refused_naming_the_key():
    audio = AudioSection.from_dict({**OPENMU_AUDIO, "front_end_options": {"mean": 0, "gain": 2}}, "manifest.json")
    with pytest.raises(BundleError, match="front_end_options has unknown key"):
        KaldiFbank.from_manifest(audio)


def test_a_full_window_reads_the_240_samples_after_it_as_the_whole_file_does(tmp_path):
    """OpenMU computes the fbank over the whole file, then keeps 3,072 frames: the last two reach 240
    samples past 30.72 s. The runtime's window carries those samples (Window.after)."""
    audio = _clip(tmp_path, 41.3)
    layout = AudioLayout.from_manifest(AudioSection.from_dict(OPENMU_AUDIO, "manifest.json"))
    assert layout.front_end.lookahead == 240
    blocks = [audio[i:i + 7919] for i in range(0, len(audio), 7919)]
    first, second = windows(blocks, RATE, 30.72, layout.front_end.lookahead)
    np.testing.assert_array_equal(first.after, audio[491520:491760])
    assert first.n_valid == 491520 and second.n_valid == len(audio) - 491520 and len(second.after) == 0
    np.testing.assert_array_equal(second.samples[:second.n_valid], audio[491520:])
    mel = window_feeds(first, layout)["mel"][0]
    np.testing.assert_allclose(mel.T, _ast(audio), rtol=0, atol=1e-4)
    without = KaldiFbank()(first.samples)  # what a window cut at 30.72 s alone gives: its last 2 frames differ
    assert np.abs(without[:, -2:] - mel[:, -2:]).max() > 0.01
    np.testing.assert_array_equal(without[:, :-2], mel[:, :-2])


def test_windows_with_lookahead_keep_every_sample_once():
    audio = np.arange(1000, dtype=np.float32)
    cut = list(windows([audio[:333], audio[333:]], 100, 3.0, lookahead=40))
    assert [w.n_valid for w in cut] == [300, 300, 300, 100]
    np.testing.assert_array_equal(np.concatenate([w.samples[:w.n_valid] for w in cut]), audio)
    assert [len(w.after) for w in cut] == [40, 40, 40, 0]
    np.testing.assert_array_equal(cut[2].after, audio[900:940])
