"""The ``gamma-rt`` command. Each stage registers its own subcommands; a user's mistake becomes one line."""

from __future__ import annotations

import argparse
import importlib
import sys

from gamma_rt import __version__
from gamma_rt.errors import GammaError

# Each module has ``register(subparsers)``; handlers import their heavy dependencies lazily,
# so ``gamma-rt ask`` on an edge install never imports torch.
COMMAND_MODULES = [
    "gamma_rt.export.commands",
    "gamma_rt.quant.commands",
    "gamma_rt.runtime.commands",
    "gamma_rt.runtime.tagging.commands",
    "gamma_rt.bench.commands",
    "gamma_rt.export.engines",
    "gamma_rt.bench.plan",
    "gamma_rt.demo",
]

DESCRIPTION = """\
gamma-rt compiles a GaMMA-class music LMM (two Whisper audio experts, a fusion network, a projector
and a Qwen3 decoder) into ONNX/TensorRT graphs and a GGUF, then runs them: audio streams in 30 s
windows through the encoders and the embeddings feed llama.cpp.

Typical flow:
  gamma-rt demo                                   # everything, on the built-in tiny model
  gamma-rt init --preset tiny --out ckpt          # a checkpoint folder (random or stock weights)
  gamma-rt export onnx ckpt --out bundle          # audio side to ONNX
  gamma-rt export gguf ckpt --out bundle          # decoder to GGUF
  gamma-rt ask bundle song.flac -q "What genre is this?"
"""


# Commands that run llama.cpp and never torch in this process import onnxruntime, then llama_cpp, before
# anything else. Measured on an H100 box (llama.cpp built with CUDA 13 by native/build.sh, onnxruntime 1.30,
# numpy 2.5, torch cu130): numpy alone first, loading a model segfaults inside libggml-cuda; llama_cpp first,
# importing onnxruntime segfaults; onnxruntime first (numpy comes with it), then llama_cpp, `gamma-rt ask`
# runs. torch shares a process with that CUDA build in neither order, so export commands never load llama.cpp.
DECODER_COMMANDS = {"ask", "chat", "tag", "bench"}


def load_native_libraries_first(argv: list[str]) -> None:
    if next((a for a in argv if not a.startswith("-")), None) in DECODER_COMMANDS:
        try:
            import onnxruntime  # noqa: F401
            import llama_cpp  # noqa: F401
        except (ImportError, OSError):  # reported where the backend or decoder is opened, with context
            pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gamma-rt", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"gamma-rt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    load_native_libraries_first(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except GammaError as e:
        print(f"gamma-rt: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("gamma-rt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
