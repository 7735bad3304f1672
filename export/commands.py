"""Subcommands of the export stage: ``init``, ``export onnx``, ``export gguf``, ``export engines``.
torch is imported lazily; a module that fails to import fails loudly."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import engines, gguf_export, onnx_export, train

FAMILIES = ("gamma", "musicflamingo", "audioflamingo3", "mufun")
EXPORT_HELP = """\
Export a checkpoint folder into a bundle, one part at a time; every part is recorded in BUNDLE/manifest.json.
The folder is gamma-rt's own (gamma-rt init) or a published Hugging Face folder of Music Flamingo or
Audio Flamingo 3; its family is read from config.json.

  onnx     the audio side (encoders, fusion or pooling, projector) as ONNX graphs
  gguf     the decoder (Qwen3 or Qwen2) as a GGUF for llama.cpp, with the folder's tokenizer and chat template
  engines  TensorRT engines built from the ONNX graphs, for this GPU

example:
  gamma-rt export onnx ~/models/music-flamingo-2601-hf --out mf
  gamma-rt export gguf ~/models/music-flamingo-2601-hf --out mf --type f16
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "init",
        help="write a checkpoint folder of a model family (random or stock weights)",
        description="Write a checkpoint folder with random (seeded) weights. --family gamma (default) writes "
        "gamma-rt's own format: config.json, safetensors shards and a tokenizer; the experts and LLM can "
        "come from stock whisper-large-v3 / Qwen3 folders. --family musicflamingo|audioflamingo3 writes the "
        "published Hugging Face layout with transformers' own classes (config.json, model.safetensors, "
        "tokenizer, processor_config.json, chat_template.jinja). Tensors are written one at a time, so the "
        "full preset fits in bounded memory.\n\nexample: gamma-rt init --family musicflamingo --preset tiny --out mf",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--family", choices=FAMILIES, default="gamma", help="model family (default gamma)")
    p.add_argument("--preset", choices=["tiny", "small", "full"], default="tiny",
                   help="model size (default tiny; small is GaMMA only)")
    p.add_argument("--out", required=True, type=Path, help="checkpoint folder to write")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights (default 0)")
    p.add_argument("--whisper-init", type=Path, help="GaMMA: stock Whisper HF folder; its encoder feeds both experts")
    p.add_argument("--qwen3-init", type=Path, help="GaMMA: stock Qwen3 HF folder for the LLM (weights and tokenizer)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help="GaMMA weight dtype (tiny: float32, else bfloat16)")
    p.set_defaults(func=cmd_init)

    export = sub.add_parser("export", help="export a checkpoint into a bundle (ONNX graphs, GGUF, engines)",
                            description=EXPORT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    export_sub = export.add_subparsers(dest="export_command", metavar="FORMAT", required=True)
    onnx_export.register(export_sub)
    gguf_export.register(export_sub)
    engines.register_export_format(export_sub)
    train.register(sub)


def cmd_init(args) -> int:
    from gamma_rt.errors import CheckpointError
    from gamma_rt.progress import track

    from .families import family_named

    if args.family != "gamma":
        if args.whisper_init or args.qwen3_init or args.dtype:
            raise CheckpointError("--whisper-init, --qwen3-init and --dtype are for --family gamma only")
        family = family_named(args.family)
        if args.preset not in family.presets:
            raise CheckpointError(f"--preset {args.preset}: {args.family} has {', '.join(family.presets)}")
        family.init(args.preset, args.out, seed=args.seed, progress=track)
        print(f"wrote {args.family} {args.preset} checkpoint to {args.out}")
        return 0
    return _init_gamma(args, track)


def _init_gamma(args, track) -> int:
    import torch

    from .checkpoint import qwen3_source, whisper_source, write_random_checkpoint
    from .config import GammaConfig
    from .tokenizer import write_tokenizer

    cfg = GammaConfig.preset_named(args.preset)
    sources = {}
    if args.whisper_init:
        for i, src in enumerate(whisper_source(args.whisper_init)):
            sources[f"whisper{i}"] = src
    if args.qwen3_init:
        sources["qwen3"] = qwen3_source(args.qwen3_init)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    write_random_checkpoint(cfg, args.out, seed=args.seed, dtype=dtype, sources=sources, progress=track)
    write_tokenizer(args.out, cfg, qwen3_folder=args.qwen3_init)
    print(f"wrote {args.preset} checkpoint to {args.out}")
    return 0
