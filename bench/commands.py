"""``gamma-rt bench``: measure a bundle against the PyTorch way; ``gamma-rt bench report``: tables and plots."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import serve_load, task_fidelity

DEFAULT_RESULTS = Path("bench") / "results"

DESCRIPTION = """\
Measure a bundle: per-stage cost of one 30 s window (front end, each audio graph, decoder
prefill, decode ms/token), end to end real-time factor and time to first token after the end of the
audio for 30 s, 4 min and 10 min of synthesized music, songs/hour for a tagging workload (5 questions
per song) with and without prefix reuse, and peak memory. Each figure is the median and p90 of
--repeat timed runs after --warmup untimed ones.

Any bundle works: the audio side is the manifest's chain of graphs (GaMMA's experts, fusion and
projector; Music Flamingo's or Audio Flamingo 3's encoder and projector), fed as the runtime feeds them,
and the decoder is the bundle's GGUF (qwen3 or qwen2). The runtime options are ask's, except that
--threads defaults to 2 (comparable runs) and --cache-dir is not taken.

With --baseline CKPT (the checkpoint folder the bundle was exported from) the same run also measures the
PyTorch way on the same input and threads: the audio side in eager mode, the decoder through
transformers' generate and the whole answer through the reference pipeline (GaMMA: export/families/gamma/reference.py;
Music Flamingo / Audio Flamingo 3: transformers' own model class and processor). Targets are judged
as ratios within the run and printed PASS/MISS.

The result is a JSON file in --out (machine, versions, inputs and every figure) with two PNG plots
beside it. `gamma-rt bench report` rebuilds the markdown table of all results from those files.

Example:
  gamma-rt init --preset small --out ckpt && gamma-rt export onnx ckpt --out b && gamma-rt export gguf ckpt --out b
  gamma-rt bench b --baseline ckpt --repeat 3 --threads 2
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure a bundle's latency and throughput against PyTorch",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="bundle folder to measure, or 'report' to rebuild the results table")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--audio", type=Path, help="audio file for the per-stage figures (default: synthesized music)")
    src.add_argument("--seconds", type=float, help="one end-to-end length in seconds instead of 30 s, 4 min, 10 min")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per figure (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before them (default 1)")
    add_bench_runtime_options(p)
    p.add_argument("--decode-tokens", type=int, default=32, help="tokens per decode measurement (default 32)")
    p.add_argument("--baseline", type=Path, metavar="CKPT",
                   help="checkpoint folder the bundle was exported from: also measure the PyTorch way")
    p.add_argument("--skip", action="append", default=[], choices=["end_to_end", "throughput", "baselines", "llama_bench", "reference_10min"],
                   help="leave a part out (repeatable; reference_10min: the PyTorch reference pipeline on the "
                        "10 min input only); it is listed as skipped in the JSON")
    p.add_argument("--out", type=Path, default=DEFAULT_RESULTS, help=f"results folder (default {DEFAULT_RESULTS})")
    serve_load.add_arguments(p)  # gamma-rt bench serve URL|BUNDLE
    task_fidelity.add_bench_arguments(p)  # gamma-rt bench fidelity CKPT
    p.set_defaults(func=cmd_bench)


def add_bench_runtime_options(p: argparse.ArgumentParser) -> None:
    """The runtime options group of every command that runs a bundle, with the bench's own --threads default
    (2, so runs on different machines compare) and no --cache-dir (cached embeddings would skip the encoders)."""
    from gamma_rt.runtime.options import add_runtime_options

    from .run import BENCH_THREADS

    add_runtime_options(p, cache_help="not taken by bench: it times the encoders, which cached embeddings skip")
    p.set_defaults(threads=BENCH_THREADS)
    helps = {
        "backend": "audio-side backend of every measurement (default auto: the best available; the JSON says which)",
        "no_overlap": "run the end-to-end `runtime` rows without encoding ahead as well (the `runtime-sequential` "
                      "rows always do)",
        "threads": f"CPU threads for every engine, the same for all (default {BENCH_THREADS} in bench, for runs "
                   "that compare across machines)",
        "precision": "audio graphs to time (default auto: every precision the bundle holds; the end-to-end runs "
                     "take the runtime's pick)",
        "decoder": "GGUF component of the end-to-end and throughput runs (default auto: decoder.f16 where the "
                   "bundle has it, else the runtime's pick); every GGUF is timed on its own regardless",
        "gpu_layers": "decoder layers on the GPU for the runtime and every llama.cpp measurement (default: all of "
                      "them when llama.cpp was built with CUDA, see native/build.sh; 0 keeps the decoder on the CPU)",
    }
    for action in p._actions:
        action.help = helps.get(action.dest, action.help)


def cmd_bench(args) -> int:
    from gamma_rt.errors import GammaError

    if args.bundle == "serve":
        return serve_load.cmd_bench_serve(args)
    if args.bundle == "fidelity":
        return task_fidelity.cmd_bench_fidelity(args)
    if args.target is not None:
        raise GammaError(f"unexpected argument {args.target!r} (only `gamma-rt bench serve` and `bench fidelity` "
                         "take one)")
    from . import report

    if args.bundle == "report":
        readme = report.write_readme(args.out)
        print(f"wrote {readme}")
        return 0
    from gamma_rt.runtime.options import RuntimeOptions

    from .run import BenchOptions, run_bench, write_result

    for name in ("repeat", "decode_tokens"):
        if getattr(args, name) < 1:
            raise GammaError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise GammaError(f"--warmup must be 0 or more, got {args.warmup}")
    if args.seconds is not None and args.seconds <= 0:
        raise GammaError(f"--seconds must be positive, got {args.seconds}")
    if args.audio is not None and not args.audio.is_file():
        raise GammaError(f"{args.audio}: audio file not found (--audio)")
    opts = BenchOptions(bundle=Path(args.bundle), runtime=RuntimeOptions.from_args(args), baseline=args.baseline,
                        audio=args.audio, seconds=args.seconds, repeat=args.repeat, warmup=args.warmup,
                        n_decode=args.decode_tokens, skip=args.skip)
    result = run_bench(opts)
    path = write_result(result, args.out)
    plots = report.plot_result(path)
    print(report.summary(result))
    print(f"wrote {path}" + "".join(f", {p.name}" for p in plots))
    return 0
