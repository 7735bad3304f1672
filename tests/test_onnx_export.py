"""ONNX export of the audio side: parity with PyTorch and transformers, the manifest contract, merging."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from gamma_rt.cli import main
from gamma_rt.components import component_key as component_name
from gamma_rt.errors import BundleError
from gamma_rt.export.families.gamma.checkpoint import Checkpoint, write_random_checkpoint
from gamma_rt.export.families.gamma.config import GammaConfig
from gamma_rt.export.families.gamma.family import COMPONENTS as GAMMA_COMPONENTS
from gamma_rt.export.families.gamma.family import graph_io
from gamma_rt.export.onnx_export import export_onnx
from gamma_rt.hashing import sha256_file
from gamma_rt.manifest import Manifest


# ||out - ref|| / ||ref|| limits from the issue.
REL_TOL = {"fp32": 1e-4, "fp16": 1e-2}


def rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def session(bundle, key: str) -> ort.InferenceSession:
    return ort.InferenceSession(str(bundle / Manifest.read(bundle).component(key).file))


@pytest.fixture(scope="module")
def both_precisions(tiny_checkpoint, tiny_bundle_onnx, tmp_path_factory):
    """The fp32 bundle copied, then the fp16 graphs exported into the same folder."""
    bundle = tmp_path_factory.mktemp("both") / "bundle"
    shutil.copytree(tiny_bundle_onnx, bundle)
    export_onnx(tiny_checkpoint, bundle, precision="fp16")
    return bundle


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    """The PyTorch model and the checkpoint, loaded once."""
    ckpt = Checkpoint(tiny_checkpoint)
    return ckpt, ckpt.model()


def fresh_inputs(cfg, name: str, batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inputs, _ = graph_io(cfg, name)
    return {s.name: rng.standard_normal((batch, *s.shape[1:])).astype(np.float32) for s in inputs}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("name", GAMMA_COMPONENTS)
@pytest.mark.parametrize("batch", [1, 3])
def test_each_component_matches_pytorch_within_tolerance(both_precisions, reference, name, precision, batch):
    ckpt, model = reference
    feeds = fresh_inputs(ckpt.config, name, batch, seed=100 + batch)
    out = session(both_precisions, component_name(name, precision)).run(None, feeds)[0]
    with torch.no_grad():
        ref = model.audio_side_modules()[name](*(torch.from_numpy(v) for v in feeds.values()))
    ref = (ref.last_hidden_state if hasattr(ref, "last_hidden_state") else ref).numpy()
    assert out.dtype == np.float32  # fp16 graphs still take and give float32
    assert out.shape == ref.shape
    assert rel_err(out, ref) <= REL_TOL[precision]


@pytest.mark.parametrize("batch", [1, 3])
def test_chained_bundle_matches_encode_window(tiny_bundle_onnx, reference, batch):
    ckpt, model = reference
    mel = fresh_inputs(ckpt.config, "temporal_encoder", batch, seed=7)["mel"]
    temporal = session(tiny_bundle_onnx, "temporal_encoder").run(None, {"mel": mel})[0]
    global_ = session(tiny_bundle_onnx, "global_encoder").run(None, {"mel": mel})[0]
    fused = session(tiny_bundle_onnx, "fusion").run(None, {"temporal": temporal, "global": global_})[0]
    embeddings = session(tiny_bundle_onnx, "projector").run(None, {"fused": fused})[0]
    with torch.no_grad():
        ref = model.encode_window(torch.from_numpy(mel)).numpy()
    assert embeddings.shape == (batch, ckpt.config.tokens_per_window, ckpt.config.llm.hidden_size)
    assert rel_err(embeddings, ref) <= 1e-4


@pytest.mark.parametrize("expert", ["temporal_encoder", "global_encoder"])
def test_expert_graph_matches_transformers_whisper_encoder(tiny_bundle_onnx, tiny_checkpoint, expert):
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    ckpt = Checkpoint(tiny_checkpoint)
    cfg = ckpt.config.temporal if expert == "temporal_encoder" else ckpt.config.global_
    oracle = WhisperEncoder(cfg.to_whisper_config()).eval()  # transformers' default attention, not ours
    state = {k[len(expert) + 1:]: t for k, t in ckpt.tensors(expert + ".")}
    oracle.load_state_dict(state)
    mel = fresh_inputs(ckpt.config, expert, 2, seed=11)["mel"]
    out = session(tiny_bundle_onnx, expert).run(None, {"mel": mel})[0]
    with torch.no_grad():
        ref = oracle(torch.from_numpy(mel)).last_hidden_state.numpy()
    assert rel_err(out, ref) <= 1e-4


def test_every_graph_passes_onnx_checker_and_has_the_recorded_opset(both_precisions):
    manifest = Manifest.read(both_precisions)
    for key, c in manifest.components.items():
        path = both_precisions / c.file
        onnx.checker.check_model(str(path))
        opsets = {o.domain: o.version for o in onnx.load(str(path), load_external_data=False).opset_import}
        assert opsets[""] == c.opset, key


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_every_attention_is_fused_and_listed_in_the_manifest(both_precisions, reference, precision):
    """Encoders' self-attention and fusion's cross-attention: one fused op each, no attention Softmax left."""
    cfg = reference[0].config
    layers = {"temporal_encoder": cfg.temporal.encoder_layers, "global_encoder": cfg.global_.encoder_layers,
              "fusion": 2 * cfg.fusion.n_blocks}
    manifest = Manifest.read(both_precisions)
    for name, n_attention in layers.items():
        c = manifest.component(component_name(name, precision))
        ops = [n.op_type for n in onnx.load(str(both_precisions / c.file), load_external_data=False).graph.node]
        assert ops.count("Softmax") == (1 if name == "fusion" else 0)  # the router's gate is the one left
        assert ops.count("MultiHeadAttention") == n_attention
        assert c.extra["fusions"]["MultiHeadAttention"] == n_attention


def test_manifest_records_hashes_shapes_and_precisions(both_precisions):
    manifest = Manifest.load(both_precisions)  # verify=True: every file's size and sha256
    cfg = GammaConfig.tiny()
    assert set(manifest.components) == {component_name(n, p) for n in GAMMA_COMPONENTS for p in ("fp32", "fp16")}
    for name in GAMMA_COMPONENTS:
        for precision in ("fp32", "fp16"):
            c = manifest.component(component_name(name, precision))
            path = both_precisions / c.file
            assert c.sha256 == sha256_file(path) and c.bytes == path.stat().st_size
            assert c.precision == precision and c.kind == "onnx" and c.external_data == []
            assert c.extra["ort_optimized"] and c.extra["fusions"]
            weights = onnx.load(str(path)).graph.initializer
            big = max(weights, key=lambda t: np.prod(t.dims))
            assert big.data_type == (onnx.TensorProto.FLOAT16 if precision == "fp16" else onnx.TensorProto.FLOAT)
            sess = ort.InferenceSession(str(path))
            graph = [(i.name, i.shape, i.type) for i in sess.get_inputs()], [
                (o.name, o.shape, o.type) for o in sess.get_outputs()
            ]
            recorded = [(s.name, s.shape, "tensor(float)") for s in c.inputs], [
                (s.name, s.shape, "tensor(float)") for s in c.outputs
            ]
            assert graph == recorded, c.file
            assert (c.inputs, c.outputs) == graph_io(cfg, name)
    projector = manifest.component("projector")
    assert projector.outputs[0].shape == ["batch", cfg.tokens_per_window, cfg.llm.hidden_size]
    assert manifest.audio.tokens_per_window == cfg.tokens_per_window


def test_second_precision_merges_without_touching_the_first(tiny_bundle_onnx, both_precisions):
    before = Manifest.read(tiny_bundle_onnx)
    after = Manifest.read(both_precisions)
    for name in GAMMA_COMPONENTS:
        assert after.components[name] == before.components[name]
    assert after.source == before.source


def test_export_into_a_bundle_of_another_checkpoint_is_refused(tiny_bundle_onnx, tmp_path, capsys):
    other = write_random_checkpoint(GammaConfig.tiny(), tmp_path / "other", seed=1)
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_onnx, bundle)
    with pytest.raises(BundleError, match="checkpoint_sha256"):
        export_onnx(other, bundle)
    assert main(["export", "onnx", str(other), "--out", str(bundle)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gamma-rt: error:") and "manifest.json" in err and "\n" not in err
    assert Manifest.read(bundle) == Manifest.read(tiny_bundle_onnx)


def test_large_graphs_keep_weights_in_one_hashed_external_file(tiny_checkpoint, tmp_path, monkeypatch):
    from gamma_rt.export import onnx_optimize

    # The 2 GiB limit, moved down so that the tiny graphs take the large-model path.
    monkeypatch.setattr(onnx_optimize, "EXTERNAL_DATA_BYTES", 0)
    bundle = tmp_path / "bundle"
    export_onnx(tiny_checkpoint, bundle)
    manifest = Manifest.load(bundle)  # verifies the external data hashes too
    c = manifest.component("projector")
    assert c.external_data == ["projector.onnx.data"]
    data = bundle / c.external_data[0]
    assert c.extra["external_data_bytes"] == {data.name: data.stat().st_size} and data.stat().st_size > c.bytes
    onnx.checker.check_model(str(bundle / c.file))
    ckpt = Checkpoint(tiny_checkpoint)
    feeds = fresh_inputs(ckpt.config, "projector", 2, seed=3)
    got = session(bundle, "projector").run(None, feeds)[0]
    with torch.no_grad():
        ref = ckpt.component("projector")(torch.from_numpy(feeds["fused"])).numpy()
    assert rel_err(got, ref) <= 1e-4
    # A flipped byte in the weights, same size: the manifest check must catch it.
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="external_data_sha256"):
        Manifest.load(bundle)


def test_chosen_opset_is_written_and_the_chain_still_matches(tiny_checkpoint, reference, tmp_path):
    bundle = tmp_path / "bundle"
    assert main(["export", "onnx", str(tiny_checkpoint), "--out", str(bundle), "--opset", "20"]) == 0
    manifest = Manifest.load(bundle)
    ckpt, model = reference
    mel = fresh_inputs(ckpt.config, "temporal_encoder", 1, seed=5)["mel"]
    hidden = {}
    for name in ("temporal_encoder", "global_encoder"):
        path = bundle / manifest.component(name).file
        assert manifest.component(name).opset == 20
        assert {o.domain: o.version for o in onnx.load(str(path)).opset_import}[""] == 20
        hidden[name] = session(bundle, name).run(None, {"mel": mel})[0]
    feeds = {"temporal": hidden["temporal_encoder"], "global": hidden["global_encoder"]}
    fused = session(bundle, "fusion").run(None, feeds)[0]
    embeddings = session(bundle, "projector").run(None, {"fused": fused})[0]
    with torch.no_grad():
        ref = model.encode_window(torch.from_numpy(mel)).numpy()
    assert rel_err(embeddings, ref) <= 1e-4


def test_onnx_subcommand_help_names_the_graphs_and_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "onnx", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for word in ("temporal_encoder", "fusion", "projector", "--precision", "--opset", "--out"):
        assert word in text


def test_bad_opset_and_missing_checkpoint_are_one_line_errors(tmp_path, capsys):
    assert main(["export", "onnx", str(tmp_path / "nowhere"), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert "nowhere" in err and "\n" not in err
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "onnx", str(tmp_path), "--out", str(tmp_path / "b"), "--opset", "13"])
    assert exit_info.value.code == 2
