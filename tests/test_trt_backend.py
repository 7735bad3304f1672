"""Engine mismatch detection and backend choice (runtime/engine_record.py, runtime/backends.py),
decided from manifest records and a description of the machine; TrtChain itself where TensorRT and a GPU exist."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gamma_rt.errors import EngineMismatch, GammaError
from gamma_rt.manifest import Manifest
from gamma_rt.runtime.backends import Machine, choose_backend, ort_providers, probe
from gamma_rt.runtime.engine_record import GpuIdentity, find_engines, mismatches, version_fits

H100 = GpuIdentity("NVIDIA H100 80GB HBM3", "9.0", "10.13.0")
ORIN = GpuIdentity("Orin", "8.7", "10.3.0")


def record(identity: GpuIdentity, precision: str = "fp16") -> dict:
    return {identity.engine_dir(): {
        "gpu": identity.name, "compute_capability": identity.compute_capability, "trt_version": identity.trt_version,
        "components": {f"temporal_encoder.{precision}": {"precision": precision, "file": "x.plan"}},
    }}


def manifest_with(engines: dict) -> Manifest:
    return Manifest(audio={}, prompt={}, engines=engines)


def test_engine_built_on_the_same_gpu_and_trt_is_found():
    found = find_engines(record(H100), H100, "fp16", "m.json")
    assert found["dir"] == "nvidia-h100-80gb-hbm3-sm90-trt10.13.0"


@pytest.mark.parametrize("running,expected", [
    (ORIN, "compute capability 9.0 vs this GPU's 8.7"),
    (GpuIdentity("NVIDIA H100 80GB HBM3", "9.0", "10.14.1"), "TensorRT 10.13.0 vs installed 10.14.1"),
])
def test_engine_for_another_architecture_or_trt_raises_engine_mismatch_saying_what_differs(running, expected):
    with pytest.raises(EngineMismatch, match=expected) as e:
        find_engines(record(H100), running, "fp16", "bundle/manifest.json")
    assert "--rebuild" in str(e.value) and "bundle/manifest.json" in str(e.value)


def test_another_gpu_model_of_the_same_architecture_and_trt_may_load_the_engine():
    h100_pcie = GpuIdentity("NVIDIA H100 PCIe", "9.0", "10.13.0")
    assert mismatches(H100, h100_pcie) == ["built on 'NVIDIA H100 80GB HBM3', running on 'NVIDIA H100 PCIe'"]
    assert find_engines(record(H100), h100_pcie, "fp16", "m.json")["gpu"] == H100.name


def test_missing_precision_or_no_engines_raise_engine_mismatch():
    with pytest.raises(EngineMismatch, match="no int8 engines"):
        find_engines(record(H100), H100, "int8", "m.json")
    with pytest.raises(EngineMismatch, match="no TensorRT engines recorded"):
        find_engines({}, H100, "fp16", "m.json")
    with pytest.raises(EngineMismatch, match="lacks field 'trt_version'"):
        find_engines({"d": {"gpu": "x", "compute_capability": "9.0"}}, H100, "fp16", "m.json")


def test_auto_picks_tensorrt_when_engines_fit():
    machine = Machine(True, ("CUDAExecutionProvider", "CPUExecutionProvider"), H100)
    choice = choose_backend("auto", manifest_with(record(H100)), machine)
    assert choice.backend == "tensorrt" and "fit this NVIDIA H100" in choice.reason


def test_auto_falls_back_to_ort_and_says_why_when_engines_mismatch():
    machine = Machine(True, ("CUDAExecutionProvider", "CPUExecutionProvider"), ORIN)
    choice = choose_backend("auto", manifest_with(record(H100)), machine)
    assert choice.backend == "ort-cuda"
    assert "tensorrt skipped" in choice.reason and "compute capability 9.0 vs this GPU's 8.7" in choice.reason


def test_explicit_tensorrt_with_mismatched_engines_raises_instead_of_falling_back():
    machine = Machine(True, ("CPUExecutionProvider",), ORIN)
    with pytest.raises(EngineMismatch, match="rebuild"):
        choose_backend("tensorrt", manifest_with(record(H100)), machine)


def test_explicit_tensorrt_without_the_package_says_so():
    with pytest.raises(GammaError, match="--backend tensorrt: TensorRT or cuda-python is not installed"):
        choose_backend("tensorrt", manifest_with(record(H100)), Machine(False, ("CPUExecutionProvider",)))


PLAIN = {f"{c}.plain": object() for c in ("temporal_encoder", "global_encoder", "fusion", "projector")}


@pytest.mark.parametrize("providers,expected", [
    (("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"), "ort-trt"),
    (("CUDAExecutionProvider", "CPUExecutionProvider"), "ort-cuda"),
    (("CPUExecutionProvider",), "ort-cpu"),
])
def test_auto_without_tensorrt_takes_the_best_ort_provider(providers, expected):
    manifest = Manifest(audio={}, prompt={}, engines={}, components=PLAIN)
    assert choose_backend("auto", manifest, Machine(False, providers, libnvinfer_majors=(10,))).backend == expected


def test_ort_trt_needs_the_tensorrt_major_its_build_links_and_the_plain_graphs():
    providers = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    manifest = Manifest(audio={}, prompt={}, engines={}, components=PLAIN)
    choice = choose_backend("auto", manifest, Machine(False, providers, libnvinfer_majors=(11,)))
    assert choice.backend == "ort-cuda" and "links TensorRT 10 (libnvinfer.so.10); found libnvinfer.so.11" in choice.reason
    choice = choose_backend("auto", manifest_with({}), Machine(False, providers, libnvinfer_majors=(10,)))
    assert choice.backend == "ort-cuda" and "components.temporal_encoder.plain missing" in choice.reason


def test_ort_trt_gets_explicit_profile_shapes_from_the_graph_inputs(tmp_path):
    from gamma_rt.manifest import TensorSpec

    _, options = ort_providers("ort-trt", tmp_path, True, [TensorSpec("mel", ["batch", 128, 3000], "float32")])[0]
    assert (options["trt_profile_min_shapes"], options["trt_profile_opt_shapes"], options["trt_profile_max_shapes"]) \
        == ("mel:1x128x3000", "mel:1x128x3000", "mel:8x128x3000")


def test_version_compatible_engines_load_on_later_releases_as_tensorrt_allows():
    assert version_fits("10.3.0", "10.3.0.26") and not version_fits("10.3.0", "10.13.0")
    assert version_fits("10.3.0", "10.13.0", version_compatible=True)
    assert version_fits("10.13.0", "11.1.0", version_compatible=True)  # 10 -> 11 is allowed
    assert not version_fits("10.13.0", "10.3.0", version_compatible=True)  # never an older runtime
    assert not version_fits("11.1.0", "12.0.0", version_compatible=True)
    compatible = record(H100)
    compatible[H100.engine_dir()].update(version_compatible=True, lean_runtime_included=True)
    later = GpuIdentity(H100.name, "9.0", "10.14.1")
    assert find_engines(compatible, later, "fp16", "m.json")["dir"] == H100.engine_dir()
    with pytest.raises(EngineMismatch, match="dispatch runtime needs version-compatible engines"):
        find_engines(record(H100), H100, "fp16", "m.json", needs_lean_runtime=True)


def test_tensorrt_runs_any_recorded_precision_and_auto_picks_the_most_faithful_for_this_gpu():
    engines = record(ORIN, "fp16")
    engines[ORIN.engine_dir()]["components"]["temporal_encoder.int8"] = {"precision": "int8", "file": "y.plan"}
    machine = Machine(True, ("CPUExecutionProvider",), ORIN)
    choice = choose_backend("auto", manifest_with(engines), machine, "auto")
    assert (choice.backend, choice.precision) == ("tensorrt", "fp16") and "TensorRT fp16 engines" in choice.reason
    assert choose_backend("tensorrt", manifest_with(engines), machine, "int8").precision == "int8"
    int8_only = record(ORIN, "int8")
    assert choose_backend("auto", manifest_with(int8_only), machine, "auto").precision == "int8"
    from gamma_rt.runtime.options import RuntimeOptions

    assert RuntimeOptions(backend="tensorrt", precision="int8").precision == "int8"


def test_explicit_ort_backend_missing_its_provider_is_a_clear_error():
    with pytest.raises(GammaError, match="no CUDAExecutionProvider.*onnxruntime-gpu"):
        choose_backend("ort-cuda", manifest_with({}), Machine(False, ("CPUExecutionProvider",)))
    with pytest.raises(GammaError, match="--backend 'cuda'"):
        choose_backend("cuda", manifest_with({}), Machine(False, ("CPUExecutionProvider",)))


def test_this_machine_is_probed_and_gets_a_backend_it_can_run():
    machine = probe()
    choice = choose_backend("auto", manifest_with({}), machine)
    assert choice.backend in ("tensorrt", "ort-trt", "ort-cuda", "ort-cpu")
    if machine.gpu is None:
        assert "tensorrt skipped" in choice.reason


def test_ort_trt_provider_caches_engines_inside_the_bundle(tmp_path):
    providers = ort_providers("ort-trt", tmp_path)
    name, options = providers[0]
    assert name == "TensorrtExecutionProvider" and options["trt_engine_cache_path"] == str(tmp_path / "engines" / "ort-trt")
    assert providers[-1] == "CPUExecutionProvider"


def test_runtime_gpu_modules_import_without_torch_export_or_tensorrt():
    code = (
        "import sys\n"
        "import gamma_rt.runtime.trt_backend, gamma_rt.runtime.backends, gamma_rt.runtime.engine_record\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'tensorrt') or m.startswith('gamma_rt.export')]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"



def test_two_stream_work_captured_as_a_cuda_graph_replays_with_new_input():
    """The stream fork/join and graph capture TrtChain uses, run with plain copies instead of engines."""
    pytest.importorskip("cuda", reason="cuda-python is not installed (no CUDA on this machine)")
    import numpy as np

    from gamma_rt.runtime.trt_backend import _ok, capture_graph, cuda_runtime, fork_join

    cudart = cuda_runtime()
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count == 0:
        pytest.skip("no CUDA GPU visible")
    n = 1 << 20
    src, left, right = (_ok(cudart.cudaMalloc(n * 4)) for _ in range(3))
    s0, s1 = (_ok(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking)) for _ in range(2))
    fork, join = (_ok(cudart.cudaEventCreateWithFlags(cudart.cudaEventDisableTiming)) for _ in range(2))
    d2d = cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice

    def enqueue():  # like the experts: one copy per stream from the shared input, then joined back
        fork_join(fork, s1, s0)
        _ok(cudart.cudaMemcpyAsync(left, src, n * 4, d2d, s0))
        _ok(cudart.cudaMemcpyAsync(right, src, n * 4, d2d, s1))
        fork_join(join, s0, s1)

    graph = capture_graph(s0, enqueue)
    for value in (1.0, 2.5):
        host = np.full(n, value, np.float32)
        _ok(cudart.cudaMemcpy(src, host.ctypes.data, n * 4, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))
        _ok(cudart.cudaGraphLaunch(graph, s0))
        _ok(cudart.cudaStreamSynchronize(s0))
        for ptr in (left, right):
            out = np.empty(n, np.float32)
            _ok(cudart.cudaMemcpy(out.ctypes.data, ptr, n * 4, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost))
            assert (out == value).all()
    _ok(cudart.cudaGraphExecDestroy(graph))
    for ptr in (src, left, right):
        _ok(cudart.cudaFree(ptr))


class FakeCudart:
    """cuda-python's runtime API as far as the capture and detection code uses it, recording every call."""

    class cudaStreamCaptureMode:
        cudaStreamCaptureModeGlobal, cudaStreamCaptureModeThreadLocal = "global", "thread-local"

    def __init__(self, props_error=0):
        self.calls, self.props_error = [], props_error

    def __getattr__(self, name):
        def call(*args):
            self.calls.append((name, *args))
            if name == "cudaGetDeviceCount":
                return 0, 1
            if name == "cudaGetDeviceProperties":
                return self.props_error, None
            return (0, f"{name}-handle")
        return call


