"""Find and run llama.cpp's ``llama-bench``: the reference decode/prefill speed for a GGUF.

``llama-bench`` comes from the native build (``native/build.sh``, top-level CMakeLists.txt), which is
built from the same llama.cpp source that the pinned llama-cpp-python ships, so its numbers and the
runtime's are for the same kernels. Where it is looked for, first match wins:

1. the ``binary`` argument;
2. ``$GAMMA_RT_NATIVE`` (a build folder with ``bin/llama-bench``);
3. ``native-build/*/bin/llama-bench`` under the current folder (cpu before cuda-sm*);
4. ``llama-bench`` on ``PATH``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from gamma_rt.errors import GammaError

TOOL = "llama-bench"


@dataclass(frozen=True)
class BenchRecord:
    """One llama-bench test: a prefill of ``n_prompt`` tokens or a decode of ``n_gen`` tokens."""

    model_type: str  # e.g. "qwen3 8B F16"
    model_bytes: int
    n_prompt: int
    n_gen: int
    n_gpu_layers: int
    n_threads: int
    tokens_per_s: float  # mean over repetitions
    tokens_per_s_std: float
    backend: str
    gpu_info: str
    cpu_info: str
    build_commit: str
    n_depth: int = 0  # tokens already in the KV cache before the test (e.g. 15000 = 10 min of audio)
    flash_attn: int = 0

    @property
    def ms_per_token(self) -> float:
        return 1000.0 / self.tokens_per_s

    @property
    def kind(self) -> str:
        """``"decode"`` (tg) or ``"prefill"`` (pp)."""
        return "decode" if self.n_gen > 0 else "prefill"


def find_llama_bench(binary: str | Path | None = None, search_root: str | Path = ".") -> Path:
    """The llama-bench executable, or a GammaError that says how to build it."""
    candidates: list[Path] = []
    if binary:
        candidates.append(Path(binary))
    if os.environ.get("GAMMA_RT_NATIVE"):
        candidates.append(Path(os.environ["GAMMA_RT_NATIVE"]) / "bin" / TOOL)
    builds = sorted(Path(search_root).glob(f"native-build/*/bin/{TOOL}"), key=lambda p: (p.parent.parent.name != "cpu", str(p)))
    candidates += builds
    on_path = shutil.which(TOOL)
    if on_path:
        candidates.append(Path(on_path))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    looked = ", ".join(str(c) for c in candidates) or "nothing (no native-build/ and no llama-bench on PATH)"
    raise GammaError(f"{TOOL} not found (looked at: {looked}); build it with `native/build.sh cpu`")


def parse_records(text: str, source: str = TOOL) -> list[BenchRecord]:
    """Parse ``llama-bench -o json`` output (a JSON list of test objects)."""
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise GammaError(f"{source}: output is not JSON ({e})") from None
    if not isinstance(rows, list):
        raise GammaError(f"{source}: expected a JSON list of tests, got {type(rows).__name__}")
    records = []
    for i, r in enumerate(rows):
        try:
            records.append(
                BenchRecord(
                    model_type=str(r["model_type"]),
                    model_bytes=int(r["model_size"]),
                    n_prompt=int(r["n_prompt"]),
                    n_gen=int(r["n_gen"]),
                    n_gpu_layers=int(r.get("n_gpu_layers", 0)),
                    n_threads=int(r.get("n_threads", 0)),
                    tokens_per_s=float(r["avg_ts"]),
                    tokens_per_s_std=float(r.get("stddev_ts", 0.0)),
                    backend=str(r.get("backends", "")),
                    gpu_info=str(r.get("gpu_info", "")),
                    cpu_info=str(r.get("cpu_info", "")),
                    build_commit=str(r.get("build_commit", "")),
                    n_depth=int(r.get("n_depth", 0)),
                    flash_attn=int(r.get("flash_attn", 0)),
                )
            )
        except (KeyError, TypeError, ValueError) as e:
            raise GammaError(f"{source}: test {i} lacks or mistypes field {e}") from None
    return records


def run_llama_bench(
    gguf: str | Path,
    *,
    n_prompt: int = 0,
    n_gen: int = 32,
    repetitions: int = 3,
    threads: int | None = None,
    n_gpu_layers: int = 0,
    binary: str | Path | None = None,
    timeout_s: float = 1800,
    depths: tuple[int, ...] = (0,),
    flash_attn: str = "auto",
) -> list[BenchRecord]:
    """Run llama-bench on ``gguf``: a prefill test of ``n_prompt`` tokens (if > 0) and a decode test of
    ``n_gen`` tokens (if > 0), each ``repetitions`` times, at every KV-cache depth in ``depths``. Returns one record per test."""
    gguf = Path(gguf)
    if not gguf.is_file():
        raise GammaError(f"{gguf}: GGUF file not found")
    exe = find_llama_bench(binary)
    cmd = [str(exe), "-m", str(gguf), "-p", str(n_prompt), "-n", str(n_gen), "-r", str(repetitions),
           "-ngl", str(n_gpu_layers), "-d", ",".join(map(str, depths)), "-fa", flash_attn, "-o", "json"]
    if threads:
        cmd += ["-t", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise GammaError(f"{exe} failed on {gguf} (exit {proc.returncode}): {' | '.join(tail)}")
    return parse_records(proc.stdout, source=f"{exe} on {gguf}")


def decode_weight_bytes(gguf: str | Path) -> int:
    """Bytes of weights one decode step reads: every tensor except the embedding table (one row per token)."""
    from gguf import GGUFReader

    return sum(int(t.n_bytes) for t in GGUFReader(str(gguf)).tensors if t.name != "token_embd.weight")


def kv_bytes_read(gguf: str | Path, depth: int, bytes_per_value: int = 2) -> int:
    """Bytes of f16 K and V cache one decode step reads with ``depth`` tokens already cached."""
    from gamma_rt.runtime.gguf_check import check_gguf

    meta = check_gguf(gguf).metadata
    arch = meta["general.architecture"]
    head_dim = meta.get(f"{arch}.attention.key_length") or meta[f"{arch}.embedding_length"] // meta[f"{arch}.attention.head_count"]
    return 2 * meta[f"{arch}.block_count"] * depth * meta[f"{arch}.attention.head_count_kv"] * head_dim * bytes_per_value


def main(argv: list[str] | None = None) -> int:
    import argparse
    import platform

    parser = argparse.ArgumentParser(
        description="Run llama-bench on GGUF files and save decode/prefill speed against the bandwidth floor as JSON."
    )
    parser.add_argument("gguf", nargs="+", help="GGUF files (e.g. the F16, Q8_0 and Q4_K_M of one model)")
    parser.add_argument("--n-prompt", type=int, default=750, help="prefill test length (750 = one 30 s window)")
    parser.add_argument("--n-gen", type=int, default=128, help="decode test length")
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--ngl", type=int, default=0, help="layers offloaded to the GPU (99 = all)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--depths", default="0", help="comma-separated KV-cache depths to test at (e.g. 0,15000)")
    parser.add_argument("--flash-attn", default="auto", choices=["on", "off", "auto"])
    parser.add_argument("--bandwidth-gbs", type=float, required=True, help="memory copy rate of the device, GB/s")
    parser.add_argument("--device", required=True, help="device name recorded in the result, e.g. 'NVIDIA H100 80GB HBM3'")
    parser.add_argument("--out", required=True, help="JSON file to write")
    args = parser.parse_args(argv)
    results = []
    for path in args.gguf:
        weight_bytes = decode_weight_bytes(path)
        for r in run_llama_bench(path, n_prompt=args.n_prompt, n_gen=args.n_gen, repetitions=args.repetitions,
                                 threads=args.threads, n_gpu_layers=args.ngl, flash_attn=args.flash_attn,
                                 depths=tuple(int(d) for d in args.depths.split(","))):
            row = {"gguf": Path(path).name, **r.__dict__, "ms_per_token": r.ms_per_token, "kind": r.kind}
            if r.kind == "decode":
                kv = kv_bytes_read(path, r.n_depth)
                floor_ms = (weight_bytes + kv) / (args.bandwidth_gbs * 1e9) * 1e3
                row.update(decode_weight_bytes=weight_bytes, kv_bytes_read=kv, floor_ms=floor_ms,
                           percent_of_bandwidth=100 * floor_ms / r.ms_per_token)
            results.append(row)
            print(f"{row['gguf']} @depth {r.n_depth}: {r.kind} {r.tokens_per_s:.1f} tok/s ({r.ms_per_token:.2f} ms/token)"
                  + (f", {row['percent_of_bandwidth']:.0f}% of bandwidth" if r.kind == "decode" else ""))
    record = {"benchmark": "llama_bench", "device": args.device, "host": platform.node(),
              "bandwidth_gbs": args.bandwidth_gbs, "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
