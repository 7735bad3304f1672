"""Matrix work and weight bytes of each stage, counted from the config's shapes (no model needed).

These are the numerators of "percent of matrix rate" and "percent of bandwidth": a stage that does
F floating-point operations in t seconds on a chip rated R FLOP/s runs at F / (t R). Counts take
2 FLOP per multiply-add and include attention's score and value products; norms, softmax and
activations are left out (a few percent at these sizes). Plain Python: the plan command uses it too.
"""

from __future__ import annotations


def whisper_encoder_flops(d: int, layers: int, ffn: int, n_mels: int = 128, frames: int = 3000) -> float:
    """One Whisper encoder on one window of ``frames`` mel frames (-> frames/2 tokens)."""
    t = frames // 2
    convs = 2 * frames * n_mels * 3 * d + 2 * t * d * 3 * d  # conv1 (k3), conv2 (k3, stride 2)
    per_layer = 2 * t * (4 * d * d + 2 * d * ffn) + 4 * t * t * d  # projections + QK^T and AV
    return convs + layers * per_layer


def fusion_flops(d: int, n_blocks: int, ffn: int, tokens: int = 1500) -> float:
    """Injector + extractor cross-attention per block, the router gate, the residual FFN."""
    cross = 2 * tokens * 4 * d * d + 4 * tokens * tokens * d
    return n_blocks * 2 * cross + 2 * tokens * 2 * d * 2 + 2 * tokens * 2 * d * ffn


def projector_flops(d_in: int, hidden: int, d_llm: int, tokens: int = 750) -> float:
    return 2 * tokens * (d_in * hidden + hidden * d_llm)


def qwen3_layer_params(hidden: int, ffn: int, n_heads: int, n_kv: int, head_dim: int) -> int:
    """Matrix parameters of one decoder layer (q, k, v, o, gate, up, down)."""
    return 2 * hidden * n_heads * head_dim + 2 * hidden * n_kv * head_dim + 3 * hidden * ffn


def qwen3_prefill_flops(
    tokens: int, hidden: int, ffn: int, layers: int, n_heads: int, n_kv: int, head_dim: int, vocab: int,
    logits_for_all: bool = True,
) -> float:
    """A prefill of ``tokens`` positions from an empty cache (causal attention counted as half a square)."""
    matrices = 2 * tokens * layers * qwen3_layer_params(hidden, ffn, n_heads, n_kv, head_dim)
    attention = layers * 2 * tokens * tokens * n_heads * head_dim  # 4 T^2 d / 2 for the causal half
    head = 2 * (tokens if logits_for_all else 1) * hidden * vocab
    return matrices + attention + head


def qwen3_weight_bytes_per_token(
    hidden: int, ffn: int, layers: int, n_heads: int, n_kv: int, head_dim: int, vocab: int, bytes_per_weight: float,
    tied: bool = False,
) -> float:
    """Bytes of weights one decode step reads: every layer matrix and the output head (the embedding table
    is read one row per token, so it does not count)."""
    matrices = layers * qwen3_layer_params(hidden, ffn, n_heads, n_kv, head_dim)
    head = hidden * vocab
    return (matrices + head) * bytes_per_weight


def gamma_stage_flops(cfg) -> dict[str, float]:
    """Per-window FLOP of each audio stage and the LLM prefill of one window's tokens, for a GammaConfig."""
    t, g, llm = cfg.temporal, cfg.global_, cfg.llm
    frames = cfg.audio.window_frames
    enc_tokens = cfg.encoder_tokens_per_window
    return {
        "temporal_encoder": whisper_encoder_flops(t.d_model, t.encoder_layers, t.encoder_ffn_dim, t.num_mel_bins, frames),
        "global_encoder": whisper_encoder_flops(g.d_model, g.encoder_layers, g.encoder_ffn_dim, g.num_mel_bins, frames),
        "fusion": fusion_flops(t.d_model, cfg.fusion.n_blocks, cfg.fusion.ffn_dim, enc_tokens),
        "projector": projector_flops(t.d_model, cfg.projector.hidden_dim, llm.hidden_size, cfg.tokens_per_window),
        "prefill_window": qwen3_prefill_flops(
            cfg.tokens_per_window, llm.hidden_size, llm.intermediate_size, llm.num_hidden_layers,
            llm.num_attention_heads, llm.num_key_value_heads, llm.head_dim, llm.vocab_size,
        ),
    }
