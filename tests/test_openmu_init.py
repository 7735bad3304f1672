"""``gamma-rt init --family openmu --preset full``'s streamed writer, run at the tiny preset's shape with
small shards: the base loads in transformers with every weight, PEFT loads the adapter onto it, and the
family reader sees r 16 on every Linear of every layer."""

from __future__ import annotations

import json

import torch

from openmu_fixtures import openmu_family
from gamma_rt.export.families.openmu.init import LORA, PRESETS, write_openmu


def test_streamed_writer_gives_a_folder_transformers_and_peft_load(tmp_path, monkeypatch):
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    spec = {**PRESETS["tiny"], "stream": True, "std": 0.02, "lora_std": 0.01}
    monkeypatch.setitem(PRESETS, "streamed", spec)
    import gamma_rt.export.families.openmu.init as init

    real = init.write_streamed
    monkeypatch.setattr(init, "write_streamed", lambda *a, **k: real(*a, **k, shard_bytes=200_000))
    folder = write_openmu("streamed", tmp_path / "openmu")

    index = json.loads((folder / "base" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # really sharded
    model, info = LlamaForCausalLM.from_pretrained(folder / "base", dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.model.embed_tokens.weight.dtype == torch.float32
    assert torch.equal(model.model.norm.weight, torch.ones_like(model.model.norm.weight))

    peft = PeftModel.from_pretrained(model, folder)
    layers = spec["llm"]["num_hidden_layers"]
    lora_a = [n for n, _ in peft.named_parameters() if "lora_A" in n]
    assert len(lora_a) == layers * len(LORA["target_modules"])
    q = peft.base_model.model.model.layers[0].self_attn.q_proj
    assert q.r["default"] == 16 and q.scaling["default"] == 128 / 16
    assert q.lora_B["default"].weight.abs().sum() > 0  # random, not PEFT's zeros: the adapter changes answers

    family = openmu_family(folder)
    assert family.lora.rank == 16 and len(family.lora.pairs) == layers * len(LORA["target_modules"])
    assert family.shape.hidden_size == spec["llm"]["hidden_size"]
    family.check()
