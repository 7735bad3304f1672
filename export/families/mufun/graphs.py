"""MuFun's two audio graphs as torch modules to trace, around transformers' WhisperEncoder.

    encoder    mel (B, 128, 3000) float32, Whisper log10 scale -> hidden (B, 300, 4 * d) float32
               conv1/conv2 (GELU), positions, the layers; hidden states 0, 7, 15 and 32 concatenated
               (32: after the final LayerNorm, as WhisperEncoder's ``hidden_states`` gives it), AvgPool1d(5, 5)
    projector  hidden (B, 300, 4 * d) -> embeddings (B, 300, n_embd): linear1 (x hx), GELU, linear2

No attention mask: MuFun feeds every chunk as a padded 3000-frame mel and keeps all 300 tokens.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class StackedEncoder(nn.Module):
    """WhisperEncoder's forward, keeping the hidden states MuFun concatenates, then the average pool."""

    def __init__(self, tower, layers: tuple[int, ...], stride: int):
        super().__init__()
        self.tower = tower
        self.layers = tuple(layers)
        self.stride = stride

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        t = self.tower
        x = F.gelu(t.conv1(mel))
        x = F.gelu(t.conv2(x)).permute(0, 2, 1) + t.embed_positions.weight
        states = [x]
        for layer in t.layers[:max(self.layers)]:
            x = layer(x, None)
            states.append(x)
        if max(self.layers) == len(t.layers):
            states[-1] = t.layer_norm(x)  # the last hidden state is the normed one
        x = torch.cat([states[i] for i in self.layers], dim=-1)
        return F.avg_pool1d(x.permute(0, 2, 1), self.stride, self.stride).permute(0, 2, 1)


class Connector(nn.Module):
    """MuFun's ``blp`` connector: linear1 (width -> hx * width), GELU, linear2 (-> the LLM width)."""

    def __init__(self, width: int, hx: int, n_embd: int):
        super().__init__()
        self.linear1 = nn.Linear(width, hx * width)
        self.act = nn.GELU()
        self.linear2 = nn.Linear(hx * width, n_embd)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.act(self.linear1(hidden)))
