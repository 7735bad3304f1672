"""TrtChain runs any manifest audio chain: buffers, streams and copies come from ``audio.chain``.

TensorRT and a GPU are not on this machine, so the chain is opened for real (engine records, sha256
checks, buffer planning, stream fork/join, CUDA graph capture, input and output copies) against stand-ins
for the two native APIs at their boundary: a ``tensorrt`` module whose engines report the manifest's own
graph I/O, and a cuda-python runtime that records every call. The order of those calls is the property.
"""

from __future__ import annotations

import numpy as np
import pytest

from gamma_rt import audio_chain
from gamma_rt.hashing import sha256_file
from gamma_rt.manifest import Component, Manifest, TensorSpec
from gamma_rt.runtime import trt_backend
from gamma_rt.runtime.engine_record import GpuIdentity

GPU = GpuIdentity("NVIDIA H100 80GB HBM3", "9.0", "10.13.0")
B = "batch"


def spec(name, *dims, dtype="float32"):
    return TensorSpec(name, [B, *dims], dtype)


GAMMA = {
    "chain": [audio_chain.step(*s) for s in (
        ("temporal_encoder", {"mel": "mel"}, {"hidden": "temporal"}),
        ("global_encoder", {"mel": "mel"}, {"hidden": "global"}),
        ("fusion", {"temporal": "temporal", "global": "global"}, {"fused": "fused"}),
        ("projector", {"fused": "fused"}, {"embeddings": "embeddings"}))],
    "io": {"temporal_encoder": ([spec("mel", 128, 3000)], [spec("hidden", 1500, 8)]),
           "global_encoder": ([spec("mel", 128, 3000)], [spec("hidden", 1500, 8)]),
           "fusion": ([spec("temporal", 1500, 8), spec("global", 1500, 8)], [spec("fused", 1500, 8)]),
           "projector": ([spec("fused", 1500, 8)], [spec("embeddings", 750, 16)])},
}
FLAMINGO = {
    "chain": [audio_chain.step("encoder", {"mel": "mel", "mel_mask": "mel_mask"}, {"hidden": "hidden"}),
              audio_chain.step("projector", {"hidden": "hidden", "window_index": "window_index"},
                               {"embeddings": "embeddings"})],
    "io": {"encoder": ([spec("mel", 128, 3000), spec("mel_mask", 3000, dtype="int64")], [spec("hidden", 750, 8)]),
           "projector": ([spec("hidden", 750, 8), TensorSpec("window_index", [B], "int64")],
                         [spec("embeddings", 750, 16)])},
}


class FakeCudart:
    """cuda-python's runtime API, recording calls; every handle and device pointer is distinct."""

    class cudaMemcpyKind:
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost = "h2d", "d2h"

    class cudaStreamCaptureMode:
        cudaStreamCaptureModeThreadLocal = "thread-local"

    cudaStreamNonBlocking = cudaEventDisableTiming = 1

    def __init__(self):
        self.calls, self.next = [], 0

    def __getattr__(self, name):
        def call(*args):
            self.calls.append((name, *args))
            self.next += 1
            base = {"cudaMalloc": 1000, "cudaStreamCreateWithFlags": 2000, "cudaEventCreateWithFlags": 3000}
            return 0, base.get(name, 9000) + self.next  # ints, as the real handles convert with int()
        return call


class FakeEngine:
    """An engine as TensorRT reports it: the I/O of the graph it was built from, a batch profile 1..4."""

    def __init__(self, component: Component, log: list):
        self.tensors = [(t, True) for t in component.inputs] + [(t, False) for t in component.outputs]
        self.num_io_tensors, self.log = len(self.tensors), log

    def get_tensor_name(self, i):
        return self.tensors[i][0].name

    def _spec(self, name):
        return next(t for t in self.tensors if t[0].name == name)

    def get_tensor_mode(self, name):
        return FakeTrt.TensorIOMode.INPUT if self._spec(name)[1] else FakeTrt.TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name):
        return self._spec(name)[0].dtype

    def get_tensor_profile_shape(self, name, profile):
        return [(1,), (1,), (4,)]

    def create_execution_context(self):
        return FakeContext(self, self.log)


