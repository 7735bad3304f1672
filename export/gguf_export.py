"""``gamma-rt export gguf``: the decoder of a checkpoint as a GGUF file for llama.cpp.

The source is any registered family's folder (export/families): GaMMA (its ``llm.*`` Qwen3 weights), a plain
Qwen3 HF folder, Music Flamingo or Audio Flamingo 3 (their Qwen2). The family says the architecture
(``qwen3`` / ``qwen2``), the hyperparameters and where each tensor is; tensor names come from gguf-py's
table for that architecture; the vocabulary, merges, token types, special ids, the folder's own chat
template, RoPE/norm parameters and context length go in as llama.cpp's own HF converter writes them.

Tensors are streamed: every tensor's shape and type is declared first, then each one is read from its
safetensors shard, converted and written before the next is read. Peak memory is about one tensor in
float32 plus its converted copy (Qwen3-8B: the 151936 x 4096 embedding, ~2.5 GB + ~1.2 GB).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from gamma_rt.errors import CheckpointError
from gamma_rt.manifest import Component
from gamma_rt.progress import track

from .families import DecoderSpec
from .gguf_arch import ARCHS
from .gguf_vocab import add_vocab

# --type -> (GGML type of 2-D weights, llama file type). 1-D tensors (norms) stay F32, as in llama.cpp's converter.
TYPES = {
    "f32": ("F32", "ALL_F32"),
    "f16": ("F16", "MOSTLY_F16"),
    "bf16": ("BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
}


def component_name(gguf_type: str, stem: str = "decoder") -> str:
    """Manifest name of a decoder variant: F32 is ``decoder``, others ``decoder.f16``, ``decoder.q4_k_m``...
    (``stem`` ``decoder.base``: the base of a kept-apart LoRA adapter, ``decoder.base.f16``, ...)."""
    gguf_type = gguf_type.lower()
    return stem if gguf_type == "f32" else f"{stem}.{gguf_type}"




def write_gguf(source: DecoderSpec, out: str | Path, gguf_type: str = "f32", progress=track) -> Path:
    """Write ``out`` (via a temporary file, so a failed run leaves nothing half-written)."""
    import gguf
    from safetensors import safe_open

    weight_type, file_type = TYPES[gguf_type]
    weight_qtype = gguf.GGMLQuantizationType[weight_type]
    llm = source.shape
    model_arch, add_hparams, rewrite, pre = ARCHS[source.arch]
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[model_arch], llm.num_hidden_layers)
    if "model.embed_tokens.weight" not in source.tensors:
        raise CheckpointError(f"{source.tokenizer_folder}: no model.embed_tokens.weight; not a {source.arch} decoder")

    plan: list[tuple[str, str, gguf.GGMLQuantizationType]] = []  # (hf key, gguf name, type)
    shapes: dict[str, tuple[int, ...]] = {}
    for key in sorted(source.tensors):
        file, stored = source.tensors[key]
        name = name_map.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise CheckpointError(
                f"{file.parent}: tensor {stored} has no name in gguf's {source.arch} table; "
                f"not a {source.arch} decoder?"
            )
        with safe_open(file, "pt") as sf:
            shapes[key] = tuple(sf.get_slice(stored).get_shape())
        plan.append((key, name, _tensor_type(shapes[key], weight_qtype)))

    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    writer = gguf.GGUFWriter(tmp, source.arch)
    writer.add_name(source.name)
    add_hparams(writer, llm)
    writer.add_file_type(gguf.LlamaFileType[file_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_vocab(writer, source.tokenizer_folder, llm.vocab_size, source.chat_template, pre)

    for key, name, qtype in plan:
        shape = shapes[key]
        if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            dtype = np.float32 if qtype == gguf.GGMLQuantizationType.F32 else np.float16
            writer.add_tensor_info(name, shape, np.dtype(dtype), int(np.prod(shape)) * np.dtype(dtype).itemsize)
        else:
            byte_shape = gguf.quant_shape_to_byte_shape(shape, qtype)
            writer.add_tensor_info(name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=qtype)

    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for key, name, qtype in progress(plan, description=f"GGUF {gguf_type}"):
            file, stored = source.tensors[key]
            with safe_open(file, "pt") as sf:
                weights = sf.get_tensor(stored).float().numpy()
            if source.merge is not None:
                weights = source.merge(key, weights)
            weights = rewrite(key, weights, llm)
            writer.write_tensor_data(gguf.quants.quantize(weights, qtype))
            del weights
        writer.close()
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def _tensor_type(shape: tuple[int, ...], weight_qtype):
    import gguf

    if len(shape) < 2:
        return gguf.GGMLQuantizationType.F32
    block = gguf.GGML_QUANT_SIZES[weight_qtype][0]
    if shape[-1] % block:  # llama.cpp's converter falls back to F16 for rows a block does not divide
        return gguf.GGMLQuantizationType.F16
    return weight_qtype


def export_gguf(checkpoint: str | Path, bundle: str | Path, gguf_type: str = "f32", progress=track) -> Component:
    """Convert and record the GGUF in the bundle's manifest as ``decoder`` / ``decoder.<type>``.

    A folder that ships a LoRA adapter unmerged (OpenMU) gets three: ``decoder`` with the adapter merged,
    ``decoder.base`` without it and the adapter itself, ``lora``, which llama.cpp applies to that base."""
    from .bundle import open_bundle
    from .families import detect

    bundle = Path(bundle)
    family = detect(checkpoint)
    adapter = family.adapter()
    with tempfile.TemporaryDirectory() as scratch:
        source = family.decoder(Path(scratch))
        manifest = open_bundle(family, bundle)
        component = _write_decoder(source, bundle, f"decoder-{gguf_type}.gguf", gguf_type, progress)
        if adapter is not None:
            component.extra["lora_merged"] = LORA
            base = family.decoder(Path(scratch), merged=False)
            base_key = component_name(gguf_type, BASE)
            manifest.add_file(bundle, base_key, _write_decoder(base, bundle, f"decoder-base-{gguf_type}.gguf",
                                                               gguf_type, progress, adapter.base_id))
            manifest.add_file(bundle, LORA, _write_adapter(adapter, bundle, base_key, progress))
    manifest.add_file(bundle, component_name(gguf_type), component)
    manifest.check_widths(bundle)  # a GGUF that cannot take the projector's embeddings is refused here
    manifest.write(bundle)
    return component


BASE, LORA = "decoder.base", "lora"  # manifest keys of a kept-apart adapter's base and of the adapter


def _write_decoder(source: DecoderSpec, bundle: Path, file: str, gguf_type: str, progress,
                   base_id: str | None = None) -> Component:
    write_gguf(source, bundle / file, gguf_type, progress)
    llm = source.shape
    extra = {"arch": source.arch, "n_embd": llm.hidden_size, "n_vocab": llm.vocab_size,
             "n_layer": llm.num_hidden_layers, "n_ctx_train": llm.max_position_embeddings, "type": gguf_type}
    if base_id is not None:
        extra["base_id"] = base_id  # the adapters recorded with this id apply to it
    return Component(kind="gguf", file=file, sha256="", bytes=0, precision=gguf_type, extra=extra)


def _write_adapter(adapter, bundle: Path, base_key: str, progress) -> Component:
    from .gguf_lora import write_lora_gguf

    file = "lora.gguf"
    write_lora_gguf(adapter, bundle / file, progress)
    return Component(kind="gguf_lora", file=file, sha256="", bytes=0, precision="f32",
                     extra={"arch": adapter.arch, "base": base_key, "base_id": adapter.base_id,
                            "rank": adapter.rank, "alpha": adapter.alpha, "targets": len(adapter.targets)})


def register(export_sub: argparse._SubParsersAction) -> None:
    p = export_sub.add_parser(
        "gguf",
        help="convert the decoder (Qwen3 / Qwen2) to GGUF for llama.cpp",
        description="Convert the LLM of a checkpoint folder (GaMMA, Music Flamingo, Audio Flamingo 3, or a "
        "plain Qwen3 HF folder) into a GGUF file that llama.cpp loads, and record it in the bundle's manifest "
        "(F32 as component 'decoder', other types as 'decoder.<type>'). The tokenizer, the folder's own chat "
        "template and the audio tokens go into the GGUF. Tensors are converted one at a time, so an 8B model "
        "converts in bounded memory. For k-quants (Q4_K_M, ...) use 'gamma-rt quantize gguf' on the result.",
    )
    p.add_argument("checkpoint", type=Path, help="checkpoint folder (GaMMA, Music Flamingo, Audio Flamingo 3, Qwen3)")
    p.add_argument("--out", required=True, type=Path, help="bundle folder (created if new)")
    p.add_argument(
        "--type", choices=list(TYPES), default="f32", help="weight type of 2-D tensors (default f32; norms stay f32)"
    )
    p.set_defaults(func=_cmd_export_gguf)


def _cmd_export_gguf(args) -> int:
    c = export_gguf(args.checkpoint, args.out, args.type)
    print(f"wrote {args.out / c.file} ({c.bytes / 2**20:.1f} MiB, n_embd {c.extra['n_embd']}, vocab {c.extra['n_vocab']})")
    return 0
