"""The ONNX Runtime chain executor (runtime/ort_backend.py) with IOBinding, run for real on ORT's CPU provider,
window batching in the embed path (runtime/embed.py), and what happens when ORT does not load the provider a
backend stands for (runtime/backends.py). The CUDA provider and its CUDA graphs need a GPU: skipped here."""

from __future__ import annotations

import numpy as np
import pytest

from gamma_rt.errors import GammaError
from gamma_rt.manifest import Manifest
from gamma_rt.runtime.backends import BACKENDS, Machine, ProviderNotLoaded, open_backend
from gamma_rt.runtime.ort_backend import OrtBackend

from flamingo_fixtures import mf_bundle, mf_folder  # noqa: F401  (session fixtures)


def _windows(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    mel = np.random.default_rng(seed).standard_normal((n, 128, 3000)).astype(np.float32)
    return {"mel": mel, "mel_mask": np.ones((n, 3000), np.int64), "window_index": np.arange(n, dtype=np.int64)}


def test_iobinding_chain_equals_running_each_graph_on_host_arrays(tiny_bundle_onnx):
    import onnxruntime as ort

    m = Manifest.load(tiny_bundle_onnx)
    backend = OrtBackend(tiny_bundle_onnx, m, "fp32", threads=1, record=BACKENDS["ort-cpu"])
    feeds = _windows(2)
    values = dict(feeds)
    for step in m.audio.chain:
        session = ort.InferenceSession(str(m.path(tiny_bundle_onnx, step.component)), providers=["CPUExecutionProvider"])
        out = session.run(list(step.outputs), {g: values[v] for g, v in step.inputs.items()})
        values.update({step.outputs[o]: r for o, r in zip(step.outputs, out)})
    np.testing.assert_array_equal(backend.encode(feeds), values["embeddings"])
    assert "running: CPUExecutionProvider" in backend.reason


@pytest.mark.parametrize("batch", [4, 8])
def test_batched_windows_encode_like_one_window_at_a_time(tiny_bundle_onnx, batch):
    backend = OrtBackend(tiny_bundle_onnx, Manifest.load(tiny_bundle_onnx), "fp32", threads=1, record=BACKENDS["ort-cpu"])
    feeds = _windows(batch, seed=batch)
    together = backend.encode(feeds)
    alone = np.concatenate([backend.encode({k: v[i:i + 1] for k, v in feeds.items()}) for i in range(batch)])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-5)


def test_embed_path_batches_windows_in_streaming_order_with_the_same_embeddings(tiny_bundle_onnx):
    from gamma_rt.runtime.embed import AudioLayout, embed_windows

    m = Manifest.load(tiny_bundle_onnx)
    backend = OrtBackend(tiny_bundle_onnx, m, "fp32", threads=1, record=BACKENDS["ort-cpu"])
    layout = AudioLayout.from_manifest(m.audio)
    audio = np.random.default_rng(1).standard_normal(layout.sample_rate * 100).astype(np.float32) * 0.1
    blocks = [audio[i:i + 48000] for i in range(0, len(audio), 48000)]
    one = list(embed_windows(blocks, backend, layout, overlap=True, batch=1))
    calls = []
    encode = backend.encode
    backend.encode = lambda feeds: calls.append(len(feeds["mel"])) or encode(feeds)
    four = list(embed_windows(blocks, backend, layout, overlap=True, batch=4))
    assert calls == [4]  # 100 s: 4 windows, one call
    assert [w.index for w in four] == [w.index for w in one] == [0, 1, 2, 3]
    for a, b in zip(one, four):
        assert (a.start_s, a.end_s, a.embeddings.shape) == (b.start_s, b.end_s, b.embeddings.shape)
        np.testing.assert_allclose(a.embeddings, b.embeddings, rtol=1e-5, atol=1e-5)


def test_a_provider_ort_did_not_load_is_an_error_when_asked_for_and_skipped_by_auto(tiny_bundle_onnx):
    """ORT lists CUDAExecutionProvider where onnxruntime-gpu is installed but runs the session on the CPU when
    CUDA does not load; here (no onnxruntime-gpu) the same silent fallback happens on asking for it."""
    m = Manifest.load(tiny_bundle_onnx)
    with pytest.raises(ProviderNotLoaded, match="did not load CUDAExecutionProvider"):
        OrtBackend(tiny_bundle_onnx, m, "fp32", threads=1, record=BACKENDS["ort-cuda"])
    says_cuda = Machine(False, ("CUDAExecutionProvider", "CPUExecutionProvider"))
    with pytest.raises(GammaError, match="--backend ort-cuda: .*did not load CUDAExecutionProvider") as e:
        open_backend(tiny_bundle_onnx, m, "ort-cuda", "fp32", 1, machine=says_cuda)
    assert "\n" not in str(e.value)
    backend = open_backend(tiny_bundle_onnx, m, "auto", "auto", 1, machine=says_cuda)
    assert backend.name == "ort-cpu" and "ort-cuda skipped" in backend.reason and "did not load" in backend.reason


def test_ort_cuda_fp16_with_cuda_graphs_matches_cpu_fp32():
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed (no CUDA provider on this machine)")
    pytest.skip("needs a GPU session with an fp16 bundle: run on the lent GPU machine (not lent to this task)")


def test_the_flamingo_two_graph_chain_with_mask_and_window_index_runs_through_iobinding(mf_bundle):
    import onnxruntime as ort

    m = Manifest.load(mf_bundle)
    backend = OrtBackend(mf_bundle, m, "fp32", threads=1, record=BACKENDS["ort-cpu"])
    feeds = _windows(2)
    feeds["mel_mask"][1, 1000:] = 0
    feeds["window_index"] = np.array([0, 5], np.int64)
    values = dict(feeds)
    for step in m.audio.chain:
        session = ort.InferenceSession(str(m.path(mf_bundle, step.component)), providers=["CPUExecutionProvider"])
        out = session.run(list(step.outputs), {g: values[v] for g, v in step.inputs.items()})
        values.update({step.outputs[o]: r for o, r in zip(step.outputs, out)})
    np.testing.assert_array_equal(backend.encode(feeds), values["embeddings"])
