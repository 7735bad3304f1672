"""Subcommands of the export stage: ``init``, ``export onnx``, ``export gguf``, ``export engines``.
torch is imported lazily; a module that fails to import fails loudly."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import engines, families, gguf_export, onnx_export
from .families.gamma import train

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
        "come from stock whisper-large-v3 / Qwen3 folders. --family musicflamingo|audioflamingo3|mufun writes the "
        "published Hugging Face layout with transformers' own classes (config.json, model.safetensors, "
        "tokenizer, processor_config.json, chat_template.jinja). Tensors are written one at a time, so the "
        "full preset fits in bounded memory.\n\nexample: gamma-rt init --family musicflamingo --preset tiny --out mf",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    writable = families.writable()
    presets = sorted({p for f in writable for p in f.presets}, key=["tiny", "small", "full"].index)
    p.add_argument("--family", choices=[f.name for f in writable], default="gamma", help="model family (default gamma)")
    p.add_argument("--preset", choices=presets, default="tiny",
                   help="model size (default tiny): " + "; ".join(f"{f.name} {'|'.join(f.presets)}" for f in writable))
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


INIT_OPTIONS = ("whisper_init", "qwen3_init", "dtype")


def cmd_init(args) -> int:
    from gamma_rt.errors import CheckpointError
    from gamma_rt.progress import track

    family = families.family_named(args.family)
    if args.preset not in family.presets:
        raise CheckpointError(f"--preset {args.preset}: {args.family} has {', '.join(family.presets)}")
    options = {k: getattr(args, k) for k in INIT_OPTIONS if getattr(args, k) is not None}
    foreign = [k for k in options if k not in family.init_options]
    if foreign:
        flags = ", ".join("--" + k.replace("_", "-") for k in foreign)
        raise CheckpointError(f"{flags}: not an option of --family {args.family}")
    family.init(args.preset, args.out, seed=args.seed, progress=track, **options)
    print(f"wrote {args.family} {args.preset} checkpoint to {args.out}")
    return 0
