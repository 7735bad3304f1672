"""The runtime's decoder on a GPU build of llama.cpp: DecoderSession against the raw loop and llama-bench.

On a GPU a decode step costs a few milliseconds, so whatever the runtime adds per token in Python (the
sampler chain, detokenizing, the stop filter) weighs far more than on a CPU. This runs, for each GGUF,
the runtime and the raw llama.cpp loop interleaved on the same weights, settings and 750 audio
embeddings (``decoder_side.runtime_against_raw``) with every layer offloaded, then llama-bench on the
same file, and writes one JSON with the device named.

    LLAMA_CPP_LIB_PATH=native-build/cuda-sm90/bin python -m gamma_rt.bench.gpu_decoder \\
        qwen3-8b-f16.gguf qwen3-8b-q4_k_m.gguf --device "NVIDIA H100 80GB HBM3" --out result.json
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

from . import decoder_side
from .run import plain_figures

N_AUDIO_TOKENS = 750  # one 30 s window


def measure(gguf: Path, n_embd: int, args) -> dict:
    embeddings = decoder_side.audio_embeddings(N_AUDIO_TOKENS, n_embd)
    pair = decoder_side.runtime_against_raw(gguf, embeddings, args.n_decode, args.threads, args.repeat, args.warmup,
                                            kv_type="f16", n_gpu_layers=args.ngl)
    raw, runtime = pair["raw"]["decode_ms_per_token"], pair["runtime"]["decode_ms_per_token"]
    row = {"gguf": gguf.name, "raw": plain_figures(pair["raw"]), "runtime": plain_figures(pair["runtime"]),
           "runtime_rate_vs_raw": raw.median / runtime.median}
    row["llama_bench"] = decoder_side.llama_bench_figures(gguf, N_AUDIO_TOKENS, args.n_decode, args.threads,
                                                          args.repeat, args.ngl)
    return row


def main(argv: list[str] | None = None) -> int:
    import llama_cpp

    from gamma_rt.runtime.gguf_check import check_gguf

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("gguf", nargs="+", type=Path, help="GGUF files to time (e.g. an F16 and a Q4_K_M of one model)")
    p.add_argument("--ngl", type=int, default=999, help="layers on the GPU (default all)")
    p.add_argument("--threads", type=int, default=4, help="CPU threads of both contexts (default 4)")
    p.add_argument("--n-decode", type=int, default=128, help="tokens decoded per repeat (default 128)")
    p.add_argument("--repeat", type=int, default=3, help="timed repeats (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed repeats first (default 1)")
    p.add_argument("--device", required=True, help="device name recorded in the result")
    p.add_argument("--out", required=True, type=Path, help="JSON file to write")
    args = p.parse_args(argv)
    if not llama_cpp.llama_supports_gpu_offload():
        p.error("this llama.cpp build has no GPU offload: build it with `native/build.sh cuda ARCH` and point "
                "LLAMA_CPP_LIB_PATH at its bin folder")
    rows = []
    for gguf in args.gguf:
        n_embd = next(v for k, v in check_gguf(gguf).metadata.items() if k.endswith(".embedding_length"))
        row = measure(gguf, n_embd, args)
        rows.append(row)
        r, t = row["raw"], row["runtime"]
        print(f"{gguf.name}: prefill of {N_AUDIO_TOKENS} embeddings raw {r['prefill_ms']['median']:.1f} ms, "
              f"runtime {t['prefill_ms']['median']:.1f} ms; decode raw {r['decode_ms_per_token']['median']:.2f} "
              f"ms/token, runtime {t['decode_ms_per_token']['median']:.2f} ms/token "
              f"(runtime rate {row['runtime_rate_vs_raw']:.3f} of raw); llama-bench {row['llama_bench']}")
    record = {"benchmark": "gpu_decoder", "device": args.device, "host": platform.node(), "n_gpu_layers": args.ngl,
              "threads": args.threads, "n_decode": args.n_decode, "repeat": args.repeat, "warmup": args.warmup,
              "audio_tokens": N_AUDIO_TOKENS, "llama_cpp_python": llama_cpp.__version__, "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
