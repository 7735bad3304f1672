"""The ``gamma-rt`` command. Each stage registers its own subcommands; a user's mistake becomes one line."""

from __future__ import annotations

import argparse
import importlib
import sys

from gamma_rt import __version__
from gamma_rt.errors import GammaError
from gamma_rt.terminal import printable

# Each module has ``register(subparsers)``; handlers import their heavy dependencies lazily,
# so ``gamma-rt ask`` on an edge install never imports torch.
COMMAND_MODULES = [
    "gamma_rt.export.commands",
    "gamma_rt.quant.commands",
    "gamma_rt.runtime.commands",
    "gamma_rt.runtime.tagging.commands",
    "gamma_rt.runtime.serve.commands",
    "gamma_rt.bench.commands",
    "gamma_rt.export.engines",
    "gamma_rt.plan",
    "gamma_rt.demo",
    "gamma_rt.evaluation",
]
# The extra that installs each optional import (pyproject.toml's [project.optional-dependencies]), so that a
# command whose handler needs one says what to install instead of printing a traceback.
EXTRA_OF_MODULE = {
    "torch": "export", "transformers": "export", "safetensors": "export", "tokenizers": "export", "onnx": "export",
    "onnxscript": "export", "gguf": "export", "matplotlib": "bench", "mutagen": "tag", "yaml": "tag", "ray": "ray",
    "tensorrt": "gpu", "cuda": "gpu",
    "fastapi": "serve", "starlette": "serve", "uvicorn": "serve", "prometheus_client": "serve", "openai": "serve",
    "httpx": "serve",
}

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
DECODER_COMMANDS = {"ask", "chat", "tag", "bench", "serve", "eval"}


def load_native_libraries_first(argv: list[str]) -> None:
    if next((a for a in argv if not a.startswith("-")), None) in DECODER_COMMANDS:
        try:
            import onnxruntime  # noqa: F401
            import llama_cpp  # noqa: F401
        except (ImportError, OSError):  # reported where the backend or decoder is opened, with context
            pass


class CommandModuleError(Exception):
    """A command module that does not import: a bug or a broken install, never skipped silently."""


def load_command_module(name: str):
    """Import one of COMMAND_MODULES. They import nothing optional at module level (handlers do, lazily), so
    a failure here names the module and the ImportError rather than dropping its commands from the CLI."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise CommandModuleError(f"command module {name} does not import: {type(e).__name__}: {e}") from e


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gamma-rt", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"gamma-rt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        load_command_module(name).register(sub)
    return parser


def missing_extra(e: ModuleNotFoundError, command: str) -> str | None:
    """The one-line message for an optional dependency a handler imported and did not find; None otherwise
    (a missing gamma_rt module is a bug and keeps its traceback)."""
    top = (e.name or "").split(".")[0]
    if top not in EXTRA_OF_MODULE:
        return None
    extra = EXTRA_OF_MODULE[top]
    return f"`gamma-rt {command}` needs {top}, which is not installed: pip install 'gamma-rt[{extra}]'"


def main(argv: list[str] | None = None) -> int:
    load_native_libraries_first(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
    except CommandModuleError as e:
        print(f"gamma-rt: error: {printable(e)}", file=sys.stderr)
        return 1
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except GammaError as e:
        print(f"gamma-rt: error: {printable(e)}", file=sys.stderr)
        return e.exit_code
    except ModuleNotFoundError as e:
        message = missing_extra(e, args.command)
        if message is None:
            raise
        print(f"gamma-rt: error: {printable(message)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gamma-rt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
