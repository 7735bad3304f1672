"""Calibration data from real audio files (export/calibration.py) and the per-component embedding-cosine report
(export/cosine_report.py), run for real with ONNX Runtime: fp16 graphs against fp32 on the tiny bundle.

Calibration music is written at 44.1 kHz stereo (synth's default rate), so the front end resamples and mixes it."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from gamma_rt.errors import GammaError
from gamma_rt.export.calibration import calibration_batches, calibration_files
from gamma_rt.export.cosine_report import OrtChain, cosine_report, format_report, token_cosines
from gamma_rt.hashing import sha256_files
from gamma_rt.manifest import Manifest
from gamma_rt.synth import Music, write


@pytest.fixture(scope="module")
def fp16_bundle(tiny_bundle_onnx, tiny_checkpoint, tmp_path_factory):
    from gamma_rt.export.onnx_export import export_onnx

    folder = tmp_path_factory.mktemp("calib") / "bundle"
    shutil.copytree(tiny_bundle_onnx, folder)
    export_onnx(tiny_checkpoint, folder, precision="fp16")
    (folder / "demo").mkdir()
    write(folder / "demo" / "song.flac", Music(40.0, channels=2))
    return folder


def test_calibration_audio_is_the_demo_music_plus_the_user_folder(fp16_bundle, tmp_path):
    write(tmp_path / "b.wav", Music(5.0, channels=2, seed=1))
    (tmp_path / "notes.txt").write_text("not audio")
    files = calibration_files(fp16_bundle, tmp_path)
    assert [f.name for f in files] == ["song.flac", "b.wav"]


def test_no_calibration_audio_says_where_to_put_some(tmp_path):
    with pytest.raises(GammaError, match="no calibration audio: put music in .*demo or pass --calibration-audio"):
        calibration_files(tmp_path)
    with pytest.raises(GammaError, match="--calibration-audio folder not found"):
        calibration_files(tmp_path, tmp_path / "missing")


def test_batches_are_log_mel_windows_of_every_30_s_of_audio(fp16_bundle, tmp_path):
    write(tmp_path / "b.wav", Music(5.0, channels=2, seed=1))
    files = calibration_files(fp16_bundle, tmp_path)  # 40 s -> 2 windows, 5 s -> 1 window
    singles = list(calibration_batches(files, batch=1))
    assert [b.shape for b in singles] == [(1, 128, 3000)] * 3
    assert [b.shape for b in calibration_batches(files, batch=2)] == [(2, 128, 3000)]  # short last batch dropped
    # Whisper's log-mel scale: clamped to max-8 (in log10), then (x + 4) / 4
    for b in singles:
        assert b.max() - b.min() <= 2.0 + 1e-6 and np.isfinite(b).all()
    assert len(list(calibration_batches(files, batch=1, max_windows=2))) == 2


def test_calibration_hash_changes_when_the_music_changes(fp16_bundle, tmp_path):
    before = sha256_files(calibration_files(fp16_bundle))
    write(tmp_path / "c.wav", Music(3.0, channels=2))
    assert sha256_files(calibration_files(fp16_bundle, tmp_path)) != before


def test_token_cosines_are_per_vector():
    a = np.array([[[1.0, 0.0], [0.0, 2.0]]])
    b = np.array([[[2.0, 0.0], [1.0, 0.0]]])
    np.testing.assert_allclose(token_cosines(a, b), [[1.0, 0.0]])


def test_fp16_graphs_keep_embeddings_close_to_fp32_per_component(fp16_bundle):
    m = Manifest.load(fp16_bundle)
    mel = list(calibration_batches(calibration_files(fp16_bundle), batch=2))
    report = cosine_report(OrtChain(fp16_bundle, m), OrtChain(fp16_bundle, m, "fp16"), mel)
    assert set(report) == {"temporal_encoder", "global_encoder", "fusion", "projector", "chained"}
    for name, r in report.items():
        assert 0.99 < r["min"] <= r["mean"] < 1.0, (name, r)  # fp16 is close, and not bit-identical
    assert "fusion" in format_report(report, "ORT fp16")


def test_report_isolates_the_component_that_is_off(fp16_bundle):
    """A candidate whose fusion output is disturbed lowers fusion's own cosine and the chained one, not the experts'."""
    m = Manifest.load(fp16_bundle)
    reference = OrtChain(fp16_bundle, m)
    rng = np.random.default_rng(0)

    def disturbed(name, feed):
        out = reference(name, feed)
        return out + rng.standard_normal(out.shape).astype(np.float32) * out.std() if name == "fusion" else out

    mel = list(calibration_batches(calibration_files(fp16_bundle), batch=1, max_windows=1))
    report = cosine_report(reference, disturbed, mel)
    assert report["temporal_encoder"]["min"] == pytest.approx(1.0) and report["projector"]["min"] == pytest.approx(1.0)
    assert report["fusion"]["mean"] < 0.9 and report["chained"]["mean"] < 0.99


def test_calibration_data_hash_changes_with_the_windows_and_the_batching():
    from gamma_rt.export.calibration import calibration_sha256

    a = np.zeros((1, 128, 3000), np.float32)
    b = a.copy()
    b[0, 0, 0] = 1.0
    assert calibration_sha256([a]) == calibration_sha256([a.copy()])
    assert len({calibration_sha256([a]), calibration_sha256([b]), calibration_sha256([a, a]),
                calibration_sha256([np.concatenate([a, a])])}) == 4


def _fake_trt(version, with_calibrator=True):
    import types

    class Base:
        def __init__(self):
            pass

    return types.SimpleNamespace(__version__=version, **({"IInt8EntropyCalibrator2": Base} if with_calibrator else {}))


class _Cudart:
    class cudaMemcpyKind:
        cudaMemcpyHostToDevice = 1

    def __init__(self):
        self.copies = []

    def cudaMalloc(self, n):
        return 0, 1000 + n

    def cudaMemcpy(self, dst, src, n, kind):
        self.copies.append(n)
        return (0,)

    def cudaFree(self, ptr):
        return (0,)


def test_calibrator_reads_only_its_own_table_and_is_refused_on_trt11(tmp_path):
    from gamma_rt.export.calibration import make_calibrator

    with pytest.raises(GammaError, match="TensorRT 11.1.0 has no INT8 calibrators"):
        make_calibrator(_fake_trt("11.1.0", with_calibrator=False), None, [], tmp_path / "x.calib", _Cudart())
    feeds = [{"temporal": np.zeros((1, 4, 2), np.float16)}]
    (tmp_path / "old.calib").write_bytes(b"stale")
    cal = make_calibrator(_fake_trt("10.3.0"), None, feeds, tmp_path / "new.calib", _Cudart())
    assert cal.read_calibration_cache() is None  # another data hash, another file: the stale table is not read
    assert cal.get_batch(["temporal"]) == [1016] and cal.get_batch(["temporal"]) is None
    cal.write_calibration_cache(b"table")
    assert (tmp_path / "new.calib").read_bytes() == b"table" and cal.read_calibration_cache() == b"table"
