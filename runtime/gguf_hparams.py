"""The hyperparameters and vocabulary of a GGUF that llama.cpp asserts on, checked before it loads one.

llama.cpp's loader and kernels abort the process (GGML_ASSERT) on values a file can simply hold: a layer
count outside 1..LLAMA_MAX_LAYERS, a negative or NaN RMS-norm epsilon (asserted at the first decode), a
vocabulary whose tokens repeat (checked while the header is walked, runtime/gguf_check.py), a norm weight
stored as F16 (the CPU element-wise kernels take F32 only, asserted at the first decode). Each
architecture gamma-rt decodes is one row of ARCHITECTURES: the keys llama.cpp reads under its prefix and
what each must be. Every message names the key.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

MAX_LAYERS = 512  # LLAMA_MAX_LAYERS
GGML_F32 = 0
_LAYER = re.compile(r"blk\.(\d+)\.")


class Unusable(Exception):
    """A value llama.cpp would abort on; the message names the key."""


@dataclass(frozen=True)
class ArchKeys:
    """Keys under ``<arch>.`` that llama.cpp's loader of one architecture reads."""

    counts: tuple[str, ...]  # positive integers that must be there
    optional_counts: tuple[str, ...]  # positive integers, when there
    epsilons: tuple[str, ...]  # finite and positive; at least one must be there
    positive_floats: tuple[str, ...] = ("rope.freq_base",)  # finite and positive, when there


# The llama-shaped decoders (attention + gated MLP, RMS norm): Qwen3, Qwen2 (Music Flamingo) and Llama.
LLAMA_LIKE = ArchKeys(
    counts=("block_count", "embedding_length", "feed_forward_length", "attention.head_count"),
    optional_counts=("context_length", "attention.head_count_kv", "attention.key_length", "attention.value_length",
                     "rope.dimension_count"),
    epsilons=("attention.layer_norm_rms_epsilon",),
)
ARCHITECTURES = {"qwen3": LLAMA_LIKE, "qwen2": LLAMA_LIKE, "llama": LLAMA_LIKE}


def check_hparams(header) -> None:
    """Raise Unusable unless ``header`` (a GGUFHeader) holds values llama.cpp loads without aborting."""
    meta = header.metadata
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise Unusable(f"general.architecture is {arch!r}, not an architecture name")
    _check_every_number(meta, arch)
    keys = ARCHITECTURES.get(arch)
    if keys is not None:
        _check_architecture(header, arch, keys)
    _check_vocabulary(header)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_every_number(meta: dict, arch: str) -> None:
    """Under any architecture: floats finite, epsilons positive, a layer count llama.cpp has room for."""
    for key, value in meta.items():
        if not key.startswith(arch + "."):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise Unusable(f"{key} is {value}, not a finite number")
        if key.endswith("epsilon") and isinstance(value, float) and value <= 0:
            raise Unusable(f"{key} is {value}; an epsilon must be positive")
    layers = meta.get(f"{arch}.block_count")
    if layers is not None and not (_is_int(layers) and 1 <= layers <= MAX_LAYERS):
        raise Unusable(f"{arch}.block_count is {layers!r}; llama.cpp needs 1 to {MAX_LAYERS} layers")


def _check_architecture(header, arch: str, keys: ArchKeys) -> None:
    meta = header.metadata
    for name in keys.counts + keys.optional_counts:
        key = f"{arch}.{name}"
        if key not in meta:
            if name in keys.counts:
                raise Unusable(f"{key} is missing (architecture {arch})")
            continue
        if not (_is_int(meta[key]) and meta[key] > 0):
            raise Unusable(f"{key} is {meta[key]!r}; it must be a positive integer")
    present = [f"{arch}.{e}" for e in keys.epsilons if f"{arch}.{e}" in meta]
    if not present:
        raise Unusable(f"{arch}.{keys.epsilons[0]} is missing (architecture {arch})")
    for key in present + [f"{arch}.{name}" for name in keys.positive_floats if f"{arch}.{name}" in meta]:
        if not (isinstance(meta[key], (int, float)) and math.isfinite(meta[key]) and meta[key] > 0):
            raise Unusable(f"{key} is {meta[key]!r}; it must be a finite positive number")
    heads, kv_heads = meta[f"{arch}.attention.head_count"], meta.get(f"{arch}.attention.head_count_kv")
    if kv_heads is not None and heads % kv_heads:
        raise Unusable(f"{arch}.attention.head_count_kv is {kv_heads}, which does not divide "
                       f"{arch}.attention.head_count {heads}")
    _check_layers(header, arch)
    _check_vectors(header)


def _check_vectors(header) -> None:
    """Norm weights and biases (1-D tensors) are operands of element-wise ops, which llama.cpp's CPU kernels
    run on F32 only; converters and llama-quantize always keep them F32."""
    for t in header.tensors:
        if len(t.dims) == 1 and t.ggml_type != GGML_F32:
            raise Unusable(f"tensor {t.name!r} is 1-D in ggml type {t.ggml_type}; norm weights and biases "
                           "must be F32 (0)")


def _check_layers(header, arch: str) -> None:
    """block_count must be the number of layers the tensor table holds."""
    layers = {int(m.group(1)) for t in header.tensors if (m := _LAYER.match(t.name))}
    n = header.metadata[f"{arch}.block_count"]
    if layers != set(range(n)):
        held = f"{len(layers)} layers, blk.{min(layers)} to blk.{max(layers)}" if layers else "no layers"
        raise Unusable(f"{arch}.block_count is {n} but the tensors hold {held}")


def _check_vocabulary(header) -> None:
    """Per-token arrays as long as the token list, which is as long as the embedding table."""
    tokens = header.arrays.get("tokenizer.ggml.tokens")
    if tokens is None:
        return
    n = tokens[1]
    for key in ("tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
        if key in header.arrays and header.arrays[key][1] != n:
            raise Unusable(f"{key} has {header.arrays[key][1]} items for {n} tokens")
    embd = next((t for t in header.tensors if t.name == "token_embd.weight"), None)
    if embd is not None and len(embd.dims) == 2 and embd.dims[1] != n:
        raise Unusable(f"tokenizer.ggml.tokens has {n} tokens, token_embd.weight {embd.dims[1]} rows")
