"""OpenMU's audio side: the exported AudioMAE + pooling + projector graphs compute what a reference built
from transformers' ViTModel computes on AudioMAE's weights, and the runtime feeds them as OpenMU does.

The oracle (export/families/openmu/reference.py) shares no code with the traced modules: it is ViTModel
loading AudioMAE's keys (qkv split), then OpenMU's own fc_norm averaging, pool_freq and segment split.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

from openmu_fixtures import *  # noqa: F401,F403
from openmu_fixtures import openmu_family
from gamma_rt.errors import CheckpointError
from gamma_rt.manifest import Manifest
from gamma_rt.runtime.backends import open_backend
from gamma_rt.runtime.embed import AudioLayout, embed_windows
from gamma_rt.runtime.audio import open_audio
from gamma_rt.synth import Music, synthesize

ort = pytest.importorskip("onnxruntime")
RATE = 16000


def relative_error(got, ref) -> float:
    return float(np.abs(got - ref).max() / np.abs(ref).max())


def _ast_features(audio: np.ndarray) -> np.ndarray:
    """OpenMU's processor output for ``audio``, (1, 128, 3072), from transformers' ASTFeatureExtractor."""
    from transformers import ASTFeatureExtractor

    fe = ASTFeatureExtractor(num_mel_bins=128, max_length=3072)
    return fe(audio, sampling_rate=RATE, return_tensors="np").input_values.transpose(0, 2, 1)


def test_onnx_embeddings_match_the_vit_reference(openmu_folder, openmu_onnx_bundle):
    from gamma_rt.export.families.openmu.reference import audio_reference

    mel = (np.random.default_rng(0).standard_normal((2, 128, 3072)) * 0.5).astype(np.float32)
    encoder = ort.InferenceSession(str(openmu_onnx_bundle / "encoder.onnx"))
    projector = ort.InferenceSession(str(openmu_onnx_bundle / "projector.onnx"))
    got = projector.run(None, {"hidden": encoder.run(None, {"mel": mel})[0]})[0]
    ref = audio_reference(openmu_family(openmu_folder))(torch.from_numpy(mel)).numpy()
    assert got.shape == ref.shape == (2, 192, 64)
    assert relative_error(got, ref) <= 1e-4


def test_each_segment_gives_its_own_64_tokens(openmu_onnx_bundle):
    """Changing the last 1,024 frames changes tokens 128..191 only: the segments are encoded apart."""
    encoder = ort.InferenceSession(str(openmu_onnx_bundle / "encoder.onnx"))
    mel = (np.random.default_rng(1).standard_normal((1, 128, 3072)) * 0.5).astype(np.float32)
    changed = mel.copy()
    changed[..., 2048:] += 1.0
    a, b = (encoder.run(None, {"mel": m})[0][0] for m in (mel, changed))
    np.testing.assert_array_equal(a[:128], b[:128])
    assert np.abs(a[128:] - b[128:]).min(axis=1).max() > 0


def test_pooling_averages_patches_64_apart():
    from gamma_rt.export.families.openmu.audiomae import pool_patches

    patches = torch.arange(512, dtype=torch.float32).reshape(1, 512, 1)
    pooled = pool_patches(patches)[0, :, 0]
    expected = torch.tensor([np.mean([j + 64 * g for g in range(8)]) for j in range(64)], dtype=torch.float32)
    torch.testing.assert_close(pooled, expected)


def _embed_file(bundle, path) -> list:
    manifest = Manifest.load(bundle)
    backend = open_backend(bundle, manifest, "ort-cpu", "fp32")
    layout = AudioLayout.from_manifest(manifest.audio)
    return list(embed_windows(open_audio(path), backend, layout, overlap=False))


def test_the_runtime_embeds_a_file_as_openmu_does(tmp_path, openmu_folder, openmu_onnx_bundle):
    """A 12 s file: Kaldi fbank of the real samples, padded to 3,072 frames; all 192 tokens are kept."""
    from gamma_rt.export.families.openmu.reference import audio_reference

    audio = synthesize(Music(12.0, RATE, 1))[:, 0]
    path = tmp_path / "clip.wav"
    sf.write(path, audio, RATE, subtype="FLOAT")
    (window,) = _embed_file(openmu_onnx_bundle, path)
    ref = audio_reference(openmu_family(openmu_folder))(torch.from_numpy(_ast_features(audio))).numpy()[0]
    assert window.embeddings.shape == (192, 64)
    assert relative_error(window.embeddings, ref) <= 1e-4


def test_audio_past_30_72_s_is_cut_as_openmu_truncates(tmp_path, capsys, openmu_folder, openmu_onnx_bundle):
    """OpenMU's fbank of the whole 40 s, cut to 3,072 frames: the runtime's one window gives its tokens."""
    from gamma_rt.export.families.openmu.reference import audio_reference

    audio = synthesize(Music(40.0, RATE, 1))[:, 0]
    path = tmp_path / "long.wav"
    sf.write(path, audio, RATE, subtype="FLOAT")
    windows = _embed_file(openmu_onnx_bundle, path)
    assert len(windows) == 1 and windows[0].end_s == pytest.approx(30.72)
    assert "using the first 30.72 s" in capsys.readouterr().err
    ref = audio_reference(openmu_family(openmu_folder))(torch.from_numpy(_ast_features(audio))).numpy()[0]
    assert relative_error(windows[0].embeddings, ref) <= 1e-4


def test_a_folder_without_audiomae_weights_is_refused_naming_the_file(tmp_path, openmu_folder):
    folder = tmp_path / "openmu"
    shutil.copytree(openmu_folder, folder)
    (folder / "vitb_finetuned.pth").unlink()
    with pytest.raises(CheckpointError, match="vitb_finetuned.pth") as err:
        openmu_family(folder)
    assert "\n" not in str(err.value)


def test_a_projector_of_another_type_is_refused_naming_the_field(tmp_path, openmu_folder):
    import json

    folder = tmp_path / "openmu"
    shutil.copytree(openmu_folder, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "mm_projector_type": "linear"}))
    with pytest.raises(CheckpointError, match="mm_projector_type is 'linear'"):
        openmu_family(folder)


def test_every_window_reads_past_30_72_s_and_says_it_departs(tmp_path, capsys, openmu_bundle):
    from gamma_rt.runtime import Pipeline

    path = tmp_path / "long.wav"
    sf.write(path, synthesize(Music(40.0, RATE, 1))[:, 0], RATE, subtype="FLOAT")
    with Pipeline.open(openmu_bundle, threads=1) as pipe:
        assert [len(w.embeddings) for w in pipe.embed(path)] == [192]
    with Pipeline.open(openmu_bundle, threads=1, every_window=True) as pipe:
        windows = list(pipe.embed(path))
    assert [len(w.embeddings) for w in windows] == [192, 192]
    assert windows[1].start_s == pytest.approx(30.72)
    assert "the model was not trained on longer audio" in capsys.readouterr().err
