"""Writing weights for ``gamma-rt init``: sharded safetensors and deterministic random tensors.

Every family's random-folder writer uses these, so a full-size folder is written one tensor at a time
(one ~2 GB shard in memory at most) and the same seed gives the same tensor whatever the write order.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
from safetensors.torch import save_file

INDEX_NAME = "model.safetensors.index.json"
SHARD_BYTES = 2 * 1024**3


class ShardWriter:
    """Tensors into ~2 GB safetensors shards plus a Hugging Face index (``model.safetensors`` alone when
    one shard holds everything). Shards are written under temporary names and renamed by ``close``."""

    def __init__(self, out: Path, shard_bytes: int = SHARD_BYTES):
        self.out = Path(out)
        self.shard_bytes = shard_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[list[str]] = []
        self.written: list[Path] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        size = tensor.numel() * tensor.element_size()
        if self.pending and self.pending_bytes + size > self.shard_bytes:
            self._flush()
        self.pending[name] = tensor
        self.pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        path = self.out / f"model-{len(self.written) + 1:05d}.safetensors.tmp"
        save_file(self.pending, str(path), metadata={"format": "pt"})
        self.written.append(path)
        self.shards.append(list(self.pending))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> None:
        if self.pending or not self.written:
            self._flush()
        n = len(self.written)
        weight_map = {}
        for i, (tmp, names) in enumerate(zip(self.written, self.shards), 1):
            final = self.out / ("model.safetensors" if n == 1 else f"model-{i:05d}-of-{n:05d}.safetensors")
            tmp.rename(final)
            weight_map.update({k: final.name for k in names})
        if n > 1:
            # transformers' from_pretrained requires "metadata" in the index, not only "weight_map"
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
            (self.out / INDEX_NAME).write_text(json.dumps(index, indent=1))


def stable_hash(name: str) -> int:
    """A 64-bit hash of a tensor name that does not change between runs (Python's ``hash`` does)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")


def generator(name: str, seed: int) -> torch.Generator:
    """The random stream of tensor ``name`` under ``seed``."""
    return torch.Generator().manual_seed((seed * 1_000_003 + stable_hash(name)) % 2**63)


def sinusoids(length: int, channels: int, max_timescale: float = 10000) -> torch.Tensor:
    """Whisper's fixed sinusoidal positions: (length, channels) float32, sines then cosines."""
    log_inc = math.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-log_inc * torch.arange(channels // 2))
    scaled = torch.arange(length)[:, None] * inv[None, :]
    return torch.cat([scaled.sin(), scaled.cos()], dim=1)


def random_tensor(name: str, shape: tuple[int, ...], seed: int, std: float) -> torch.Tensor:
    """A deterministic random float32 tensor for parameter ``name``: norms (a module named ``*norm*``) at
    one and zero, biases N(0, std / 2), matrices N(0, std)."""
    leaf, parent = name.rsplit(".", 1)[-1], name.rsplit(".", 2)[-2]
    if "norm" in parent:
        return torch.ones(shape) if leaf == "weight" else torch.zeros(shape)
    return torch.randn(shape, generator=generator(name, seed)) * (std / 2 if leaf == "bias" else std)
