"""A one-token warm-up of the decoder in a child process, before ``gamma-rt serve`` loads it for good.

Some GGUFs that llama.cpp loads abort it on the first decode (a NaN or negative rms epsilon trips a
GGML_ASSERT, for one); llama.cpp aborts the whole process, so no error can be caught in-process. Without
this, the server would load such a decoder, answer /health with 200, and die on its first client's request.
So a child loads the GGUF as the server will (same GPU layers and LoRA), evaluates one audio embedding and one text
token, and draws one token; the server starts only if the child did all that. A decoder it cannot run
fails the start with one line that says what llama.cpp said.

    python -m gamma_rt.runtime.serve.warmup DECODER.gguf [--lora ADAPTER.gguf] [--gpu-layers N|all]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from gamma_rt.errors import BundleError, GammaError

WARM_UP_TIMEOUT_S = 300  # loading a large GGUF from a slow disk; a hang past this fails the start too
_CONTEXT = 256  # tokens: the least llama.cpp pads a context to


def warm_up(gguf: Path, lora: Path | None, gpu_layers: int | None, timeout_s: float = WARM_UP_TIMEOUT_S) -> None:
    """Run the one-token warm-up of ``gguf`` (with adapter ``lora``) in a child process; BundleError naming the
    file if it fails."""
    command = [sys.executable, "-m", "gamma_rt.runtime.serve.warmup", str(gguf),
               "--gpu-layers", "all" if gpu_layers is None else str(gpu_layers)]
    if lora is not None:
        command += ["--lora", str(lora)]
    failure = child_failure(command, timeout_s)
    if failure is None:
        return
    if failure.startswith(f"{gguf}: "):  # the check's own one line (gguf_check.py) names the file already
        raise BundleError(failure)
    raise BundleError(f"{gguf}: the decoder fails a one-token warm-up, so the server does not start: {failure}")


def child_failure(command: list[str], timeout_s: float) -> str | None:
    """Run ``command``; None when it succeeds, else one line: how it crashed (the signal, and ggml's assert
    when it printed one), the last line it printed (a GammaError's message), or that it hung."""
    env = {**os.environ, "GGML_NO_BACKTRACE": "1"}  # ggml's abort would otherwise run gdb for a backtrace
    try:
        run = subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return f"it did not finish in {timeout_s:g} s"
    if run.returncode == 0:
        return None
    lines = [line.strip() for line in run.stderr.splitlines() if line.strip()]
    if run.returncode < 0:
        said = next((line[line.index("GGML_ASSERT"):] for line in reversed(lines) if "GGML_ASSERT" in line), "")
        return f"llama.cpp crashed ({_signal_name(-run.returncode)}{': ' + said[:300] if said else ''})"
    return lines[-1][:300] if lines else f"exit status {run.returncode}"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _run_one_token(gguf: Path, lora: Path | None, gpu_layers: int | None) -> None:
    import numpy as np

    from ..decoder import DecoderSession

    with DecoderSession(gguf, n_ctx=_CONTEXT, n_threads=1, n_gpu_layers=gpu_layers, n_seq_max=1,
                        lora=lora) as session:
        session.eval_embeddings(np.zeros((1, session.n_embd), np.float32))  # what an audio window feeds
        token = (session.tokenize("warm-up", special=False) or [0])[0]
        session.step([(0, token)], [None])  # a decode step and a greedy draw, as the scheduler does


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gamma_rt.runtime.serve.warmup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("gguf", type=Path)
    parser.add_argument("--lora", type=Path, default=None, help="a LoRA adapter GGUF to apply")
    parser.add_argument("--gpu-layers", default="all", help="layers on the GPU, or all (default)")
    args = parser.parse_args(argv)
    try:
        _run_one_token(args.gguf, args.lora, None if args.gpu_layers == "all" else int(args.gpu_layers))
    except GammaError as e:
        print(e, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
