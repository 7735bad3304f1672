"""OpenMU's PEFT LoRA adapter: read from adapter_config.json + adapter_model.safetensors, merged into the
base's weights for ``decoder``, or written as llama.cpp's GGUF LoRA adapter for ``lora``.

PEFT's merge (``merge_and_unload``, what OpenMU's loader does): W + (alpha / r) * B @ A for each targeted
Linear; A is (r, in), B (out, r). llama.cpp applies ``scale * alpha / r * B @ A`` at run time from the
adapter's ``adapter.lora.alpha`` and the rank it reads off A and B.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gamma_rt.errors import CheckpointError

from ..folder import read_json

CONFIG = "adapter_config.json"
WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
PREFIX = "base_model.model."  # PeftModel's wrapper around the LLM


@dataclass
class LoraAdapter:
    """One PEFT LoRA adapter. ``pairs``: base weight key (``model.layers.0.self_attn.q_proj.weight``) ->
    (stored A key, stored B key)."""

    folder: Path
    rank: int
    alpha: float
    scale: float
    base_name: str
    weights_file: Path
    pairs: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def files(self) -> list[Path]:
        return [self.folder / CONFIG, self.weights_file]

    @classmethod
    def open(cls, folder: Path) -> "LoraAdapter":
        path = folder / CONFIG
        config = read_json(path)
        where = str(path)
        if config.get("peft_type", "LORA") != "LORA":
            raise CheckpointError(f"{where}: field peft_type is {config['peft_type']!r}; OpenMU ships a LORA adapter")
        for flag in ("use_dora", "fan_in_fan_out"):
            if config.get(flag):
                raise CheckpointError(f"{where}: field {flag} is true; gamma-rt merges plain LoRA only")
        if config.get("bias", "none") != "none" or config.get("modules_to_save"):
            raise CheckpointError(f"{where}: fields bias/modules_to_save train more than the LoRA matrices; "
                                  "gamma-rt merges plain LoRA only")
        if config.get("rank_pattern") or config.get("alpha_pattern"):
            raise CheckpointError(f"{where}: fields rank_pattern/alpha_pattern are not supported")
        rank, alpha = config.get("r"), config.get("lora_alpha")
        if not isinstance(rank, int) or rank <= 0 or not isinstance(alpha, (int, float)):
            raise CheckpointError(f"{where}: fields r and lora_alpha must be a positive integer and a number")
        scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        weights = next((folder / n for n in WEIGHTS if (folder / n).is_file()), None)
        if weights is None:
            raise CheckpointError(f"{folder / WEIGHTS[0]}: missing; the LoRA weights are saved there by PEFT")
        adapter = cls(folder, rank, float(alpha), scale, str(config.get("base_model_name_or_path") or ""), weights)
        adapter.pairs = adapter._pairs()
        return adapter

    def _keys(self) -> list[str]:
        if self.weights_file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(self.weights_file, "pt") as sf:
                return list(sf.keys())
        return list(self._bin())

    def _bin(self) -> dict:
        import torch

        return torch.load(self.weights_file, map_location="cpu", weights_only=True)

    def _pairs(self) -> dict[str, tuple[str, str]]:
        pairs: dict[str, list] = {}
        for key in self._keys():
            for part, slot in ((".lora_A.weight", 0), (".lora_B.weight", 1)):
                if key.endswith(part) and key.startswith(PREFIX):
                    base = key[len(PREFIX):-len(part)] + ".weight"
                    pairs.setdefault(base, [None, None])[slot] = key
        broken = [k for k, (a, b) in pairs.items() if a is None or b is None]
        if broken or not pairs:
            raise CheckpointError(f"{self.weights_file}: " + (f"{broken[0]} has only one of lora_A/lora_B"
                                                              if broken else "no lora_A/lora_B tensors"))
        return {k: (a, b) for k, (a, b) in pairs.items()}

    def matrices(self, base_key: str) -> tuple[np.ndarray, np.ndarray]:
        """(A (r, in), B (out, r)) float32 of one targeted weight."""
        a_key, b_key = self.pairs[base_key]
        if self.weights_file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(self.weights_file, "pt") as sf:
                a, b = sf.get_tensor(a_key), sf.get_tensor(b_key)
        else:
            state = self._bin()
            a, b = state[a_key], state[b_key]
        a, b = a.float().numpy(), b.float().numpy()
        if a.shape[0] != self.rank or b.shape[1] != self.rank:
            raise CheckpointError(f"{self.weights_file}: {a_key} / {b_key} have shapes {a.shape} / {b.shape}; "
                                  f"adapter_config.json says r {self.rank}")
        return a, b

    def merge(self, base_key: str, weight: np.ndarray) -> np.ndarray:
        """``weight`` (out, in) float32 with the adapter's update added, as PEFT's merge_and_unload does."""
        if base_key not in self.pairs:
            return weight
        a, b = self.matrices(base_key)
        if weight.shape != (b.shape[0], a.shape[1]):
            raise CheckpointError(f"{self.weights_file}: the adapter of {base_key} is {b.shape[0]} x {a.shape[1]}, "
                                  f"the base weight {weight.shape[0]} x {weight.shape[1]}: not this adapter's base")
        return weight + self.scale * (b.astype(np.float64) @ a.astype(np.float64)).astype(np.float32)
