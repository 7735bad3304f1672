"""The PyTorch reference for OpenMU, from public classes: the oracle the exported graphs and GGUFs are checked
against.

- Audio: transformers' ``ViTModel`` (the plain ViT: class token, learned-slot positional table, pre-norm
  blocks, no masking) loading AudioMAE's key layout through :data:`VIT_KEYS` (fused qkv split in three).
  ``ViTMAEModel`` is not faithful here: even at mask_ratio 0 it shuffles the patches by random noise,
  and it builds its own square-grid sin-cos table instead of reading the checkpoint's 64 x 8 one.
  Then fc_norm over the blocks after the fourth, averaged; OpenMU's ``pool_freq``; the segments' split
  and concatenation as OpenMU's AudioMAEencoder writes them (torch.split / torch.cat).
- LLM: transformers' ``LlamaForCausalLM`` from the base folder with PEFT's ``PeftModel`` on top (merged
  by ``merge_and_unload``, as OpenMU's loader does), fed LLaVA's input: the text embeddings with the
  audio tokens in place of ``<image>``.
"""

from __future__ import annotations

import torch
from torch import nn

from .audiomae import CONTEXTUAL_DEPTH, LAYER_NORM_EPS

# AudioMAE (timm) -> transformers 5's ViTModel, per block; qkv is split below
VIT_BLOCK_KEYS = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "attn.proj": "attention.o_proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
VIT_KEYS = {
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
}


def vit_state(mae_state: dict, depth: int) -> dict:
    """AudioMAE's state dict in ViTModel's names (without fc_norm and head, which ViTModel has not)."""
    out = {ours: mae_state[theirs] for theirs, ours in VIT_KEYS.items()}
    for i in range(depth):
        for theirs, ours in VIT_BLOCK_KEYS.items():
            for leaf in ("weight", "bias"):
                out[f"layers.{i}.{ours}.{leaf}"] = mae_state[f"blocks.{i}.{theirs}.{leaf}"]
        for leaf in ("weight", "bias"):
            q, k, v = mae_state[f"blocks.{i}.attn.qkv.{leaf}"].chunk(3, dim=0)
            for name, part in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
                out[f"layers.{i}.attention.{name}.{leaf}"] = part
    return out


class AudioReference(nn.Module):
    """mel (B, 128, 3072) -> embeddings (B, 192, n_embd), from transformers' ViTModel."""

    def __init__(self, mae_state: dict, projector_state: dict, tokens_per_segment: int = 64):
        super().__init__()
        from transformers import ViTConfig, ViTModel

        dim = mae_state["cls_token"].shape[-1]
        depth = len({k.split(".")[1] for k in mae_state if k.startswith("blocks.")})
        config = ViTConfig(hidden_size=dim, num_hidden_layers=depth, num_attention_heads=max(1, dim // 64),
                           intermediate_size=4 * dim, hidden_act="gelu", layer_norm_eps=LAYER_NORM_EPS,
                           image_size=(1024, 128), patch_size=16, num_channels=1, qkv_bias=True,
                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        config._attn_implementation = "eager"
        self.vit = ViTModel(config, add_pooling_layer=False)
        missing, unexpected = self.vit.load_state_dict(vit_state(mae_state, depth), strict=False)
        if unexpected or [k for k in missing if not k.startswith("layernorm.")]:  # ViTModel's final norm is unused
            raise ValueError(f"ViTModel does not take AudioMAE's layout: missing {missing}, unexpected {unexpected}")
        self.fc_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.fc_norm.load_state_dict({"weight": mae_state["fc_norm.weight"], "bias": mae_state["fc_norm.bias"]})
        n_embd = projector_state["0.weight"].shape[0]
        self.projector = nn.Sequential(nn.Linear(dim, n_embd), nn.GELU(), nn.Linear(n_embd, n_embd))
        self.projector.load_state_dict(projector_state)
        self.tokens = tokens_per_segment
        self.eval()

    def hidden(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, 128, 3072) -> (B, 192, d), before the projector."""
        x = mel.transpose(1, 2)[:, None]  # (B, 1, 3072, 128): OpenMU's image layout, time x frequency
        bs, frames = x.shape[0], x.shape[2]
        segments = torch.cat(torch.split(x, frames // 3, dim=2), dim=0)
        states = self.vit(pixel_values=segments, output_hidden_states=True).hidden_states
        # hidden_states[i + 1] is block i's output; OpenMU keeps blocks i > CONTEXTUAL_DEPTH
        kept = [self.fc_norm(h) for h in states[CONTEXTUAL_DEPTH + 2:]]
        hidden = torch.stack(kept).mean(dim=0)[:, 1:]
        pooled = hidden.view(hidden.shape[0], -1, self.tokens, hidden.shape[-1]).mean(dim=1)
        return torch.cat(torch.split(pooled, bs, dim=0), dim=1)

    @torch.no_grad()
    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.projector(self.hidden(mel))


def audio_reference(family) -> AudioReference:
    """The reference for an opened OpenMU family (export/families/openmu)."""
    return AudioReference({k: v.float() for k, v in family._audio_state().items()}, family.projector_state(),
                          family.tokens_per_segment)


def llm_reference(family, adapter: bool = True):
    """LlamaForCausalLM from the base folder, with PEFT's adapter merged (``merge_and_unload``) if asked."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(family.base, torch_dtype=torch.float32)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, family.folder).merge_and_unload()
    return model.eval()


@torch.no_grad()
def greedy_answer(model, tokenizer, embeddings: torch.Tensor, question: str, n_tokens: int) -> list[int]:
    """LLaVA's input for one question: BOS + the text before ``<image>``, the audio embeddings, the text
    after it (each side tokenized on its own); then ``n_tokens`` greedy tokens, no stop."""
    from .prompt import CHAT_TEMPLATE, IMAGE

    messages = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": question}]}]
    text = tokenizer.apply_chat_template(messages, chat_template=CHAT_TEMPLATE, tokenize=False,
                                         add_generation_prompt=True)
    before, after = text.split(IMAGE)
    ids_before = tokenizer(before, add_special_tokens=False).input_ids
    ids_after = tokenizer(after, add_special_tokens=False).input_ids
    embed = model.get_input_embeddings()
    x = torch.cat([embed(torch.tensor([ids_before])), embeddings.reshape(1, -1, embeddings.shape[-1]),
                   embed(torch.tensor([ids_after]))], dim=1)
    out, past = [], None
    for _ in range(n_tokens):
        result = model(inputs_embeds=x, past_key_values=past, use_cache=True)
        past = result.past_key_values
        token = int(result.logits[0, -1].argmax())
        out.append(token)
        x = embed(torch.tensor([[token]]))
    return out
