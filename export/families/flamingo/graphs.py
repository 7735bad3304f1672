"""The two Audio Flamingo graphs as torch modules to trace, built around transformers' own submodules.

    encoder    mel (B, 128, 3000) float32, mel_mask (B, 3000) int64 -> hidden (B, 750, d) float32
               conv1/conv2 (GELU), positions, the layers with a key mask from mel_mask, avg-pool 2, LayerNorm
    projector  hidden (B, 750, d) [, window_index (B,) int64] -> embeddings (B, 750, n_embd) float32
               [Music Flamingo: rotary time embeddings (RoTE) of window ``window_index``], then the MLP

The encoder builds its attention mask as an additive bias (0 where a key is real audio, float32 min where it
is padding), as transformers' eager path does, so the traced Add fuses into MultiHeadAttention's bias.

RoTE repeats MusicFlamingoModel's arithmetic op for op in float32, so that the angles (up to ~5e4 rad for
a 20-minute song) are the same float32 values transformers computes; the rotation itself is in float64,
as in transformers. In fp16 graphs this scope stays float32 (``ROTE_SCOPE``).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

ROTE_SCOPE = "/rote/"


class MaskedEncoder(nn.Module):
    """AudioFlamingo3Encoder's forward with the mask computed inside the graph from ``mel_mask``."""

    def __init__(self, tower):
        super().__init__()
        self.tower = tower

    def forward(self, mel: torch.Tensor, mel_mask: torch.Tensor) -> torch.Tensor:
        t = self.tower
        positions = t.embed_positions.weight
        n = positions.shape[0]
        conv_lengths = (mel_mask.sum(-1) - 1) // 2 + 1
        keep = torch.arange(n, device=mel.device)[None, :] < conv_lengths[:, None]  # (B, S)
        bias = torch.where(keep, 0.0, torch.finfo(torch.float32).min)
        bias = bias[:, None, None, :].expand(-1, 1, n, -1)  # (B, 1, T, S): MultiHeadAttention's bias shape
        x = F.gelu(t.conv1(mel))
        x = F.gelu(t.conv2(x)).permute(0, 2, 1) + positions
        for layer in t.layers:
            x = layer(x, bias)
        x = t.avg_pooler(x.permute(0, 2, 1)).permute(0, 2, 1)
        return t.layer_norm(x)


class RotaryTime(nn.Module):
    """Music Flamingo 2601's rotary time embedding of one window per batch row.

    Timestamps of window k, token j: k * n * step + j * step seconds (step = 4 mel frames, 0.04 s).
    """

    def __init__(self, pos_emb, frame_step: float, n_tokens: int):
        super().__init__()
        self.n = n_tokens
        self.step = frame_step * 4  # conv2 and the pooling each halve the frame rate
        self.window_seconds = frame_step * 4 * n_tokens
        self.max_len = pos_emb.max_seq_len_cached
        # inv_freq repeated pairwise (as repeat_interleave after the product gives the same floats)
        self.register_buffer("inv_freq", torch.repeat_interleave(pos_emb.inv_freq.float(), 2), persistent=False)
        self.register_buffer("time_angles", pos_emb.position_angles[:n_tokens].float(), persistent=False)
        self.register_buffer("offsets", torch.arange(n_tokens, dtype=torch.float32) * self.step, persistent=False)

    def forward(self, hidden: torch.Tensor, window_index: torch.Tensor) -> torch.Tensor:
        stamps = window_index[:, None] * self.n * self.step + self.offsets  # (B, n) float32
        window = torch.round(stamps[:, 0] / self.window_seconds) / self.max_len
        window_freqs = (window[:, None] * self.inv_freq)[:, None, :].expand(-1, self.n, -1)
        time_freqs = self.time_angles[None].expand(window_freqs.shape[0], -1, -1)
        freqs = torch.cat((window_freqs, time_freqs), dim=-1)
        freqs = freqs * (-stamps * 2 * math.pi)[..., None]
        angles = freqs.double()
        x = hidden.double()
        rot = angles.shape[-1]
        head, tail = x[..., :rot], x[..., rot:]
        pairs = head.reshape(*head.shape[:-1], -1, 2)
        turned = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        rotated = head * angles.cos() + turned * angles.sin()
        return torch.cat((rotated, tail), dim=-1).float()


class Projector(nn.Module):
    """The MLP projector, after RoTE when ``rote`` is given (then forward takes ``window_index``)."""

    def __init__(self, mlp, rote: RotaryTime | None = None):
        super().__init__()
        self.mlp = mlp
        self.rote = rote

    def forward(self, hidden: torch.Tensor, *window_index: torch.Tensor) -> torch.Tensor:
        if self.rote is not None:
            hidden = self.rote(hidden, window_index[0])
        return self.mlp(hidden)
