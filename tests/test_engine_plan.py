"""What build-engines decides to build (export/engine_plan.py), tested on the tiny bundle without TensorRT,
and the TensorRT build itself where tensorrt and a GPU exist."""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil

import onnx
import pytest

from gamma_rt.errors import BundleError, GammaError
from gamma_rt.export.engine_plan import PRECISION_FLAGS, batch_profile, plan_engines, record_engines, source_graph
from gamma_rt.export.families.gamma.family import COMPONENTS as GAMMA_COMPONENTS
from gamma_rt.hashing import sha256_file
from gamma_rt.manifest import Manifest, TensorSpec
from gamma_rt.runtime.engine_record import GpuIdentity

H100 = GpuIdentity("NVIDIA H100 80GB HBM3", "9.0", "10.13.0")
ORIN = GpuIdentity("Orin", "8.7", "10.3.0")
TURING = GpuIdentity("Tesla T4", "7.5", "10.13.0")
TRT11 = GpuIdentity("NVIDIA H100 80GB HBM3", "9.0", "11.1.0")


@pytest.fixture(scope="module")
def bundle(tiny_bundle_onnx, tiny_checkpoint, tmp_path_factory):
    """The tiny fp32 ONNX bundle plus its plain (TensorRT-parsable) graphs."""
    from gamma_rt.export.engine_sources import export_plain_graphs

    folder = tmp_path_factory.mktemp("engine_bundle") / "bundle"
    shutil.copytree(tiny_bundle_onnx, folder)
    export_plain_graphs(tiny_checkpoint, folder, precisions=("fp32", "fp16", "bf16"))
    return folder


def test_plain_graphs_use_only_standard_onnx_operators(bundle):
    for name in GAMMA_COMPONENTS:
        graph = onnx.load(str(bundle / f"{name}.plain.onnx"), load_external_data=False)
        assert {n.domain for n in graph.graph.node} <= {"", "ai.onnx"}, name


