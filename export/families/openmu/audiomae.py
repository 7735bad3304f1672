"""OpenMU's audio side as torch modules to trace: the AudioMAE ViT-B/16 encoder with its pooling, and the
mlp2x_gelu projector. Written from the published definition, in AudioMAE's own key layout
(``vitb_finetuned.pth``: timm 0.3's VisionTransformer, fused ``attn.qkv``), so its state dict loads as is.

    encoder    mel (B, 128, 3072) float32, normalized Kaldi fbank -> hidden (B, 192, d)
    projector  hidden (B, 192, d) -> embeddings (B, 192, n_embd)

The encoder, as OpenMU's AudioMAEencoder runs it:

1. the 3,072 frames are cut into three segments of 1,024 frames, each a (1, 1024, 128) time x frequency
   image, encoded on its own;
2. 16 x 16 patches at stride 16 (a 64 x 8 grid, 512 patches, time-major), plus the positional table the
   checkpoint holds (fixed sin-cos in AudioMAE); the class token is prepended;
3. twelve pre-norm transformer blocks (LayerNorm eps 1e-6, exact GELU); the output is the mean over the
   blocks after the fourth (``contextual_depth`` 3: blocks 4..11) of ``fc_norm`` applied to each;
4. the class token is dropped, and patch j, j + 64, ..., j + 448 are averaged (``pool_freq``, 8 groups of
   64): 64 tokens per segment, the three segments' tokens concatenated: 192.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

SEGMENTS = 3  # 1,024-frame segments per 3,072-frame clip
SEGMENT_FRAMES = 1024
PATCH = 16
CONTEXTUAL_DEPTH = 3  # AudioMAE's models_vit: blocks after this index are averaged
POOLED_TOKENS = 64  # tokens kept per segment: 512 patches // audio_num_pooling_tokens (8)
LAYER_NORM_EPS = 1e-6


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        scores = torch.matmul(q, k.transpose(-2, -1)) * (d // self.heads) ** -0.5
        out = torch.matmul(scores.softmax(dim=-1), v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(1, dim, kernel_size=PATCH, stride=PATCH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, 512, d), patch index = time * 8 + frequency


class AudioMAE(nn.Module):
    """AudioMAE's fine-tuned ViT (``vit_base_patch16``, ``global_pool=True``) in its checkpoint's layout.

    ``head`` (the AudioSet classifier) is kept so the published state dict loads strictly; it is unused."""

    def __init__(self, dim: int, depth: int, heads: int, n_patches: int = 512, n_classes: int = 527):
        super().__init__()
        self.patch_embed = PatchEmbed(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_patches + 1, dim))
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.fc_norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, segments: torch.Tensor) -> torch.Tensor:
        """(B, 1, 1024, 128) -> (B, 513, d): the mean of fc_norm over the blocks past CONTEXTUAL_DEPTH."""
        x = self.patch_embed(segments) + self.pos_embed[:, 1:]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        kept = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i > CONTEXTUAL_DEPTH:
                kept.append(self.fc_norm(x))
        return torch.stack(kept).mean(dim=0)


def pool_patches(hidden: torch.Tensor, tokens: int = POOLED_TOKENS) -> torch.Tensor:
    """(B, 512, d) -> (B, tokens, d): token j is the mean of patches j, j + tokens, j + 2 tokens, ..."""
    b, n, d = hidden.shape
    return hidden.reshape(b, n // tokens, tokens, d).mean(dim=1)


class Encoder(nn.Module):
    """mel (B, n_mels, 3072) -> hidden (B, 192, d): three segments through AudioMAE, pooled, concatenated."""

    def __init__(self, mae: AudioMAE, tokens_per_segment: int = POOLED_TOKENS):
        super().__init__()
        self.mae = mae
        self.tokens = tokens_per_segment

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        b, bins, frames = mel.shape
        segments = mel.transpose(1, 2).reshape(b * SEGMENTS, 1, frames // SEGMENTS, bins)
        hidden = self.mae(segments)[:, 1:]
        pooled = pool_patches(hidden, self.tokens)  # (B * 3, 64, d), segment-minor
        return pooled.reshape(b, SEGMENTS * self.tokens, -1)


class Projector(nn.Module):
    """LLaVA's ``mlp2x_gelu``: Linear(d, n_embd), GELU, Linear(n_embd, n_embd); keys ``0.*`` and ``2.*``."""

    def __init__(self, d: int, n_embd: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d, n_embd), nn.GELU(), nn.Linear(n_embd, n_embd))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mlp(hidden)


def sincos_table(dim: int, grid: tuple[int, int] = (64, 8)) -> torch.Tensor:
    """AudioMAE's fixed 2-D sin-cos positional table with a zero row for the class token: (1, 1 + t * f, dim).

    The first half of the channels encodes the frequency column, the second half the time row (AudioMAE's
    ``get_2d_sincos_pos_embed_flexible`` builds its meshgrid width-first)."""
    rows, cols = grid
    t, f = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64),
                          indexing="ij")

    def one_axis(positions: torch.Tensor, channels: int) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(channels // 2, dtype=torch.float64) / (channels / 2))
        angles = positions.reshape(-1, 1) * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    table = torch.cat([one_axis(f, dim // 2), one_axis(t, dim // 2)], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), table]).float()[None]
