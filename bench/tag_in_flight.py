"""Songs/hour of ``gamma-rt tag`` with N songs in flight on the batching engine against one at a time, the
records compared answer for answer, and the step-cost bound that explains the ratio (issue 27).

Both runs tag the same generated library (bench/tagging.py's formats: FLAC, WAV, MP3, Ogg, M4A, Opus),
each into a fresh results folder (so neither reads the other's embedding cache), each in a child process of
its own (so its peak RSS is its own), with the same threads and decoder. Every llama.cpp decode step of the
run is timed (its batch size and ms).

The bound: songs in flight share only the decode steps. One at a time, a run spends S1 s in decode steps of
k sequences (k prompts) and R1 s on everything else (decode of the files, encoders, prefill, questions). With
N in flight the same steps gather up to N k sequences; a step of B sequences costs s_B (median ms per step
size, measured in the runs), so the steps cost at best S1 * s_Nk / (N s_k), and

    ratio <= (R1 + S1) / (R1 + S1 * s_Nk / (N * s_k))    and, were decode free,   ratio <= (R1 + S1) / R1.

On a CPU, prefill is compute-bound and most of R1: the ratio is held near 1 by it, whatever the scheduler.

    python -m gamma_rt.bench.tag_in_flight BUNDLE --tracks 16 --seconds 30 --threads 2 \\
        --out bench/results/tag_in_flight-small.json
    python -m gamma_rt.bench.tag_in_flight BUNDLE --tracks 50 --seconds 30 --threads 2 --decoder decoder \\
        --out bench/results/tag_in_flight-records-50.json       # the 50-track records check (F32 decoder)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gamma_rt.machine import describe, load_average

from .entry import run_module, write_json
from .tagging import QUICK_PROMPTS, make_library

RESULT_FORMAT = "gamma-rt-bench-tag-in-flight/1"

EXAMPLE = """\
example:
  python -m gamma_rt.bench.tag_in_flight /tmp/small_bundle --tracks 16 --seconds 30 --threads 2 \\
      --out bench/results/tag_in_flight-small.json