def test_plain_graphs_compute_what_the_ort_graphs_compute(bundle):
    import numpy as np
    import onnxruntime as ort

    mel = np.random.default_rng(0).standard_normal((2, 128, 3000)).astype(np.float32)
    opt = ort.InferenceSession(str(bundle / "temporal_encoder.onnx"), providers=["CPUExecutionProvider"])
    plain = ort.InferenceSession(str(bundle / "temporal_encoder.plain.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(plain.run(None, {"mel": mel})[0], opt.run(None, {"mel": mel})[0], atol=1e-4)


def test_engines_are_built_from_the_plain_fp32_graphs(bundle):
    plan = plan_engines(bundle, Manifest.load(bundle), H100, "fp16")
    assert [b.source for b in plan.builds] == [f"{n}.plain" for n in GAMMA_COMPONENTS]
    assert [b.component for b in plan.builds] == [f"{n}.fp16" for n in GAMMA_COMPONENTS]


def test_ort_optimized_graph_alone_is_refused_with_the_fix(tiny_bundle_onnx):
    m = Manifest.load(tiny_bundle_onnx)
    with pytest.raises(BundleError, match="components.fusion is optimized for ONNX Runtime.*--checkpoint"):
        source_graph(m, "fusion", "manifest.json")


def test_profiles_span_batch_1_to_max_with_the_manifest_window_shape(bundle):
    plan = plan_engines(bundle, Manifest.load(bundle), H100, "fp16", max_batch=8, opt_batch=2)
    profiles = {b.component: b.profiles for b in plan.builds}
    (mel,) = profiles["temporal_encoder.fp16"]
    assert (mel.input, mel.min, mel.opt, mel.max) == ("mel", (1, 128, 3000), (2, 128, 3000), (8, 128, 3000))
    assert [(p.input, p.max) for p in profiles["fusion.fp16"]] == [("temporal", (8, 1500, 64)), ("global", (8, 1500, 64))]
    assert profiles["projector.fp16"][0].min == (1, 1500, 64)


def test_opt_batch_is_clamped_into_the_profile():
    spec = TensorSpec("mel", ["batch", 128, 3000], "float32")
    assert batch_profile(spec, max_batch=2, opt_batch=16, where="m").opt == (2, 128, 3000)


def test_a_symbolic_dimension_other_than_batch_is_refused():
    spec = TensorSpec("mel", ["batch", 128, "frames"], "float32")
    with pytest.raises(BundleError, match="only the batch may be symbolic"):
        batch_profile(spec, 4, 1, "manifest.json: components.x.inputs")


def test_engine_folder_is_named_by_gpu_compute_capability_and_trt_version(bundle):
    plan = plan_engines(bundle, Manifest.load(bundle), H100, "bf16")
    assert plan.engine_dir == "engines/nvidia-h100-80gb-hbm3-sm90-trt10.13.0"
    assert plan.timing_cache == f"{plan.engine_dir}/timing.cache"
    assert plan.builds[0].engine_file == f"{plan.engine_dir}/temporal_encoder.bf16.plan"


@pytest.mark.parametrize("precision", ["fp16", "bf16", "int8", "fp8"])
def test_trt10_asks_for_the_precision_with_builder_flags_on_the_fp32_graph(bundle, precision):
    plan = plan_engines(bundle, Manifest.load(bundle), H100, precision, calibration_sha256="c" * 64)
    assert {b.flags for b in plan.builds} == {PRECISION_FLAGS[precision]}
    assert {b.network_flags for b in plan.builds} == {()} and {b.trt_major for b in plan.builds} == {10}
    assert [b.source for b in plan.builds] == [f"{n}.plain" for n in GAMMA_COMPONENTS]
    assert {b.needs_calibration for b in plan.builds} == {precision == "int8"}


def test_trt11_builds_strongly_typed_from_the_cast_graph_without_precision_flags(bundle):
    plan = plan_engines(bundle, Manifest.load(bundle), TRT11, "fp16")
    assert {b.flags for b in plan.builds} == {()} and {b.network_flags for b in plan.builds} == {("STRONGLY_TYPED",)}
    assert [b.source for b in plan.builds] == [f"{n}.plain.fp16" for n in GAMMA_COMPONENTS]
    assert not any(b.needs_calibration for b in plan.builds)
    assert all(b.record("x", 1)["strongly_typed"] for b in plan.builds)


def test_trt11_int8_without_a_qdq_graph_is_refused_naming_the_fix(bundle):
    with pytest.raises(BundleError, match="temporal_encoder.plain.int8 missing.*no INT8 calibrators.*Q/DQ"):
        plan_engines(bundle, Manifest.load(bundle), TRT11, "int8")


@pytest.mark.parametrize("version", ["8.6.1", "10.2.0", "12.0.0"])
def test_a_tensorrt_outside_the_tested_range_is_refused(bundle, version):
    with pytest.raises(GammaError, match=f"TensorRT {version} is not supported"):
        plan_engines(bundle, Manifest.load(bundle), dataclasses.replace(H100, trt_version=version), "fp16")


def test_int8_calibration_table_is_named_by_the_calibration_data_hash(bundle):
    m = Manifest.load(bundle)
    with pytest.raises(GammaError, match="needs calibration audio"):
        plan_engines(bundle, m, ORIN, "int8")
    a = plan_engines(bundle, m, ORIN, "int8", calibration_sha256="a" * 64).builds[0]
    b = plan_engines(bundle, m, ORIN, "int8", calibration_sha256="b" * 64).builds[0]
    assert a.calibration_cache.endswith(f"temporal_encoder.int8.{'a' * 16}.calib")
    assert a.calibration_cache != b.calibration_cache and a.cache_key != b.cache_key


def test_version_compatible_engines_are_flagged_and_recorded_as_such(bundle):
    m = Manifest.load(bundle)
    plan = plan_engines(bundle, m, H100, "fp16", version_compatible=True)
    assert {b.flags for b in plan.builds} == {("FP16", "VERSION_COMPATIBLE")}
    record_engines(m, plan, {b.component: ("s", 1) for b in plan.builds})
    entry = m.engines[H100.engine_dir()]
    assert entry["version_compatible"] and entry["lean_runtime_included"]
    lean = plan_engines(bundle, m, H100, "fp16", version_compatible=True, exclude_lean_runtime=True)
    assert {b.flags for b in lean.builds} == {("FP16", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME")}
    assert not lean.builds[0].record("s", 1)["lean_runtime_included"]
    with pytest.raises(GammaError, match="--exclude-lean-runtime only applies with --version-compatible"):
        plan_engines(bundle, m, H100, "fp16", exclude_lean_runtime=True)


@pytest.mark.parametrize("gpu,precision", [(ORIN, "fp8"), (TURING, "bf16"), (TURING, "fp8")])
def test_precision_the_gpu_lacks_is_refused_naming_its_compute_capability(bundle, gpu, precision):
    with pytest.raises(GammaError, match=f"needs compute capability .* is {gpu.compute_capability}"):
        plan_engines(bundle, Manifest.load(bundle), gpu, precision)


@pytest.mark.parametrize("kwargs,match", [({"max_batch": 0}, "--max-batch"), ({"workspace_gb": 0}, "--workspace"),
                                          ({"precision": "int4"}, "--precision")])
def test_bad_build_options_raise_one_clear_error(bundle, kwargs, match):
    with pytest.raises(GammaError, match=match):
        plan_engines(bundle, Manifest.load(bundle), H100, **{"precision": "fp16", **kwargs})


def test_cache_key_changes_with_every_input_that_changes_the_engine(bundle):
    m = Manifest.load(bundle)

    def key(**kw):
        args = {"identity": H100, "precision": "fp16", "max_batch": 4, "workspace_gb": 4.0, **kw}
        return plan_engines(bundle, m, **args).builds[0].cache_key

    base = key()
    assert key() == base
    others = [key(precision="bf16"), key(max_batch=8), key(workspace_gb=2.0),
              key(identity=dataclasses.replace(H100, trt_version="10.14.0")), key(version_compatible=True),
              key(identity=TRT11)]
    assert base not in others and len(set(others)) == len(others)


def test_recorded_engine_is_skipped_until_its_file_or_inputs_change(bundle, tmp_path):
    folder = tmp_path / "b"
    shutil.copytree(bundle, folder)
    m = Manifest.load(folder)
    plan = plan_engines(folder, m, H100, "fp16")
    (folder / plan.engine_dir).mkdir(parents=True)
    built = {}
    for b in plan.builds:  # stand-in bytes: the decision only looks at the recorded hash and size
        path = folder / b.engine_file
        path.write_bytes(b.component.encode())
        built[b.component] = (sha256_file(path), path.stat().st_size)
    record_engines(m, plan, built)
    m.write(folder)
    m = Manifest.load(folder)
    record = m.engines[H100.engine_dir()]
    assert (record["gpu"], record["compute_capability"], record["trt_version"]) == ("NVIDIA H100 80GB HBM3", "9.0", "10.13.0")
    assert record["components"]["fusion.fp16"]["profile"]["temporal"][2] == [4, 1500, 64]

    assert plan_engines(folder, m, H100, "fp16").to_build() == []
    assert len(plan_engines(folder, m, H100, "fp16", rebuild=True).to_build()) == 4
    assert len(plan_engines(folder, m, H100, "fp16", max_batch=8).to_build()) == 4
    (folder / plan.builds[2].engine_file).write_bytes(b"changed")
    assert [b.component for b in plan_engines(folder, m, H100, "fp16").to_build()] == ["fusion.fp16"]


@pytest.mark.parametrize("command", [["export", "engines"], ["build-engines"]])
def test_build_engines_without_tensorrt_fails_in_one_line(bundle, capsys, command):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here; this checks the message on machines without it")
    from gamma_rt.cli import main

    assert main([*command, str(bundle)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gamma-rt: error:") and "tensorrt" in err and "\n" not in err


def _help(capsys, *argv) -> str:
    from gamma_rt.cli import main

    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return capsys.readouterr().out


def test_export_engines_help_explains_the_command_and_build_engines_is_its_alias(capsys):
    out = _help(capsys, "export", "engines")
    assert out.startswith("usage: gamma-rt export engines")
    assert "--precision" in out and "engines/<gpu>-sm<cc>-trt<version>" in out and "--rebuild" in out
    assert "gamma-rt export engines bundle" in out
    alias = _help(capsys, "build-engines")
    assert alias.startswith("usage: gamma-rt build-engines")
    # the same command: after the usage line, the same text but for its name in the examples
    assert alias.split("\n\n", 1)[1].replace("build-engines", "export engines") == out.split("\n\n", 1)[1]


def test_tensorrt_fp16_engines_encode_like_onnx_runtime_fp32(bundle, tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (no TensorRT on this machine)")
    from gamma_rt.export.engines import build_all
    from gamma_rt.runtime.trt_backend import detect_gpu

    try:
        identity = detect_gpu()
    except GammaError as e:
        pytest.skip(f"no usable GPU: {e}")
    folder = tmp_path / "b"
    shutil.copytree(bundle, folder)
    m = Manifest.load(folder)
    plan = plan_engines(folder, m, identity, "fp16", max_batch=2)
    built = build_all(folder, plan)
    assert set(built) == {f"{n}.fp16" for n in GAMMA_COMPONENTS}
    assert (folder / plan.timing_cache).stat().st_size > 0
    record_engines(m, plan, built)
    m.write(folder)

    import numpy as np

    from gamma_rt.export.cosine_report import OrtChain, component_feeds, token_cosines
    from gamma_rt.runtime.trt_backend import TrtChain

    mel = np.random.default_rng(0).standard_normal((2, 128, 3000)).astype(np.float32)
    reference = component_feeds(OrtChain(folder, m), mel)["embeddings"]["embeddings"]
    with TrtChain(folder, Manifest.load(folder), "fp16") as chain:
        graphed = chain.encode({"mel": mel})
        assert token_cosines(reference, graphed).min() > 0.999
        np.testing.assert_array_equal(chain.encode({"mel": mel}), graphed)  # the CUDA graph replays the same work


def test_cast_plain_graphs_are_fp16_inside_fp32_at_the_edges_and_standard_onnx(bundle):
    import numpy as np
    import onnxruntime as ort

    for precision, elem in (("fp16", onnx.TensorProto.FLOAT16), ("bf16", onnx.TensorProto.BFLOAT16)):
        graph = onnx.load(str(bundle / f"fusion.plain.{precision}.onnx"))
        assert {n.domain for n in graph.graph.node} <= {"", "ai.onnx"}
        assert {i.type.tensor_type.elem_type for i in [*graph.graph.input, *graph.graph.output]} == {onnx.TensorProto.FLOAT}
        assert {t.data_type for t in graph.graph.initializer if t.data_type != onnx.TensorProto.INT64} == {elem}
    mel = np.random.default_rng(0).standard_normal((1, 128, 3000)).astype(np.float32)
    run = {p: ort.InferenceSession(str(bundle / f"temporal_encoder.plain{p}.onnx"), providers=["CPUExecutionProvider"])
           for p in ("", ".fp16")}
    ref, half = (run[p].run(None, {"mel": mel})[0] for p in ("", ".fp16"))
    assert half.dtype == np.float32 and np.abs(half - ref).max() < 2e-2 * np.abs(ref).max()


def fake_trt(version: str, refuse_cache: bool = False):
    """A stand-in ``tensorrt`` module with exactly the names ``version`` exports (tests/trt_api/), which records
    what the builder is asked for."""
    import json
    import types
    from pathlib import Path

    api = json.loads((Path(__file__).parent / "trt_api" / f"{version.rsplit('.', 1)[0]}.json").read_text())["tensorrt"]
    calls = []

    def enum(name):
        return types.SimpleNamespace(**{m: i for i, m in enumerate(api["classes"][name]) if m.isupper()})

    class Strict:
        """Only the members the class has in this release; every call is recorded."""

        def __init__(self, cls, **behaviour):
            self._cls, self._behaviour = cls, behaviour

        def __getattr__(self, name):
            assert name in api["classes"][self._cls], f"TensorRT {version} {self._cls} has no {name}"
            return self._behaviour.get(name, lambda *a: calls.append((self._cls, name, a)))

        def __setattr__(self, name, value):
            if not name.startswith("_"):
                assert name in api["classes"][self._cls], f"TensorRT {version} {self._cls} has no {name}"
            object.__setattr__(self, name, value)

    timing = Strict("ITimingCache", serialize=lambda: b"timing")
    def create_timing_cache(data):
        cache = Strict("ITimingCache")
        cache._data = data
        return cache

    # a saved cache from another GPU/TensorRT is refused (False), an empty one is always taken
    config = Strict("IBuilderConfig", create_timing_cache=create_timing_cache,
                    set_timing_cache=lambda cache, ignore: not (refuse_cache and cache._data),
                    get_timing_cache=lambda: None if refuse_cache else timing)

    def create_network(flags):
        calls.append(("create_network", flags))
        return Strict("INetworkDefinition")

    builder = Strict("Builder", create_network=create_network, create_builder_config=lambda: config,
                     create_optimization_profile=lambda: Strict("IOptimizationProfile"),
                     build_serialized_network=lambda network, config: b"engine")
    parser = Strict("OnnxParser", parse_from_file=lambda path: calls.append(("parse", path)) or True)
    module = types.SimpleNamespace(
        __version__=version, Logger=type("Logger", (), {"WARNING": 2, "__init__": lambda self, severity: None}),
        Builder=lambda logger: builder, OnnxParser=lambda network, logger: parser,
        BuilderFlag=enum("BuilderFlag"), NetworkDefinitionCreationFlag=enum("NetworkDefinitionCreationFlag"),
        MemoryPoolType=enum("MemoryPoolType"), calls=calls)
    return module


@pytest.mark.parametrize("version,precision,flags", [("10.3.0", "fp16", ["FP16"]), ("10.13.0", "bf16", ["BF16"]),
                                                     ("11.1.0", "fp16", []), ("11.1.0", "bf16", [])])
def test_build_engine_uses_only_what_the_installed_release_has(bundle, version, precision, flags):
    from gamma_rt.export.engines import build_engine

    trt = fake_trt(version)
    plan = plan_engines(bundle, Manifest.load(bundle), dataclasses.replace(H100, trt_version=version), precision)
    engine, cache = build_engine(trt, None, bundle, plan.builds[0], b"", None)
    assert (engine, cache) == (b"engine", b"timing")
    set_flags = [c[2][0] for c in trt.calls if len(c) == 3 and c[1] == "set_flag"]
    assert set_flags == [getattr(trt.BuilderFlag, f) for f in flags]
    network_mask = next(a for c, *a in trt.calls if c == "create_network")[0]
    assert network_mask == (1 << trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED if version.startswith("11") else 0)
    # the major was decided before parsing: the parsed graph is the one for that major
    assert next(a for c, *a in trt.calls if c == "parse")[0].endswith(f"temporal_encoder.plain{'.' + precision if version.startswith('11') else ''}.onnx")


def test_a_refused_timing_cache_keeps_the_built_engine(bundle, tmp_path, capsys):
    from gamma_rt.export.engines import build_all

    folder = tmp_path / "b"
    shutil.copytree(bundle, folder)
    plan = plan_engines(folder, Manifest.load(folder), H100, "fp16")
    (folder / plan.engine_dir).mkdir(parents=True)
    (folder / plan.timing_cache).write_bytes(b"from another GPU")
    built = build_all(folder, plan, trt=fake_trt("10.13.0", refuse_cache=True))
    assert len(built) == 4 and (folder / plan.builds[0].engine_file).read_bytes() == b"engine"
    assert (folder / plan.timing_cache).read_bytes() == b"from another GPU"  # TensorRT gave no cache back
    assert "timing cache refused" in capsys.readouterr().err


def test_a_plan_for_another_major_is_refused_before_parsing(bundle):
    from gamma_rt.export.engines import build_engine

    trt = fake_trt("11.1.0")
    plan = plan_engines(bundle, Manifest.load(bundle), H100, "fp16")  # planned for 10.13
    with pytest.raises(GammaError, match="planned for TensorRT 10.x, but 11.1.0 is installed"):
        build_engine(trt, None, bundle, plan.builds[0], b"", None)
    assert not [c for c in trt.calls if c[0] == "parse"]
