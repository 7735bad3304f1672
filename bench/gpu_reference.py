"""The PyTorch reference on a GPU, per stage, against the matrix-rate and bandwidth floors.

This is "how GaMMA runs today": the eager model of export/families/gamma/model.py in bf16 with random weights built
directly on the GPU (no checkpoint), and transformers' ``generate`` for decoding. Per stage, for one 30 s
window: each expert, fusion, projector, the whole audio side; the LLM prefill of one window's 750 audio
tokens; decode ms/token. The chip's own bf16 matrix rate and copy bandwidth are measured in the same run
so that every percentage is a ratio taken on the same machine at the same time.

    python -m gamma_rt.bench.gpu_reference --preset full --out bench/results
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from gamma_rt.bench.flops import gamma_stage_flops, qwen3_weight_bytes_per_token
from gamma_rt.errors import GammaError
from gamma_rt.export.families.gamma.config import GammaConfig
from gamma_rt.export.families.gamma.model import GammaModel


def time_ms(fn, warmup: int, repeat: int) -> dict:
    """Median and p90 wall time of ``fn`` in ms, timed with CUDA events (or perf_counter on CPU)."""
    for _ in range(warmup):
        fn()
    cuda = torch.cuda.is_available()
    samples = []
    for _ in range(repeat):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    samples.sort()
    return {"median_ms": statistics.median(samples), "p90_ms": samples[int(0.9 * (len(samples) - 1))], "samples_ms": samples}


def chip_rates(device: str) -> dict:
    """Measured bf16 matrix rate (8192^3 product) and copy bandwidth (bytes read + written) of this chip."""
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    mm = time_ms(lambda: a @ b, 3, 10)["median_ms"]
    src = torch.empty(2 << 30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    cp = time_ms(lambda: dst.copy_(src), 3, 10)["median_ms"]
    del a, b, src, dst
    return {"bf16_matmul_tflops": 2 * n**3 / (mm / 1e3) / 1e12, "copy_tb_per_s": 2 * (2 << 30) / (cp / 1e3) / 1e12}


def set_attention(module: torch.nn.Module, impl: str) -> None:
    """Switch a transformers model between the eager and the fused (sdpa) attention kernels."""
    module.config._attn_implementation = impl


def measure(cfg: GammaConfig, device: str, batch: int, warmup: int, repeat: int, decode_tokens: int) -> dict:
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        model = GammaModel(cfg).eval()
    torch.set_default_dtype(torch.float32)
    mel = torch.randn(batch, cfg.audio.n_mels, cfg.audio.window_frames, device=device, dtype=torch.bfloat16)
    out: dict = {"batch": batch, "stages": {}}
    with torch.inference_mode():
        for impl in ("eager", "sdpa"):
            for enc in (model.temporal_encoder, model.global_encoder):
                set_attention(enc, impl)
            t = model.temporal_encoder(mel).last_hidden_state
            g = model.global_encoder(mel).last_hidden_state
            f = model.fusion(t, g)
            stages = {
                "temporal_encoder": lambda: model.temporal_encoder(mel),
                "global_encoder": lambda: model.global_encoder(mel),
                "fusion": lambda: model.fusion(t, g),
                "projector": lambda: model.projector(f),
                "audio_side": lambda: model.encode_window(mel),
            }
            out["stages"][impl] = {name: time_ms(fn, warmup, repeat) for name, fn in stages.items()}

        embeds = model.encode_window(mel[:1])  # (1, 750, d_llm)
        llm = model.llm
        for impl in ("eager", "sdpa"):
            set_attention(llm, impl)
            out["stages"][impl]["prefill_window"] = time_ms(
                lambda: llm(inputs_embeds=embeds, use_cache=True, logits_to_keep=1), warmup, repeat
            )

        def generate(n: int):
            return llm.generate(inputs_embeds=embeds, max_new_tokens=n, min_new_tokens=n, do_sample=False)

        # decode ms/token = (generate N+1 tokens - generate 1 token) / N: the prefill cancels out.
        out["decode"] = {}
        for impl in ("eager", "sdpa"):
            set_attention(llm, impl)
            one = time_ms(lambda: generate(1), 1, 3)["median_ms"]
            many = time_ms(lambda: generate(decode_tokens + 1), 1, 3)["median_ms"]
            out["decode"][impl] = {"tokens": decode_tokens, "ms_per_token": (many - one) / decode_tokens}
    if device.startswith("cuda"):
        out["peak_device_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return out


def floors(cfg: GammaConfig, result: dict, rates: dict) -> dict:
    """Percent of the measured matrix rate per stage, percent of bandwidth for decode."""
    flops = gamma_stage_flops(cfg)
    flops["audio_side"] = sum(flops[k] for k in ("temporal_encoder", "global_encoder", "fusion", "projector"))
    llm = cfg.llm
    weight_bytes = qwen3_weight_bytes_per_token(
        llm.hidden_size, llm.intermediate_size, llm.num_hidden_layers, llm.num_attention_heads,
        llm.num_key_value_heads, llm.head_dim, llm.vocab_size, 2,
    )
    peak = rates["bf16_matmul_tflops"] * 1e12
    bw = rates["copy_tb_per_s"] * 1e12
    report: dict = {"flop_per_window": flops, "decode_weight_bytes_per_token": weight_bytes}
    for impl, stages in result["stages"].items():
        for name, t in stages.items():
            work = flops[name] * (result["batch"] if name != "prefill_window" else 1)
            floor_ms = work / peak * 1e3
            report[f"{impl}/{name}"] = {"floor_ms": floor_ms, "percent_of_matrix_rate": 100 * floor_ms / t["median_ms"]}
    for impl, d in result["decode"].items():
        floor_ms = weight_bytes / bw * 1e3
        report[f"{impl}/decode"] = {"floor_ms": floor_ms, "percent_of_bandwidth": 100 * floor_ms / d["ms_per_token"]}
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="PyTorch bf16 reference per stage on a GPU, against the floors.")
    parser.add_argument("--preset", default="full", choices=["tiny", "small", "full"])
    parser.add_argument("--batch", type=int, default=1, help="30 s windows per audio-side call")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke run of the script")
    parser.add_argument("--out", default="bench/results", help="folder for the JSON result")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise GammaError("no CUDA device visible to PyTorch; this benchmark needs a GPU (or --device cpu)")
    cfg = GammaConfig.preset_named(args.preset)
    rates = chip_rates(args.device) if args.device.startswith("cuda") else {"bf16_matmul_tflops": 1.0, "copy_tb_per_s": 0.01}
    result = measure(cfg, args.device, args.batch, args.warmup, args.repeat, args.decode_tokens)
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "none"
    record = {
        "benchmark": "pytorch_reference_bf16",
        "preset": args.preset,
        "machine": {"gpu": gpu, "host": platform.node(), "cpu": platform.processor(), "python": platform.python_version()},
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": __import__("transformers").__version__},
        "measured_chip_rates": rates,
        "result": result,
        "floors": floors(cfg, result, rates),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = gpu.lower().replace("nvidia ", "").split()[0] if gpu != "none" else "cpu"
    path = out / f"gpu_{tag}_torch_reference_{args.preset}_b{args.batch}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: v for k, v in record["floors"].items() if "/" in k}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
