"""The GaMMA reference model in PyTorch, read top to bottom: fusion blocks, router, projector, the whole model.

Experts are transformers' ``WhisperEncoder`` and the LLM is transformers' ``Qwen3ForCausalLM``, so their
state-dict keys (under the ``temporal_encoder.``, ``global_encoder.`` and ``llm.`` prefixes) are the stock
checkpoints' keys. Fusion, router, pooling and projector are this project's own modules.

Shapes, for one batch of B windows of 30 s:
    log-mel      (B, 128, 3000) float32, Whisper log10 scale
    expert out   (B, 1500, d_expert)
    fusion out   (B, 1500, d_expert)
    projector    (B, 750, d_llm)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers import Qwen3ForCausalLM
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from gamma_rt.decoder_shape import DecoderShape

from .config import FusionConfig, GammaConfig, ProjectorConfig


class CrossAttention(nn.Module):
    """Pre-norm multi-head cross-attention: ``query`` tokens attend to ``context`` tokens."""

    def __init__(self, d: int, n_heads: int, eps: float):
        super().__init__()
        self.n_heads = n_heads
        # A Python float, so the traced graph holds a constant the attention fusion can read.
        self.scale = (d // n_heads) ** -0.5
        self.norm_q = nn.LayerNorm(d, eps=eps)
        self.norm_kv = nn.LayerNorm(d, eps=eps)
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, t, d = query.shape
        h = self.n_heads
        q = self.q_proj(self.norm_q(query)).view(b, t, h, d // h).transpose(1, 2)
        kv = self.norm_kv(context)
        k = self.k_proj(kv).view(b, -1, h, d // h).transpose(1, 2)
        v = self.v_proj(kv).view(b, -1, h, d // h).transpose(1, 2)
        attn = torch.softmax((q @ k.transpose(-1, -2)) * self.scale, dim=-1)
        return self.out_proj((attn @ v).transpose(1, 2).reshape(b, t, d))


class FusionBlock(nn.Module):
    """Injector (temporal <- global, gated, init 0) then extractor (global <- temporal), both residual."""

    def __init__(self, d: int, cfg: FusionConfig):
        super().__init__()
        self.injector = CrossAttention(d, cfg.n_heads, cfg.layer_norm_eps)
        self.injector_gate = nn.Parameter(torch.full((d,), float(cfg.injector_gate_init)))
        self.extractor = CrossAttention(d, cfg.n_heads, cfg.layer_norm_eps)

    def forward(self, temporal: torch.Tensor, global_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        temporal = temporal + self.injector_gate * self.injector(temporal, global_)
        global_ = global_ + self.extractor(global_, temporal)
        return temporal, global_


class Router(nn.Module):
    """Token-level MoE gate: a softmax over the two experts for every token, from both experts' features."""

    def __init__(self, d: int, n_experts: int = 2):
        super().__init__()
        self.gate = nn.Linear(n_experts * d, n_experts)

    def forward(self, temporal: torch.Tensor, global_: torch.Tensor) -> torch.Tensor:
        """Returns the mix ``w_t * temporal + w_g * global``, (B, T, d)."""
        weights = torch.softmax(self.gate(torch.cat([temporal, global_], dim=-1)), dim=-1)
        return weights[..., :1] * temporal + weights[..., 1:] * global_


class FusionNetwork(nn.Module):
    """Dual-encoder fusion: extractor/injector blocks, the token-level router, then a residual FFN."""

    def __init__(self, d: int, cfg: FusionConfig):
        super().__init__()
        self.blocks = nn.ModuleList(FusionBlock(d, cfg) for _ in range(cfg.n_blocks))
        self.router = Router(d)
        self.ffn_norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_dim), nn.GELU(), nn.Linear(cfg.ffn_dim, d))

    def forward(self, temporal: torch.Tensor, global_: torch.Tensor) -> torch.Tensor:
        """(B, T, d), (B, T, d) -> (B, T, d)."""
        for block in self.blocks:
            temporal, global_ = block(temporal, global_)
        x = self.router(temporal, global_)
        return x + self.ffn(self.ffn_norm(x))


class Projector(nn.Module):
    """Average-pool over time by ``pool_stride``, then Linear-GELU-Linear to the LLM width."""

    def __init__(self, d_in: int, d_llm: int, cfg: ProjectorConfig):
        super().__init__()
        self.pool_stride = cfg.pool_stride
        self.linear_1 = nn.Linear(d_in, cfg.hidden_dim)
        self.linear_2 = nn.Linear(cfg.hidden_dim, d_llm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, d_in) -> (B, T // stride, d_llm)."""
        x = F.avg_pool1d(x.transpose(1, 2), self.pool_stride, self.pool_stride).transpose(1, 2)
        return self.linear_2(F.gelu(self.linear_1(x)))


class GammaModel(nn.Module):
    """Both experts, fusion, projector and the Qwen3 LLM."""

    def __init__(self, cfg: GammaConfig):
        super().__init__()
        if cfg.temporal.d_model != cfg.global_.d_model:
            raise ValueError("the fusion network needs both experts to share d_model")
        self.config = cfg
        self.temporal_encoder = WhisperEncoder(_eager(cfg.temporal.to_whisper_config()))
        self.global_encoder = WhisperEncoder(_eager(cfg.global_.to_whisper_config()))
        d = cfg.temporal.d_model
        self.fusion = FusionNetwork(d, cfg.fusion)
        self.projector = Projector(d, cfg.llm.hidden_size, cfg.projector)
        self.llm = Qwen3ForCausalLM(_eager(qwen3_config(cfg.llm)))

    def encode_window(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, n_mels, 3000) log-mel -> (B, 750, d_llm) LLM embeddings, for full windows."""
        temporal = self.temporal_encoder(mel).last_hidden_state
        global_ = self.global_encoder(mel).last_hidden_state
        return self.projector(self.fusion(temporal, global_))

    def audio_side_modules(self) -> dict[str, nn.Module]:
        """The components exported one graph each, by manifest component name."""
        return {
            "temporal_encoder": self.temporal_encoder,
            "global_encoder": self.global_encoder,
            "fusion": self.fusion,
            "projector": self.projector,
        }


def qwen3_config(shape: DecoderShape):
    """transformers' Qwen3Config of a decoder shape."""
    from transformers import Qwen3Config

    return Qwen3Config(**shape.to_dict(), attention_bias=False, use_cache=True)


def _eager(hf_config):
    # The eager attention path traces to plain ONNX ops and is the numerically plain reference.
    hf_config._attn_implementation = "eager"
    return hf_config
