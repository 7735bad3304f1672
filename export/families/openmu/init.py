"""``gamma-rt init --family openmu``: a random OpenMU in its published layout.

    OUT/                          the OpenMU checkpoint folder (what Sony/OpenMU-Bench's openmu_checkpoints hold)
      config.json                 LlavaConfig: model_type llava_llama, mm_projector_type mlp2x_gelu, ...
      adapter_config.json         PEFT's LoraConfig (r 16, alpha 128, dropout 0.05, every Linear of the LLM)
      adapter_model.safetensors   the LoRA weights, written by PEFT's save_pretrained
      non_lora_trainables.bin     the projector (base_model.model.model.mm_projector.*), torch.save
      vitb_finetuned.pth          AudioMAE's fine-tuned ViT ({"model": state dict}), torch.save
      base/                       the Llama 3 base (Meta-Llama-3-8B-Instruct's layout), save_pretrained

``tiny``: a 2-layer Llama of width 64 and a 6-block ViT of width 64; ``small``: an 8-layer Llama of width
1024 with the same ViT (for bench/lora_cost.py). ``full``: Llama-3-8B's and ViT-B/16's
shapes; its Llama is streamed one tensor at a time into ~2 GB bf16 shards (16 GB in all, one shard in memory
at most) and its adapter written straight in PEFT's layout (``write_streamed``), so no 8B model is ever built. LoRA B matrices are random, not PEFT's
zeros, so that the adapter changes the answers.
"""

from __future__ import annotations

import json
from pathlib import Path

from .prompt import BOS, CHAT_TEMPLATE, EOS, EOT, train_llama3_bpe

PRESETS = {
    "tiny": {"llm": dict(vocab_size=768, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048),
             "vit": dict(dim=64, depth=6), "bpe": 512},
    # a decoder wide enough that a LoRA adapter's run-time cost shows (bench/lora_cost.py)
    "small": {"llm": dict(vocab_size=768, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                          num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=2048),
              "vit": dict(dim=64, depth=6), "bpe": 512},
    "full": {"llm": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192),
             "vit": dict(dim=768, depth=12), "bpe": 4096, "stream": True, "std": 0.02, "lora_std": 0.01},
}
LORA = dict(r=16, lora_alpha=128, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM",
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
AUDIO_CKPT = "vitb_finetuned.pth"
BASE = "base"


def llava_config(llm: dict, vit_dim: int, base_config: dict) -> dict:
    """The LlavaConfig OpenMU's training saves beside the adapter (the base's fields + the multimodal ones)."""
    return {**base_config, "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava_llama",
            "mm_vision_tower": "mae_vit_base_patch16_dec512d8b", "mm_projector_type": "mlp2x_gelu",
            "mm_hidden_size": vit_dim, "mm_vision_select_layer": -1, "mm_vision_select_feature": "patch",
            "mm_patch_merge_type": "flat", "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
            "tune_mm_mlp_adapter": False, "use_mm_proj": True, "audio_num_pooling_tokens": 8,
            "audio_input_target_length": 3072, "audio_pretrained_ckpt_path": AUDIO_CKPT}


def write_tokenizer(folder: Path, preset: dict):
    from transformers import PreTrainedTokenizerFast

    tok, first_special = train_llama3_bpe(preset["bpe"], preset["llm"]["vocab_size"])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOT, pad_token=None)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    return fast, first_special


def write_base(out: Path, preset: dict, seed: int) -> dict:
    """The random Llama 3 base in ``out / base``; returns its config.json."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    folder = out / BASE
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer, first_special = write_tokenizer(folder, preset)
    bos, eos, eot = (tokenizer.convert_tokens_to_ids(t) for t in (BOS, EOS, EOT))
    config = LlamaConfig(**preset["llm"], rope_theta=500000.0, rms_norm_eps=1e-5, hidden_act="silu",
                         tie_word_embeddings=False, bos_token_id=bos, eos_token_id=eot, attention_bias=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # wider than the default init, so a tiny model's greedy answers are not all one token
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.08)
    model.save_pretrained(folder, safe_serialization=True)
    GenerationConfig(bos_token_id=bos, eos_token_id=[eos, eot]).save_pretrained(folder)
    return json.loads((folder / "config.json").read_text()), model


def write_adapter(out: Path, model, seed: int) -> None:
    """PEFT's LoRA on every Linear of the LLM (lm_head excepted), saved by PEFT itself."""
    import torch
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(**LORA))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    peft_model.save_pretrained(out)
    config = json.loads((out / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = BASE  # relative: the base folder beside the adapter
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))


