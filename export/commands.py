"""Subcommands of the export stage: ``init``, ``export onnx``, ``export gguf``. torch is imported lazily."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "init",
        help="write a GaMMA checkpoint folder (random or stock weights)",
        description="Write an HF-style checkpoint folder: config.json, safetensors shards and a tokenizer. "
        "Weights are random (seeded), or the experts and LLM are taken from stock whisper-large-v3 / Qwen3 "
        "folders. Tensors are written one at a time, so the full preset fits in bounded memory.",
    )
    p.add_argument("--preset", choices=["tiny", "small", "full"], default="tiny", help="model size (default tiny)")
    p.add_argument("--out", required=True, type=Path, help="checkpoint folder to write")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights (default 0)")
    p.add_argument("--whisper-init", type=Path, help="stock Whisper HF folder; its encoder feeds both experts")
    p.add_argument("--qwen3-init", type=Path, help="stock Qwen3 HF folder for the LLM (weights and tokenizer)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="weight dtype (tiny: float32, else bfloat16)")
    p.set_defaults(func=cmd_init)

    export = sub.add_parser("export", help="export a checkpoint into a bundle (ONNX graphs, GGUF)")
    export_sub = export.add_subparsers(dest="export_command", metavar="FORMAT", required=True)
    for module in ("onnx_export", "gguf_export"):
        try:
            mod = __import__(f"gamma_rt.export.{module}", fromlist=["register"])
        except ModuleNotFoundError as e:
            if e.name != f"gamma_rt.export.{module}":
                raise
            continue
        mod.register(export_sub)


def cmd_init(args) -> int:
    import torch

    from .checkpoint import qwen3_source, whisper_source, write_random_checkpoint
    from .config import GammaConfig
    from gamma_rt.progress import track
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