class FakeContext:
    def __init__(self, engine, log):
        self.engine, self.log, self.addresses = engine, log, {}

    def set_input_shape(self, tensor, shape):
        return True

    def set_tensor_address(self, tensor, address):
        self.addresses[tensor] = address
        return True

    def execute_async_v3(self, stream):
        self.log.append(("execute", self.engine.name, stream))
        return True


class FakeTrt:
    __version__ = "10.13.0"

    class TensorIOMode:
        INPUT, OUTPUT = 1, 2

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    def __init__(self, manifest: Manifest, log: list):
        self.manifest, self.log = manifest, log

    @staticmethod
    def nptype(dtype):
        return {"float32": np.float32, "int64": np.int64}[dtype]

    def Runtime(self, logger):
        trt = self

        class Runtime:
            def deserialize_cuda_engine(self, data):
                name = data.decode()
                engine = FakeEngine(trt.manifest.component(name), trt.log)
                engine.name = name
                return engine

        return Runtime()


def open_chain(tmp_path, monkeypatch, family: dict) -> tuple[trt_backend.TrtChain, FakeCudart, list]:
    """A bundle folder with one engine file per chain step, recorded in the manifest, opened as TrtChain."""
    components, records = {}, {}
    (tmp_path / "engines").mkdir()
    for name, (inputs, outputs) in family["io"].items():
        components[name] = Component("onnx", f"{name}.onnx", "", 0, "fp32", inputs, outputs)
        plan = tmp_path / "engines" / f"{name}.fp16.plan"
        plan.write_bytes(name.encode())
        records[f"{name}.fp16"] = {"precision": "fp16", "file": f"engines/{plan.name}", "sha256": sha256_file(plan)}
    engines = {GPU.engine_dir(): {"gpu": GPU.name, "compute_capability": GPU.compute_capability,
                                  "trt_version": GPU.trt_version, "components": records}}
    manifest = Manifest(audio={"chain": [vars(s) for s in family["chain"]]}, prompt={}, components=components,
                        engines=engines)
    log: list = []
    cudart = FakeCudart()
    monkeypatch.setattr(trt_backend, "import_trt_runtime", lambda: (FakeTrt(manifest, log), "tensorrt"))
    monkeypatch.setattr(trt_backend, "cuda_runtime", lambda: cudart)
    monkeypatch.setattr(trt_backend, "detect_gpu", lambda: GPU)
    chain = trt_backend.TrtChain(tmp_path, manifest, "fp16", cuda_graphs=False)
    chain.open()
    return chain, cudart, log


def test_gammas_experts_share_the_mel_and_run_on_two_streams(tmp_path, monkeypatch):
    chain, cudart, log = open_chain(tmp_path, monkeypatch, GAMMA)
    b = chain.buffers
    assert b[("global_encoder", "mel")] == b[("temporal_encoder", "mel")]
    assert b[("fusion", "temporal")] == b[("temporal_encoder", "hidden")]
    assert b[("fusion", "global")] == b[("global_encoder", "hidden")]
    assert b[("projector", "fused")] == b[("fusion", "fused")]
    assert len(chain.streams) == 2 and len({v for v in b.values()}) == 5  # mel, 2 hidden, fused, embeddings
    cudart.calls.clear()
    out = chain.encode({"mel": np.zeros((2, 128, 3000), np.float32), "mel_mask": np.ones((2, 3000), np.int64),
                        "window_index": np.arange(2)})
    assert out.shape == (2, 750, 16)
    s0, s1 = chain.streams
    e0, e1 = chain.events
    copies = [c for c in cudart.calls if c[0] == "cudaMemcpyAsync"]
    assert [c[1] for c in copies[:1]] == [b[("temporal_encoder", "mel")]]  # the mel goes in once
    assert copies[-1][2] == b[("projector", "embeddings")]
    sync = [c for c in cudart.calls if c[0] in ("cudaEventRecord", "cudaStreamWaitEvent")]
    assert sync == [("cudaEventRecord", e0, s0), ("cudaStreamWaitEvent", s1, e0, 0),  # fork before the experts
                    ("cudaEventRecord", e1, s1), ("cudaStreamWaitEvent", s0, e1, 0)]  # join before fusion
    assert [(e[1], e[2]) for e in log] == [("temporal_encoder", s0), ("global_encoder", s1), ("fusion", s0),
                                          ("projector", s0)]


