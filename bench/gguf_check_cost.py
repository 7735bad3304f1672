"""What the GGUF check costs on a full-size vocabulary, beside hashing the same file.

runtime/gguf_check.py walks the whole header before llama.cpp loads a decoder: every metadata entry, every
token string (checked for repeats) and the tensor table. The header's size is set by the vocabulary, not the
weights, so this writes a GGUF with Qwen3's vocabulary size (151,936 tokens, 151,387 merges) and tiny
tensors (a 20 MB file), then times, in turns, ``check_gguf`` and the sha256 every load verifies anyway
(gamma_rt/hashing.py) of that file. A real decoder's hash grows with its weights (16 GB for Qwen3-8B at F16)
while the check does not. The figure is the median of each over ``--repeats`` rounds and their ratio.
Written to bench/results/gguf-check-cost-<time>.json.

    python -m gamma_rt.bench.gguf_check_cost --repeats 7
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from .entry import run_module, write_json
from .timing import summarize

RESULT_FORMAT = "gamma-rt-gguf-check-cost/1"
DEFAULT_OUT = Path("bench") / "results"
N_TOKENS, N_MERGES = 151_936, 151_387  # Qwen3's


def write_vocab_gguf(path: Path) -> Path:
    """A one-layer qwen3 GGUF whose header holds a full-size vocabulary; its tensors are 64 wide."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(path, "qwen3")
    w.add_block_count(1)
    w.add_context_length(4096)
    w.add_embedding_length(64)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"tok{i}" for i in range(N_TOKENS)])
    w.add_token_types([1] * N_TOKENS)
    w.add_token_merges([f"t o{i}" for i in range(N_MERGES)])
    w.add_tensor("token_embd.weight", np.zeros((N_TOKENS, 64), np.float16))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(64, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def measure(path: Path, repeats: int) -> dict:
    from gamma_rt.hashing import sha256_file
    from gamma_rt.runtime.gguf_check import check_gguf

    runs = {"check_gguf": lambda: check_gguf(path), "sha256": lambda: sha256_file(path)}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run()  # warm the page cache and the imports
    for _ in range(repeats):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - t0) * 1000)
    stats = {name: summarize(values) for name, values in times.items()}
    ratio = stats["check_gguf"].median / stats["sha256"].median
    return {"ms": {name: s.to_dict() for name, s in stats.items()}, "check_over_sha256": round(ratio, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gamma_rt.bench.gguf_check_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7, help="timed rounds (default 7)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT})")
    args = p.parse_args(argv)

    def job(command: str) -> None:
        from gamma_rt import machine

        with tempfile.TemporaryDirectory() as scratch:
            path = write_vocab_gguf(Path(scratch) / "vocab.gguf")
            size = path.stat().st_size
            figures = measure(path, max(1, args.repeats))
        result = {"format": RESULT_FORMAT, "command": command, "machine": machine.describe(1),
                  "inputs": {"tokens": N_TOKENS, "merges": N_MERGES, "file_bytes": size, "repeats": args.repeats},
                  **figures}
        out = write_json(args.out / f"gguf-check-cost-{time.strftime('%Y%m%dT%H%M%S')}.json", result)
        ms = figures["ms"]
        print(f"check_gguf {ms['check_gguf']['median']:.0f} ms, sha256 {ms['sha256']['median']:.0f} ms "
              f"(x{figures['check_over_sha256']}) on a {size}-byte file with a {N_TOKENS}-token header; wrote {out}")

    return run_module("gguf_check_cost", argv, job)


if __name__ == "__main__":
    sys.exit(main())
