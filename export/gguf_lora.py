"""A LoRA adapter as llama.cpp's GGUF adapter file, applied at run time on its base (``--lora``).

The file holds ``general.type`` "adapter", ``adapter.type`` "lora", ``adapter.lora.alpha`` and, for each
targeted base tensor ``blk.N.attn_q.weight``, ``blk.N.attn_q.weight.lora_a`` (A, r x in) and ``.lora_b``
(B, out x r), in float32. llama.cpp adds ``scale * alpha / r * B @ A`` to the base weight's output, where
``scale`` is what the context sets (1 here). B gets the same row rewrite as its base weight (Llama's
q/k rows for llama.cpp's RoPE), so that B @ A changes the rows it changes in the merged weight.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gamma_rt.errors import CheckpointError
from gamma_rt.progress import track

from .families.base import AdapterSpec
from .gguf_arch import ARCHS


def write_lora_gguf(adapter: AdapterSpec, out: str | Path, progress=track) -> Path:
    """Write ``out`` (through a temporary file)."""
    import gguf

    model_arch, _, rewrite, _ = ARCHS[adapter.arch]
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[model_arch], adapter.shape.num_hidden_layers)
    names = {}
    for key in adapter.targets:
        name = name_map.get_name(key, try_suffixes=(".weight",))
        if name is None:
            raise CheckpointError(f"{adapter.name}: the adapter targets {key}, which has no name in gguf's "
                                  f"{adapter.arch} table")
        names[key] = name
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    writer = gguf.GGUFWriter(tmp, adapter.arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_name(adapter.name)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(adapter.alpha))
    try:
        for key in progress(adapter.targets, description="GGUF LoRA"):
            a, b = adapter.matrices(key)
            writer.add_tensor(names[key] + ".lora_a", np.ascontiguousarray(a, np.float32))
            writer.add_tensor(names[key] + ".lora_b", np.ascontiguousarray(rewrite(key, b, adapter.shape), np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out