def test_a_flamingo_chain_runs_on_one_stream_with_its_mask_and_window_index(tmp_path, monkeypatch):
    chain, cudart, log = open_chain(tmp_path, monkeypatch, FLAMINGO)
    assert len(chain.streams) == 1 and chain.waves == [["encoder"], ["projector"]]
    b = chain.buffers
    assert b[("projector", "hidden")] == b[("encoder", "hidden")]
    cudart.calls.clear()
    feeds = {"mel": np.zeros((3, 128, 3000), np.float32), "mel_mask": np.ones((3, 3000), np.int64),
             "window_index": np.arange(3, dtype=np.int64)}
    assert chain.encode(feeds).shape == (3, 750, 16)
    into = [c[1] for c in cudart.calls if c[0] == "cudaMemcpyAsync" and c[4] == "h2d"]
    assert into == [b[("encoder", "mel")], b[("encoder", "mel_mask")], b[("projector", "window_index")]]
    assert not [c for c in cudart.calls if c[0] == "cudaStreamWaitEvent"]  # one stream: nothing to join
    assert [e[1] for e in log] == ["encoder", "projector"]
    assert chain.contexts["projector"].addresses["window_index"] == b[("projector", "window_index")]


def test_feeds_that_do_not_fit_the_chain_are_refused_before_any_copy(tmp_path, monkeypatch):
    chain, cudart, _ = open_chain(tmp_path, monkeypatch, FLAMINGO)
    cudart.calls.clear()
    from gamma_rt.errors import GammaError

    with pytest.raises(GammaError, match="reads window_index, which the feeds lack"):
        chain.encode({"mel": np.zeros((1, 128, 3000), np.float32), "mel_mask": np.ones((1, 3000), np.int64)})
    with pytest.raises(GammaError, match=r"mel_mask of shape \(1, 2000\)"):
        chain.encode({"mel": np.zeros((1, 128, 3000), np.float32), "mel_mask": np.ones((1, 2000), np.int64),
                      "window_index": np.zeros(1, np.int64)})
    assert not [c for c in cudart.calls if c[0] == "cudaMemcpyAsync"]


def test_the_whole_chain_is_captured_as_one_graph_from_the_first_stream(tmp_path, monkeypatch):
    chain, cudart, log = open_chain(tmp_path, monkeypatch, GAMMA)
    chain.use_graphs = True
    cudart.calls.clear()
    chain.encode({"mel": np.zeros((1, 128, 3000), np.float32)})
    names = [c[0] for c in cudart.calls]
    begin, end = names.index("cudaStreamBeginCapture"), names.index("cudaStreamEndCapture")
    assert cudart.calls[begin][1] == chain.streams[0]
    assert names[begin:end].count("cudaStreamWaitEvent") == 2  # fork and join inside the captured work
    assert names.index("cudaGraphLaunch") > end


# --- Music Flamingo on the TensorRT path, up to the calls into TensorRT -------------------------------------

from flamingo_fixtures import mf_bundle, mf_folder  # noqa: E402,F401  (session fixtures)


@pytest.fixture(scope="module")
def mf_plain(mf_bundle, mf_folder, tmp_path_factory):
    """Music Flamingo's bundle with its plain graphs for TensorRT (fp32 and the fp16 cast TensorRT 11 builds)."""
    import shutil

    from gamma_rt.export.engine_sources import export_plain_graphs

    folder = tmp_path_factory.mktemp("mf_engines") / "bundle"
    shutil.copytree(mf_bundle, folder)
    export_plain_graphs(mf_folder, folder, precisions=("fp32", "fp16"))
    return folder


