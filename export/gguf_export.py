"""``gamma-rt export gguf``: the Qwen3 decoder of a checkpoint as a GGUF file for llama.cpp.

The source is a GaMMA checkpoint (its ``llm.*`` weights) or a plain Qwen3 HF folder. Tensor names come from
gguf-py's table for the ``qwen3`` architecture; the vocabulary, merges, token types, special ids, chat
template, RoPE/norm parameters and context length go in as llama.cpp's own HF converter writes them.

Tensors are streamed: every tensor's shape and type is declared first, then each one is read from its
safetensors shard, converted and written before the next is read. Peak memory is about one tensor in
float32 plus its converted copy (Qwen3-8B: the 151936 x 4096 embedding, ~2.5 GB + ~1.2 GB).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gamma_rt.errors import CheckpointError
from gamma_rt.manifest import Component
from gamma_rt.progress import track

from .config import CONFIG_FORMAT, GammaConfig, LLMConfig
from .gguf_vocab import add_vocab

ARCH = "qwen3"
# --type -> (GGML type of 2-D weights, llama file type). 1-D tensors (norms) stay F32, as in llama.cpp's converter.
TYPES = {
    "f32": ("F32", "ALL_F32"),
    "f16": ("F16", "MOSTLY_F16"),
    "bf16": ("BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
}


def component_name(gguf_type: str) -> str:
    """Manifest name of a decoder variant: F32 is ``decoder``, others ``decoder.f16``, ``decoder.q4_k_m``..."""
    gguf_type = gguf_type.lower()
    return "decoder" if gguf_type == "f32" else f"decoder.{gguf_type}"


@dataclass
class DecoderSource:
    """Where the Qwen3 weights and tokenizer of a conversion come from."""

    folder: Path
    config: GammaConfig  # a stock Qwen3 folder gets a GammaConfig around its LLM config
    prefix: str  # "llm." in a GaMMA checkpoint, "" in a Qwen3 folder
    tokenizer_folder: Path
    where: dict[str, Path]  # HF key (prefix stripped) -> safetensors file
    files: list[Path]  # every weight file, the audio side's included

    def hash(self) -> str:
        """sha256 over config.json and all weight files, as Checkpoint.hash: the bundle's source id."""
        h = hashlib.sha256()
        for f in [self.folder / "config.json", *sorted(self.files)]:
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 24), b""):
                    h.update(block)
        return h.hexdigest()


def open_source(folder: str | Path, scratch: Path) -> DecoderSource:
    """Recognize a GaMMA checkpoint or a Qwen3 HF folder; anything else is refused naming config.json."""
    from safetensors import safe_open

    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: missing; expected a GaMMA checkpoint or a Qwen3 HF folder")
    try:
        raw = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_path}: not valid JSON ({e})") from None
    if raw.get("format") == CONFIG_FORMAT:
        cfg, prefix, tokenizer_folder = GammaConfig.load(folder), "llm.", folder
        if not (folder / "tokenizer.json").is_file():
            raise CheckpointError(
                f"{folder / 'tokenizer.json'}: missing; the GGUF needs the checkpoint's tokenizer (gamma-rt init writes it)"
            )
    else:
        archs = raw.get("architectures") or [raw.get("model_type")]
        if "Qwen3ForCausalLM" not in archs:
            raise CheckpointError(
                f"{config_path}: field 'architectures' is {archs}; export gguf converts Qwen3ForCausalLM decoders only"
            )
        names = {f.name for f in dataclasses.fields(LLMConfig)}
        llm = LLMConfig(**{k: v for k, v in raw.items() if k in names})
        cfg = dataclasses.replace(GammaConfig(), llm=llm, preset="qwen3-hf")
        prefix, tokenizer_folder = "", scratch / "tokenizer"
        from .tokenizer import write_tokenizer

        write_tokenizer(tokenizer_folder, cfg, qwen3_folder=folder)  # adds the audio tokens if missing
    where: dict[str, Path] = {}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{folder}: no *.safetensors weight files")
    for f in files:
        try:
            with safe_open(f, "pt") as sf:
                for key in sf.keys():
                    if key.startswith(prefix):
                        where[key[len(prefix):]] = f
        except Exception as e:  # safetensors has its own error types for corrupt headers
            raise CheckpointError(f"{f}: not a readable safetensors file ({e})") from None
    if cfg.llm.tie_word_embeddings:
        where.pop("lm_head.weight", None)
    if "model.embed_tokens.weight" not in where:
        raise CheckpointError(f"{folder}: no {prefix}model.embed_tokens.weight; not a Qwen3 decoder checkpoint")
    return DecoderSource(folder, cfg, prefix, tokenizer_folder, where, files)


