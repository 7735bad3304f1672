"""Subcommands of the quant stage: ``quantize gguf`` and ``quantize fidelity``. Heavy imports stay in handlers."""

from __future__ import annotations

import argparse
from pathlib import Path

GGUF_TYPES = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0"]
DEFAULT_RESULTS = Path("bench") / "results"


QUANTIZE_DESCRIPTION = """\
Make smaller decoder variants of a bundle and measure how close they stay to its F32 decoder.

Examples:
  gamma-rt quantize gguf bundle --type Q4_K_M
  gamma-rt quantize fidelity bundle
"""

GGUF_DESCRIPTION = """\
Quantize a decoder GGUF with llama.cpp's own quantizer (no separate binary). IN is a bundle (its F32/F16
decoder is quantized and recorded in the manifest as decoder.<type>, e.g. decoder.q4_k_m) or a .gguf file.
k-quants need 256-wide rows; narrower tensors (the tiny preset) get llama.cpp's fallback type, and
llama.cpp says so.

Examples:
  gamma-rt quantize gguf bundle --type Q4_K_M
  gamma-rt quantize gguf decoder-f16.gguf --type Q8_0 --out decoder-q8_0.gguf --imatrix imatrix.gguf
"""

FIDELITY_DESCRIPTION = """\
Run a fixed set of prompts with audio embeddings through the bundle's F32 decoder and through each other
GGUF variant, teacher-forced along F32's greedy answer, and report per variant the file size, the top-1
agreement and the mean KL divergence of the next-token distributions. Prints a table and writes JSON to
the results folder.

Examples:
  gamma-rt quantize fidelity bundle
  gamma-rt quantize fidelity bundle --threads 2 --out bench/results
"""


def register(sub: argparse._SubParsersAction) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    quant = sub.add_parser("quantize", help="make smaller decoder variants and measure their fidelity",
                           description=QUANTIZE_DESCRIPTION, formatter_class=raw)
    quant_sub = quant.add_subparsers(dest="quant_command", metavar="WHAT", required=True)

    p = quant_sub.add_parser("gguf", help="quantize the decoder GGUF with llama.cpp's quantizer",
                             description=GGUF_DESCRIPTION, formatter_class=raw)
    p.add_argument("input", type=Path, metavar="IN", help="bundle folder or .gguf file")
    p.add_argument("--type", required=True, type=str.upper, choices=GGUF_TYPES, help="quantization type")
    p.add_argument("--imatrix", type=Path, help="importance matrix from llama-imatrix (.gguf or legacy .dat)")
    p.add_argument("--out", type=Path, help="output .gguf (file input only; default IN-<type>.gguf)")
    p.add_argument("--threads", type=int, help="quantizer threads (default: all cores)")
    p.add_argument("--source", metavar="NAME", help="bundle component to quantize (default: the best F32/F16 "
                   "decoder; 'decoder.base' for the base a --lora adapter applies to, written as decoder.base.<type>)")
    p.set_defaults(func=_cmd_gguf)

    f = quant_sub.add_parser("fidelity", help="compare every decoder GGUF of a bundle with its F32 decoder",
                             description=FIDELITY_DESCRIPTION, formatter_class=raw)
    f.add_argument("bundle", type=Path, help="bundle with a 'decoder' (F32) component and variants")
    f.add_argument("--out", type=Path, default=DEFAULT_RESULTS, help=f"results folder (default {DEFAULT_RESULTS})")
    f.add_argument("--threads", type=int, help="llama.cpp threads (default: all cores)")
    f.set_defaults(func=_cmd_fidelity)


def _cmd_gguf(args) -> int:
    from .gguf_quant import quantize

    out = quantize(args.input, args.type, args.imatrix, args.out, args.threads, args.source)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    return 0


def _cmd_fidelity(args) -> int:
    from .fidelity import measure, table, write_json

    results = measure(args.bundle, args.threads)
    print(table(results))
    print(f"wrote {write_json(results, args.bundle, args.out, args.threads)}")
    return 0