def test_capture_is_thread_local_and_always_ended_when_enqueue_fails():
    from gamma_rt.runtime.trt_backend import capture_graph

    cudart = FakeCudart()

    def enqueue():
        raise RuntimeError("enqueue failed")

    with pytest.raises(RuntimeError, match="enqueue failed"):
        capture_graph("s0", enqueue, cudart)
    assert [c[0] for c in cudart.calls] == ["cudaStreamBeginCapture", "cudaStreamEndCapture"]
    assert cudart.calls[0][2] == "thread-local"  # llama.cpp's CUDA work on the main thread is not disturbed


def test_detection_failures_are_gamma_errors(monkeypatch):
    import types

    from gamma_rt.runtime import trt_backend

    monkeypatch.setattr(trt_backend, "import_trt_runtime", lambda: (types.SimpleNamespace(__version__="10.3.0"), "tensorrt"))
    monkeypatch.setattr(trt_backend, "cuda_runtime", lambda: FakeCudart(props_error=100))
    with pytest.raises(GammaError, match="cannot read CUDA device 0's properties"):
        trt_backend.detect_gpu()


def test_a_refused_shape_or_address_raises_and_events_are_closed():
    import types

    from gamma_rt.runtime.trt_backend import TrtChain

    chain = TrtChain(".", manifest_with({}))
    chain.trt = types.SimpleNamespace(TensorIOMode=types.SimpleNamespace(INPUT=1), nptype=lambda d: "float32")
    engine = types.SimpleNamespace(num_io_tensors=1, get_tensor_name=lambda i: "mel", get_tensor_mode=lambda t: 1,
                                   get_tensor_dtype=lambda t: 0)
    context = types.SimpleNamespace(set_input_shape=lambda t, s: False, set_tensor_address=lambda t, a: True)
    chain.engines, chain.contexts = {"temporal_encoder": engine}, {"temporal_encoder": context}
    chain.specs, chain.buffers = {("temporal_encoder", "mel"): (128, 3000)}, {("temporal_encoder", "mel"): 1}
    with pytest.raises(EngineMismatch, match=r"refused shape \(9, 128, 3000\) for temporal_encoder.mel"):
        chain._bind("temporal_encoder", 9)
    chain.max_batch = 4
    with pytest.raises(GammaError, match="batch 9 is outside the engines' profile"):
        chain._check_batch(9)
    chain.cudart, chain.events, chain.streams = FakeCudart(), ["e0", "e1"], ["s0"]
    chain.close()
    assert [c for c in chain.cudart.calls if c[0] == "cudaEventDestroy"] == [("cudaEventDestroy", "e0"),
                                                                            ("cudaEventDestroy", "e1")]