def test_music_flamingo_plain_graphs_are_traced_from_its_folder_and_compute_like_the_ort_ones(mf_plain):
    import onnx
    import onnxruntime as ort

    m = Manifest.load(mf_plain)
    assert {f"{n}.plain{p}" for n in ("encoder", "projector") for p in ("", ".fp16")} <= set(m.components)
    rng = np.random.default_rng(0)
    feeds = {"mel": rng.standard_normal((2, 128, 3000)).astype(np.float32), "mel_mask": np.ones((2, 3000), np.int64),
             "window_index": np.array([0, 7], np.int64)}
    from gamma_rt.export.cosine_report import OrtChain, component_feeds

    reference = OrtChain(mf_plain, m)
    for name in ("encoder", "projector"):
        graph = onnx.load(str(mf_plain / m.component(f"{name}.plain").file), load_external_data=False)
        assert {n.domain for n in graph.graph.node} <= {"", "ai.onnx"}, name
        plain = ort.InferenceSession(str(mf_plain / m.component(f"{name}.plain").file), providers=["CPUExecutionProvider"])
        feed = component_feeds(reference, feeds["mel"])[name]
        np.testing.assert_allclose(plain.run(None, feed)[0], reference(name, feed), rtol=1e-4, atol=1e-4)


def test_music_flamingo_rote_stays_float32_in_the_fp16_cast_graph(mf_plain, tmp_path):
    """RoTE's angles reach ~5e4 rad late in a song; in fp16 they would be noise. The cast graph keeps the
    /rote/ scope in float32 (as export onnx does): late windows stay as close to fp32 as early ones, and
    far closer than a cast that rounds RoTE too."""
    import onnx
    import onnxruntime as ort

    from gamma_rt.export.engine_sources import cast_graph

    m = Manifest.load(mf_plain)
    fp32 = mf_plain / m.component("projector.plain").file
    rng = np.random.default_rng(0)
    feed = {"hidden": rng.standard_normal((2, 750, 64)).astype(np.float32), "window_index": np.array([2, 39])}

    def error(graph) -> float:
        session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
        ref = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, feed)[0]
        return float(np.abs(session.run(None, feed)[0] - ref).max() / np.abs(ref).max())

    kept = error(str(mf_plain / m.component("projector.plain.fp16").file))
    rounded = error(cast_graph(fp32, "fp16").SerializeToString())
    assert kept < 2e-2 and rounded > 10 * kept, (kept, rounded)
    graph = onnx.load(str(mf_plain / m.component("projector.plain.fp16").file), load_external_data=False)
    assert {n.domain for n in graph.graph.node} <= {"", "ai.onnx"}


@pytest.mark.parametrize("version,source", [("10.13.0", "plain"), ("11.1.0", "plain.fp16")])
def test_music_flamingo_engines_are_planned_and_built_for_its_own_chain(mf_plain, tmp_path, version, source):
    import dataclasses
    import shutil

    from test_engine_plan import fake_trt

    from gamma_rt.export.engine_plan import plan_engines, record_engines
    from gamma_rt.export.engines import build_all

    folder = tmp_path / "b"
    shutil.copytree(mf_plain, folder)
    m = Manifest.load(folder)
    identity = dataclasses.replace(GPU, trt_version=version)
    plan = plan_engines(folder, m, identity, "fp16", max_batch=2)
    assert [(b.component, b.source) for b in plan.builds] == [("encoder.fp16", f"encoder.{source}"),
                                                              ("projector.fp16", f"projector.{source}")]
    profiles = {p.input: (p.min, p.max) for p in plan.builds[1].profiles}
    assert profiles == {"hidden": ((1, 750, 64), (2, 750, 64)), "window_index": ((1,), (2,))}
    trt = fake_trt(version)
    built = build_all(folder, plan, trt=trt)
    assert set(built) == {"encoder.fp16", "projector.fp16"}
    parsed = [a[0] for c, *a in trt.calls if c == "parse"]
    assert [p.rsplit("/", 1)[-1] for p in parsed] == [f"encoder.{source}.onnx", f"projector.{source}.onnx"]
    record_engines(m, plan, built)
    assert set(m.engines[identity.engine_dir()]["components"]) == {"encoder.fp16", "projector.fp16"}


def test_the_cosine_report_walks_music_flamingos_chain(mf_plain):
    from gamma_rt.export.cosine_report import OrtChain, cosine_report

    m = Manifest.load(mf_plain)
    mel = [np.random.default_rng(1).standard_normal((1, 128, 3000)).astype(np.float32)]
    report = cosine_report(OrtChain(mf_plain, m), OrtChain(mf_plain, m), mel)
    assert set(report) == {"encoder", "projector", "chained"}
    assert all(r["min"] == pytest.approx(1.0) for r in report.values())