def add_qwen3_hparams(writer, llm) -> None:
    """The Qwen3 hyperparameters llama.cpp reads, from ``llm`` with transformers' Qwen3Config attribute names
    (our LLMConfig, or bench/random_gguf.py's Qwen3Shape)."""
    writer.add_context_length(llm.max_position_embeddings)
    writer.add_embedding_length(llm.hidden_size)
    writer.add_block_count(llm.num_hidden_layers)
    writer.add_feed_forward_length(llm.intermediate_size)
    writer.add_head_count(llm.num_attention_heads)
    writer.add_head_count_kv(llm.num_key_value_heads)
    writer.add_key_length(llm.head_dim)
    writer.add_value_length(llm.head_dim)
    writer.add_rope_freq_base(llm.rope_theta)
    writer.add_layer_norm_rms_eps(llm.rms_norm_eps)


def write_gguf(source: DecoderSource, out: str | Path, gguf_type: str = "f32", progress=track) -> Path:
    """Write ``out`` (via a temporary file, so a failed run leaves nothing half-written)."""
    import gguf
    from safetensors import safe_open

    weight_type, file_type = TYPES[gguf_type]
    weight_qtype = gguf.GGMLQuantizationType[weight_type]
    llm = source.config.llm
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, llm.num_hidden_layers)

    plan: list[tuple[str, str, gguf.GGMLQuantizationType]] = []  # (hf key, gguf name, type)
    shapes: dict[str, tuple[int, ...]] = {}
    for key in sorted(source.where):
        name = name_map.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise CheckpointError(
                f"{source.folder}: tensor {source.prefix}{key} has no name in gguf's {ARCH} table; "
                "not a Qwen3 checkpoint?"
            )
        with safe_open(source.where[key], "pt") as sf:
            shapes[key] = tuple(sf.get_slice(source.prefix + key).get_shape())
        plan.append((key, name, _tensor_type(shapes[key], weight_qtype)))

    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    writer = gguf.GGUFWriter(tmp, ARCH)
    writer.add_name(f"{source.config.family}-{source.config.preset}-decoder")
    add_qwen3_hparams(writer, llm)
    writer.add_file_type(gguf.LlamaFileType[file_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_vocab(writer, source.tokenizer_folder, llm.vocab_size)

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
            with safe_open(source.where[key], "pt") as sf:
                weights = sf.get_tensor(source.prefix + key).float().numpy()
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
    """Convert and record the GGUF in the bundle's manifest as ``decoder`` / ``decoder.<type>``."""
    from .bundle import open_bundle

    bundle = Path(bundle)
    with tempfile.TemporaryDirectory() as scratch:
        source = open_source(checkpoint, Path(scratch))
        manifest = open_bundle(source, bundle)
        llm = source.config.llm
        file = f"decoder-{gguf_type}.gguf"
        write_gguf(source, bundle / file, gguf_type, progress)
    component = Component(
        kind="gguf",
        file=file,
        sha256="",
        bytes=0,
        precision=gguf_type,
        extra={
            "arch": ARCH,
            "n_embd": llm.hidden_size,
            "n_vocab": llm.vocab_size,
            "n_layer": llm.num_hidden_layers,
            "n_ctx_train": llm.max_position_embeddings,
            "type": gguf_type,
        },
    )
    manifest.add_file(bundle, component_name(gguf_type), component)
    manifest.check_widths(bundle)  # a GGUF that cannot take the projector's embeddings is refused here
    manifest.write(bundle)
    return component


def register(export_sub: argparse._SubParsersAction) -> None:
    p = export_sub.add_parser(
        "gguf",
        help="convert the Qwen3 decoder to GGUF for llama.cpp",
        description="Convert the LLM of a GaMMA checkpoint (its llm.* weights), or a plain Qwen3 HF folder, "
        "into a GGUF file that llama.cpp loads, and record it in the bundle's manifest (F32 as component "
        "'decoder', other types as 'decoder.<type>'). The tokenizer, chat template and audio tokens go "
        "into the GGUF. Tensors are converted one at a time, so an 8B model converts in bounded memory. "
        "For k-quants (Q4_K_M, ...) use 'gamma-rt quantize gguf' on the result.",
    )
    p.add_argument("checkpoint", type=Path, help="GaMMA checkpoint folder or Qwen3 HF folder")
    p.add_argument("--out", required=True, type=Path, help="bundle folder (created if new)")
    p.add_argument(
        "--type", choices=list(TYPES), default="f32", help="weight type of 2-D tensors (default f32; norms stay f32)"
    )
    p.set_defaults(func=_cmd_export_gguf)


def _cmd_export_gguf(args) -> int:
    c = export_gguf(args.checkpoint, args.out, args.type)
    print(f"wrote {args.out / c.file} ({c.bytes / 2**20:.1f} MiB, n_embd {c.extra['n_embd']}, vocab {c.extra['n_vocab']})")
    return 0
