"""What build-engines decides to build (export/engine_plan.py), tested on the tiny bundle without TensorRT,
and the TensorRT build itself where tensorrt and a GPU exist."""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil

import onnx
import pytest

from gamma_rt.errors import BundleError, GammaError
from gamma_rt.export.engine_plan import batch_profile, plan_engines, record_engines, source_graph
from gamma_rt.hashing import sha256_file
from gamma_rt.manifest import AUDIO_COMPONENTS, Manifest, TensorSpec
from gamma_rt.runtime.engine_record import GpuIdentity

H100 = GpuIdentity("NVIDIA H100 80GB HBM3", "9.0", "10.13.0")
ORIN = GpuIdentity("Orin", "8.7", "10.3.0")
TURING = GpuIdentity("Tesla T4", "7.5", "10.13.0")


@pytest.fixture(scope="module")
def bundle(tiny_bundle_onnx, tiny_checkpoint, tmp_path_factory):
    """The tiny fp32 ONNX bundle plus its plain (TensorRT-parsable) graphs."""
    from gamma_rt.export.engine_sources import export_plain_graphs

    folder = tmp_path_factory.mktemp("engine_bundle") / "bundle"
    shutil.copytree(tiny_bundle_onnx, folder)
    export_plain_graphs(tiny_checkpoint, folder)
    return folder


def test_plain_graphs_use_only_standard_onnx_operators(bundle):
    for name in AUDIO_COMPONENTS:
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
    assert [b.source for b in plan.builds] == [f"{n}.plain" for n in AUDIO_COMPONENTS]
    assert [b.component for b in plan.builds] == [f"{n}.fp16" for n in AUDIO_COMPONENTS]


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


@pytest.mark.parametrize("precision,flags", [("fp16", ("FP16",)), ("bf16", ("BF16",)), ("int8", ("INT8", "FP16")),
                                             ("fp8", ("FP8", "FP16"))])
def test_precision_sets_builder_flags_and_only_int8_calibrates(bundle, precision, flags):
    plan = plan_engines(bundle, Manifest.load(bundle), H100, precision)
    assert {b.flags for b in plan.builds} == {flags}
    assert {b.needs_calibration for b in plan.builds} == {precision == "int8"}


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
              key(identity=dataclasses.replace(H100, trt_version="10.14.0")), key(calibration_sha256="abc")]
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
    assert set(built) == {f"{n}.fp16" for n in AUDIO_COMPONENTS}
    assert (folder / plan.timing_cache).stat().st_size > 0
    record_engines(m, plan, built)
    m.write(folder)

    import numpy as np

    from gamma_rt.export.cosine_report import OrtChain, component_feeds, token_cosines
    from gamma_rt.runtime.trt_backend import TrtChain

    mel = np.random.default_rng(0).standard_normal((2, 128, 3000)).astype(np.float32)
    reference = component_feeds(OrtChain(folder, m), mel)["embeddings"]["embeddings"]
    with TrtChain(folder, Manifest.load(folder), "fp16") as chain:
        graphed = chain.encode(mel)
        assert token_cosines(reference, graphed).min() > 0.999
        np.testing.assert_array_equal(chain.encode(mel), graphed)  # the CUDA graph replays the same work