def write_audio(out: Path, vit: dict, n_embd: int, seed: int) -> None:
    """AudioMAE's weights (fixed sin-cos table, random rest) and the projector (non_lora_trainables.bin)."""
    import torch

    from .audiomae import AudioMAE, Projector, sincos_table

    torch.manual_seed(seed + 2)
    mae = AudioMAE(vit["dim"], vit["depth"], vit["dim"] // 64)
    with torch.no_grad():
        for name, p in mae.named_parameters():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "fc_norm.weight":
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.05)
        mae.pos_embed.copy_(sincos_table(vit["dim"]))
    torch.save({"model": mae.state_dict()}, out / AUDIO_CKPT)
    projector = Projector(vit["dim"], n_embd)
    with torch.no_grad():
        for p in projector.parameters():
            p.normal_(0.0, 0.1)
    state = {f"base_model.model.model.mm_projector.{k[len('mlp.'):]}": v for k, v in projector.state_dict().items()}
    torch.save(state, out / "non_lora_trainables.bin")


def llama_config(spec: dict, tokenizer):
    from transformers import LlamaConfig

    bos, eot = (tokenizer.convert_tokens_to_ids(t) for t in (BOS, EOT))
    return LlamaConfig(**spec["llm"], rope_theta=500000.0, rms_norm_eps=1e-5, hidden_act="silu",
                       tie_word_embeddings=False, bos_token_id=bos, eos_token_id=eot, attention_bias=False)


def write_streamed(spec: dict, out: Path, seed: int = 0, progress=None, shard_bytes: int | None = None) -> dict:
    """The base (bf16, sharded safetensors + index) and the PEFT adapter, one tensor at a time: shapes come
    from a Llama on the meta device, values from ``weights.random_tensor``. Returns the base's config.json."""
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file
    from transformers import GenerationConfig, LlamaForCausalLM

    from ...weights import SHARD_BYTES, ShardWriter, generator, random_tensor

    progress = progress or (lambda items, **_: items)
    folder = out / BASE
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer, _ = write_tokenizer(folder, spec)
    config = llama_config(spec, tokenizer)
    with torch.device("meta"):
        shapes = [(k, tuple(v.shape)) for k, v in LlamaForCausalLM(config).state_dict().items()]
    writer = ShardWriter(folder, shard_bytes or SHARD_BYTES)
    for name, shape in progress(shapes, description="base weights"):
        writer.add(name, random_tensor(name, shape, seed, spec["std"]).to(torch.bfloat16).contiguous())
    writer.close()
    config.architectures = ["LlamaForCausalLM"]  # as a published Llama folder's config.json says
    config.save_pretrained(folder)
    bos, eos, eot = (tokenizer.convert_tokens_to_ids(t) for t in (BOS, EOS, EOT))
    GenerationConfig(bos_token_id=bos, eos_token_id=[eos, eot]).save_pretrained(folder)

    # PEFT's save_pretrained layout: base_model.model.<module>.lora_A.weight (r, in), lora_B.weight (out, r)
    LoraConfig(**LORA, base_model_name_or_path=BASE, inference_mode=True).save_pretrained(out)
    adapter = {}
    for name, (rows, cols) in ((n, s) for n, s in shapes if n.endswith("_proj.weight")):
        module = name[: -len(".weight")]
        if module.rsplit(".", 1)[-1] in LORA["target_modules"]:
            for part, shape in (("lora_A", (LORA["r"], cols)), ("lora_B", (rows, LORA["r"]))):
                key = f"base_model.model.{module}.{part}.weight"
                adapter[key] = torch.randn(shape, generator=generator(key, seed + 1)) * spec["lora_std"]
    save_file(adapter, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    return json.loads((folder / "config.json").read_text())


def write_openmu(preset: str, out: Path, seed: int = 0, progress=None) -> Path:
    if preset not in PRESETS:
        from gamma_rt.errors import CheckpointError

        raise CheckpointError(f"unknown preset {preset!r} for openmu; choose {', '.join(PRESETS)}")
    spec = PRESETS[preset]
    out = Path(out)
    if spec.get("stream"):
        out.mkdir(parents=True, exist_ok=True)
        base_config = write_streamed(spec, out, seed, progress)
        write_audio(out, spec["vit"], spec["llm"]["hidden_size"], seed)
        config = llava_config(spec["llm"], spec["vit"]["dim"], base_config)
        (out / "config.json").write_text(json.dumps(config, indent=2))
        return out
    out.mkdir(parents=True, exist_ok=True)
    base_config, model = write_base(out, spec, seed)
    write_adapter(out, model, seed)
    write_audio(out, spec["vit"], spec["llm"]["hidden_size"], seed)
    config = llava_config(spec["llm"], spec["vit"]["dim"], base_config)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out