"""


def one_run(bundle: Path, library: Path, out: Path, prompts: Path, n: int, threads: int, decoder: str,
            batch_windows: int = 1) -> dict:
    """Tag ``library`` with ``n`` songs in flight, in this process; wall time, step log, windows per audio
    backend call, records, peak RSS."""
    from gamma_rt.runtime.ort_backend import OrtBackend
    from gamma_rt.runtime.decoder import DecoderSession
    from gamma_rt.runtime.options import RuntimeOptions
    from gamma_rt.runtime.tagging.prompt_sets import PromptSet
    from gamma_rt.runtime.tagging.records import read_records
    from gamma_rt.runtime.tagging.run import TagJob, run

    steps: list[tuple[int, float]] = []
    real_step = DecoderSession.step

    def timed_step(self, items, samplers):
        t0 = time.perf_counter()
        drawn = real_step(self, items, samplers)
        steps.append((len(items), (time.perf_counter() - t0) * 1e3))
        return drawn

    DecoderSession.step = timed_step
    calls: list[int] = []
    real_encode = OrtBackend.encode

    def counted_encode(self, feeds):
        calls.append(len(feeds["window_index"]))
        return real_encode(self, feeds)

    OrtBackend.encode = counted_encode
    said: list[str] = []
    job = TagJob(library=library, bundle=bundle, out=out, prompt_set=PromptSet.load(prompts), in_flight=n,
                 runtime=RuntimeOptions(threads=threads, decoder=decoder, batch_windows=batch_windows))
    t0 = time.perf_counter()
    summary = run(job, on_engine=said.append)
    wall = time.perf_counter() - t0
    records = read_records(summary.records_file, "jsonl")
    return {"in_flight": n, "batch_windows": batch_windows, "backend_calls": len(calls),
            "windows_per_call_max": max(calls, default=0), "engine": said, "wall_s": round(wall, 2),
            "ok": summary.ok, "failed": summary.failed,
            "steps": steps, "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "answers": {r["path"]: [r["status"], r["error"], r["answers"]] for r in records}}


def summarize(run: dict, songs: int) -> dict:
    steps = run.pop("steps")
    by_size: dict[int, list[float]] = {}
    for size, ms in steps:
        by_size.setdefault(size, []).append(ms)
    step_s = sum(ms for _, ms in steps) / 1e3
    run.update(songs_per_hour=round(songs * 3600 / run["wall_s"], 1), decode_steps=len(steps),
               step_s=round(step_s, 2), other_s=round(run["wall_s"] - step_s, 2),
               mean_step_size=round(sum(s for s, _ in steps) / max(1, len(steps)), 2),
               step_ms_by_size={size: round(statistics.median(v), 2) for size, v in sorted(by_size.items())})
    return run


def bound(alone: dict, together: dict, n: int, k: int) -> dict:
    """The ratio the decode steps allow (module docstring), from the runs' own step costs."""
    alone_sizes = {int(s): ms for s, ms in alone["step_ms_by_size"].items()}
    together_sizes = {int(s): ms for s, ms in together["step_ms_by_size"].items()}
    s_k = alone_sizes[min(alone_sizes, key=lambda size: (abs(size - k), -size))]  # one song's k questions
    big = max(together_sizes)
    s_nk = together_sizes[big]
    r1, s1 = alone["other_s"], alone["step_s"]
    per_seq = s_nk / (big / k) / s_k  # a full step's cost per song, against one song's step
    return {"s_k_ms": s_k, "k": k, "largest_step": big, "s_largest_ms": s_nk,
            "step_cost_per_song_vs_alone": round(per_seq, 3),
            "ratio_bound": round((r1 + s1) / (r1 + s1 * per_seq), 3),
            "ratio_bound_free_decode": round((r1 + s1) / max(1e-9, r1), 3),
            "decode_share_alone": round(s1 / (r1 + s1), 3)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gamma_rt.bench.tag_in_flight", description=__doc__,
                                     epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--tracks", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each generated track")
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--decoder", default="auto", help="manifest key of the GGUF (decoder: F32)")
    parser.add_argument("--prompts", default="quick", help="'quick' (bench/tagging.py's QUICK_PROMPTS) or a file")
    parser.add_argument("--batch-windows", type=int, default=1,
                        help="windows per audio-backend call in the N-in-flight run (one window each of that many "
                             "songs; the one-at-a-time run keeps 1), so the records check covers both batchings")
    parser.add_argument("--out", type=Path, default=Path("bench/results/tag_in_flight.json"))
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one run, JSON on stdout
    parser.add_argument("--library", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--results", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:
        result = one_run(args.bundle, args.library, args.results, Path(args.prompts), args.one, args.threads,
                         args.decoder, args.batch_windows)
        print(json.dumps(result))
        return 0
    return run_module("tag_in_flight", argv, lambda command: _bench(args, command))


def _bench(args, command: str) -> None:
    from gamma_rt.runtime.tagging.prompt_sets import PromptSet

    with tempfile.TemporaryDirectory(prefix="tag-in-flight-") as tmp:
        work = Path(tmp)
        make_library(work / "library", args.tracks, args.seconds)
        prompts = Path(args.prompts)
        if args.prompts == "quick":
            prompts = work / "quick.toml"
            prompts.write_text(QUICK_PROMPTS)
        k = len(PromptSet.load(prompts).prompts)
        before, runs = load_average(), {}
        for n in (1, args.in_flight):
            cmd = [sys.executable, "-m", "gamma_rt.bench.tag_in_flight", str(args.bundle), "--one", str(n),
                   "--library", str(work / "library"), "--results", str(work / f"results-{n}"),
                   "--prompts", str(prompts), "--threads", str(args.threads), "--decoder", args.decoder,
                   "--batch-windows", str(1 if n == 1 else args.batch_windows)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs[n] = summarize(json.loads(out.stdout.splitlines()[-1]), args.tracks)
            print(f"in flight {n}: {runs[n]['songs_per_hour']} songs/hour, {runs[n]['decode_steps']} steps",
                  file=sys.stderr)
        alone, together = runs[1], runs[args.in_flight]
        same = alone["answers"] == together["answers"]
        differing = sorted(str(Path(p).relative_to(work / "library")) for p in alone["answers"]
                           if alone["answers"][p] != together["answers"].get(p))
        for r in runs.values():
            r.pop("answers")
        result = {
            # the bundle by its folder's name: no path of this machine in a committed result
            "format": RESULT_FORMAT, "command": command.replace(str(args.bundle), "BUNDLE"),
            "bundle": args.bundle.resolve().name, "decoder": args.decoder, "batch_windows": args.batch_windows,
            "tracks": args.tracks, "seconds": args.seconds, "prompts": k, "threads": args.threads,
            "songs_per_hour": {f"in_flight_{n}": r["songs_per_hour"] for n, r in runs.items()},
            "ratio": round(together["songs_per_hour"] / alone["songs_per_hour"], 3),
            "records_equal": same, "records_differing": differing,
            "bound": bound(alone, together, args.in_flight, k),
            "runs": {str(n): r for n, r in runs.items()},
            "load_average_before": before, "load_average_after": load_average(),
            "machine": describe(args.threads),
        }
    write_json(args.out, result)
    print(f"x{result['ratio']} songs/hour at {args.in_flight} in flight (bound x{result['bound']['ratio_bound']}, "
          f"x{result['bound']['ratio_bound_free_decode']} were decode free); records equal: {same}; {args.out}",
          file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
