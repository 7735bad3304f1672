"""The one decoder-shape type: the hyperparameters that fix a Qwen2/Qwen3 decoder's tensors.

Field names are transformers' Qwen3Config attribute names, which is what llama.cpp's GGUF keys are written
from (export/gguf_export.py). Export reads it from a folder's config.json (export/families/folder.py), a
family's presets build it, bench writes random GGUFs of it. Pure Python: the runtime may import this.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class DecoderShape:
    """A Qwen-style decoder. Defaults: Qwen3-8B. head_dim: per attention head; rope_theta: RoPE base."""

    vocab_size: int = 151936
    hidden_size: int = 4096
    intermediate_size: int = 12288
    num_hidden_layers: int = 36
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int = 128
    rope_theta: float = 1000000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 40960
    tie_word_embeddings: bool = False

    @classmethod
    def qwen3_8b(cls) -> "DecoderShape":
        return cls()

    @classmethod
    def qwen3_0_6b(cls) -> "DecoderShape":
        return cls(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                   num_key_value_heads=8, head_dim=128, tie_word_embeddings=True)

    @classmethod
    def tiny(cls) -> "DecoderShape":
        """A few-MB decoder for tests; its vocab fits the tiny tokenizers gamma-rt trains."""
        return cls(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=32768)

    def replace(self, **changes) -> "DecoderShape":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The sizes gamma-rt's presets and benchmarks name.
PRESETS = {"tiny": DecoderShape.tiny, "small": DecoderShape.qwen3_0_6b, "full": DecoderShape.qwen3_8b}
