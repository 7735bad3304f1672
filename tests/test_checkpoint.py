"""The checkpoint folder: `gamma-rt init` writes one that loads, loading checks every key, stock weights load."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from gamma_rt.cli import main
from gamma_rt.errors import CheckpointError
from gamma_rt.export.families.gamma.checkpoint import Checkpoint, expected_shapes
from gamma_rt.export.families.gamma.config import GammaConfig
from gamma_rt.export.families.gamma.model import qwen3_config
from gamma_rt.export.families.gamma.tokenizer import write_tokenizer


def test_cli_init_writes_a_folder_that_loads_and_runs(tmp_path):
    out = tmp_path / "ckpt"
    assert main(["init", "--preset", "tiny", "--out", str(out), "--seed", "3"]) == 0
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    ckpt = Checkpoint(out)
    ckpt.verify()
    assert ckpt.config == GammaConfig.tiny()
    assert set(ckpt.keys()) == set(expected_shapes(ckpt.config))
    model = ckpt.model()
    mel = torch.randn(1, 128, 3000)
    with torch.no_grad():
        emb = model.encode_window(mel)
    assert emb.shape == (1, 750, 64) and torch.isfinite(emb).all()


def test_same_seed_gives_the_same_weights_and_another_seed_does_not(tiny_checkpoint, tmp_path):
    main(["init", "--preset", "tiny", "--out", str(tmp_path / "a"), "--seed", "0"])
    main(["init", "--preset", "tiny", "--out", str(tmp_path / "b"), "--seed", "1"])
    key = "temporal_encoder.layers.0.fc1.weight"
    ref = Checkpoint(tiny_checkpoint).tensor(key)
    assert torch.equal(Checkpoint(tmp_path / "a").tensor(key), ref)
    assert not torch.equal(Checkpoint(tmp_path / "b").tensor(key), ref)


def broken_copy(tiny_checkpoint, tmp_path, edit) -> Checkpoint:
    """A copy of the tiny checkpoint whose weights were changed by ``edit(state)``."""
    folder = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, folder)
    (shard,) = folder.glob("*.safetensors")
    state = load_file(shard)
    edit(state)
    save_file(state, shard)
    return Checkpoint(folder)


def test_missing_tensor_is_named_in_one_error(tiny_checkpoint, tmp_path):
    ckpt = broken_copy(tiny_checkpoint, tmp_path, lambda s: s.pop("fusion.router.gate.weight"))
    with pytest.raises(CheckpointError, match=r"missing 1: fusion\.router\.gate\.weight"):
        ckpt.verify()
    with pytest.raises(CheckpointError, match="fusion.router.gate.weight"):
        ckpt.component("fusion")


def test_unexpected_tensor_is_named_in_one_error(tiny_checkpoint, tmp_path):
    ckpt = broken_copy(tiny_checkpoint, tmp_path, lambda s: s.update({"projector.extra.weight": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match=r"unexpected 1: projector\.extra\.weight"):
        ckpt.verify()


def test_wrongly_shaped_tensor_is_named_with_both_shapes(tiny_checkpoint, tmp_path):
    key = "projector.linear_1.weight"
    ckpt = broken_copy(tiny_checkpoint, tmp_path, lambda s: s.update({key: torch.zeros(3, 5)}))
    expected = r"wrong shape 1: projector\.linear_1\.weight \(3, 5\) \(config expects \(64, 64\)\)"
    with pytest.raises(CheckpointError, match=expected):
        ckpt.verify()


def test_all_problems_come_in_a_single_error(tiny_checkpoint, tmp_path):
    def edit(state):
        state.pop("global_encoder.layer_norm.bias")
        state["llm.surplus"] = torch.zeros(1)
        state["fusion.ffn.0.weight"] = torch.zeros(1, 1)

    ckpt = broken_copy(tiny_checkpoint, tmp_path, edit)
    with pytest.raises(CheckpointError) as info:
        ckpt.verify()
    message = str(info.value)
    assert "\n" not in message and str(ckpt.folder) in message
    for part in ("global_encoder.layer_norm.bias", "llm.surplus", "fusion.ffn.0.weight"):
        assert part in message


def test_cli_reports_a_broken_checkpoint_as_one_line(tiny_checkpoint, tmp_path, capsys):
    ckpt = broken_copy(tiny_checkpoint, tmp_path, lambda s: s.pop("projector.linear_2.bias"))
    assert main(["export", "onnx", str(ckpt.folder), "--out", str(tmp_path / "bundle")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gamma-rt: error:") and "projector.linear_2.bias" in err and "\n" not in err
    assert not (tmp_path / "bundle" / "manifest.json").exists()


def test_whisper_init_loads_stock_encoder_weights_into_both_experts(tmp_path):
    from transformers import WhisperForConditionalGeneration

    cfg = GammaConfig.tiny()
    stock = WhisperForConditionalGeneration(cfg.temporal.to_whisper_config())
    stock.save_pretrained(tmp_path / "whisper")
    out = tmp_path / "ckpt"
    assert main(["init", "--preset", "tiny", "--out", str(out), "--whisper-init", str(tmp_path / "whisper")]) == 0
    ckpt = Checkpoint(out)
    ckpt.verify()
    encoder = stock.model.encoder.state_dict()
    for expert in ("temporal_encoder", "global_encoder"):
        for key, value in encoder.items():
            assert torch.equal(ckpt.tensor(f"{expert}.{key}"), value), key


def test_qwen3_init_loads_stock_llm_weights(tmp_path):
    from transformers import Qwen3ForCausalLM

    cfg = GammaConfig.tiny()
    stock = Qwen3ForCausalLM(qwen3_config(cfg.llm))
    stock.save_pretrained(tmp_path / "qwen3")
    write_tokenizer(tmp_path / "qwen3", cfg)  # a stock folder carries its tokenizer.json
    out = tmp_path / "ckpt"
    assert main(["init", "--preset", "tiny", "--out", str(out), "--qwen3-init", str(tmp_path / "qwen3")]) == 0
    ckpt = Checkpoint(out)
    ckpt.verify()
    for key, value in stock.state_dict().items():
        assert torch.equal(ckpt.tensor(f"llm.{key}"), value), key
    llm = ckpt.model().llm
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.allclose(llm(ids).logits, stock.eval()(ids).logits, atol=1e-5)


def test_stock_folder_without_safetensors_is_a_checkpoint_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["init", "--out", str(tmp_path / "ckpt"), "--whisper-init", str(tmp_path / "empty")]) == 2
    assert "no *.safetensors" in capsys.readouterr().err
