"""What differs between the decoder architectures gamma-rt writes to GGUF: hyperparameters, tensor rewrites
and the pre-tokenizer, one row per gguf-py architecture (:data:`ARCHS`). Shared by the decoder and the
LoRA adapter writers."""

from __future__ import annotations

import numpy as np


def add_qwen3_hparams(writer, llm, head_dim: bool = True) -> None:
    """The Qwen3 hyperparameters llama.cpp reads, from ``llm`` with transformers' Qwen3Config attribute names
    (gamma_rt/decoder_shape.py's DecoderShape). ``head_dim``: write the key and
    value sizes (Qwen3 sets its own; for Qwen2 they follow from the width and llama.cpp's converter writes
    none)."""
    writer.add_context_length(llm.max_position_embeddings)
    writer.add_embedding_length(llm.hidden_size)
    writer.add_block_count(llm.num_hidden_layers)
    writer.add_feed_forward_length(llm.intermediate_size)
    writer.add_head_count(llm.num_attention_heads)
    writer.add_head_count_kv(llm.num_key_value_heads)
    if head_dim:
        writer.add_key_length(llm.head_dim)
        writer.add_value_length(llm.head_dim)
    writer.add_rope_freq_base(llm.rope_theta)
    writer.add_layer_norm_rms_eps(llm.rms_norm_eps)


def add_qwen2_hparams(writer, llm) -> None:
    add_qwen3_hparams(writer, llm, head_dim=False)


def add_llama_hparams(writer, llm) -> None:
    """Llama 3: Qwen2's keys plus the rotary width and vocabulary size llama.cpp's converter writes."""
    add_qwen3_hparams(writer, llm, head_dim=False)
    writer.add_rope_dimension_count(llm.head_dim)
    writer.add_vocab_size(llm.vocab_size)


def rope_halves_to_pairs(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of a q or k projection (out, in) reordered per head from HF's rotate-half layout (first half of a
    head's channels pairs with the second) to llama.cpp's ``llama`` RoPE, which rotates adjacent pairs."""
    rows = weight.shape[0]
    head = rows // n_heads
    return weight.reshape(n_heads, 2, head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def llama_rows(key: str, weight: np.ndarray, llm) -> np.ndarray:
    """What llama.cpp's ``llama`` architecture needs changed in an HF Llama tensor: q/k rows for its RoPE."""
    if key.endswith("self_attn.q_proj.weight"):
        return rope_halves_to_pairs(weight, llm.num_attention_heads)
    if key.endswith("self_attn.k_proj.weight"):
        return rope_halves_to_pairs(weight, llm.num_key_value_heads)
    return weight


def _same(key: str, weight: np.ndarray, llm) -> np.ndarray:
    return weight


# gguf-py architecture name -> (its MODEL_ARCH, hyperparameter writer, tensor rewrite, pre-tokenizer)
ARCHS = {
    "qwen3": ("QWEN3", add_qwen3_hparams, _same, "qwen2"),
    "qwen2": ("QWEN2", add_qwen2_hparams, _same, "qwen2"),
    "llama": ("LLAMA", add_llama_hparams, llama_rows, "llama-bpe"),
}
