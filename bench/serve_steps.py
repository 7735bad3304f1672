"""The costs behind ``gamma-rt serve``'s throughput on one machine, and the throughput ratio they allow (issue 15).

A served request costs one audio window on the encoders (E: the window is padded to its full length, so a
3 s clip costs what a 30 s one does), a prefill of its prompt and audio tokens (P, per token), and one
decode step per answer token. Concurrent requests share only the decode steps: a step of B sequences costs
s_B, so B answers cost s_B / B per token each instead of s_1. One at a time against --clients B at once:

    ratio(audio, tokens) = (E + P(audio) + tokens * s_1) / (E + P(audio) + tokens * s_B / B)

at best (every step full, nothing else on the cores). This measures, on the served decoder and threads:

1. s_B for B = 1, 2, 4, 8 sequences of ``--cells`` cells each, stepped together in one llama_decode batch
   (``DecoderSession.step``), with one pool of cells for all sequences and with each sequence's own (the
   server's layout);
2. P: prefill ms per token, the audio embeddings of one sequence after the others';
3. E: one window through the audio graphs (front end included), alone;
4. the same window while 8-sequence steps run on the same cores, as they did in the server before the
   listener and the scheduler took turns: the wall time of both at once against one after the other;
5. with each sequence's own cells, a step of 8 in increasing sequence order, in decreasing order, and with
   the middle sequence left out: llama.cpp makes one pass only of consecutive ids in increasing order;

and writes the predicted ratio for a grid of workloads, and the answer length each audio length needs for a
ratio of 2.5, to ``bench/results/serve-steps-<bundle>-<decoder>-<time>.json``. ``others_cpu_s`` is the CPU
time other processes took during the run: on a shared machine, a figure is only as good as that is small.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

from gamma_rt.errors import GammaError

from .entry import run_module, write_json

RESULT_FORMAT = "gamma-rt-bench-serve-steps/1"
DEFAULT_OUT = Path("bench") / "results"
BATCHES = (1, 2, 4, 8)
TARGET_RATIO = 2.5  # issue 15: concurrency 8 against one at a time
PROMPT_TOKENS = 30  # the prompt head, audio markers and a short question, besides the audio tokens

EXAMPLE = """\
example:
  python -m gamma_rt.bench.serve_steps /tmp/small_bundle --decoder decoder.f16 --threads 2
  python -m gamma_rt.bench.serve_steps /tmp/small_bundle --decoder decoder --threads 2 --cells 280 --steps 5
"""


def cpu_busy_s() -> float | None:
    """CPU seconds all processes have run so far (/proc/stat; nice'd work counted), None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return None
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _cells(n: int) -> int:
    """``n`` rounded up to llama.cpp's 256-cell padding, so each sequence's share is what was asked."""
    return -(-n // 256) * 256


def step_costs(gguf: Path, threads: int, cells: int, steps: int, shared: bool, seqs: int = max(BATCHES)) -> dict:
    """ms of one step of B sequences (median of ``steps`` after one untimed), and prefill ms per token."""
    from gamma_rt.runtime.decoder import DecoderSession

    rng = np.random.default_rng(0)
    with DecoderSession(gguf, n_ctx=seqs * _cells(cells + 256), n_threads=threads, n_seq_max=seqs,
                        shared_cells=shared) as s:
        prefill = []
        for seq in range(seqs):  # audio-like embeddings; each sequence after the others, as the server admits them
            embd = (rng.standard_normal((cells, s.n_embd)) * 0.02).astype(np.float32)
            t = time.perf_counter()
            s.eval_embeddings(embd, seq)
            prefill.append((time.perf_counter() - t) * 1e3 / cells)
        last = [1] * seqs
        step_ms = {str(b): step_ms_median(s, list(range(b)), last, steps) for b in BATCHES}
        order = None if shared else batch_order(s, last, steps)
    result = {"step_ms": step_ms, "per_token_ms": {b: round(v / int(b), 1) for b, v in step_ms.items()},
              "prefill_ms_per_token": round(float(np.median(prefill[1:] or prefill)), 2),
              "prefill_ms_per_token_by_sequence": [round(p, 2) for p in prefill]}
    if order is not None:
        result["batch_order_ms"] = order
    return result


def batch_order(s, last: list[int], steps: int) -> dict:
    """ms of a step of all sequences in increasing order, in decreasing order, and of all but one in the middle.
    With cells per sequence, llama.cpp runs a batch as one pass only over consecutive sequence ids in
    increasing order; any other batch is split into a pass per such run (the weights read once per pass), which
    is why the server steps its sequences sorted and hands out the lowest free one."""
    n = len(last)
    cases = {"increasing": list(range(n)), "decreasing": list(range(n))[::-1],
             "one_missing": [q for q in range(n) if q != n // 2]}
    return {name: step_ms_median(s, seqs, last, steps) for name, seqs in cases.items()}


def step_ms_median(s, seqs: list[int], last: list[int], steps: int) -> float:
    """ms of a greedy step of sequences ``seqs``, in that order (median of ``steps`` after one untimed); each
    sequence's drawn token goes into ``last``, to be the one it evaluates next."""
    times = []
    for k in range(steps + 1):
        t = time.perf_counter()
        drawn = s.step([(q, last[q]) for q in seqs], [None] * len(seqs))
        if k:
            times.append((time.perf_counter() - t) * 1e3)
        for q, token in zip(seqs, drawn):
            last[q] = token
    return round(float(np.median(times)), 1)


def encode_costs(pipeline, gguf: Path, threads: int, windows: int, cells: int = 64) -> dict:
    """One window's encode alone, then ``windows`` windows while 8-sequence steps (of ``cells`` cells each: only
    the ratio matters here) run: wall times."""
    from gamma_rt.runtime.decoder import DecoderSession
    from gamma_rt.runtime.embed import embed_windows
    from gamma_rt.synth import Music, synthesize

    song = synthesize(Music(10.0, rate=pipeline.layout.sample_rate, seed=0)).astype(np.float32)

    def encode() -> float:
        t = time.perf_counter()
        for _ in embed_windows([song], pipeline.backend, pipeline.layout, overlap=False):
            pass
        return time.perf_counter() - t

    b = max(BATCHES)
    rng = np.random.default_rng(1)
    with DecoderSession(gguf, n_ctx=b * _cells(cells + 256), n_threads=threads, n_seq_max=b, shared_cells=False) as s:
        for seq in range(b):
            s.eval_embeddings((rng.standard_normal((cells, s.n_embd)) * 0.02).astype(np.float32), seq)
        last = [1] * b

        def step() -> float:
            t = time.perf_counter()
            last[:] = s.step([(q, last[q]) for q in range(b)], [None] * b)
            return time.perf_counter() - t

        encode(), step()  # untimed: first runs allocate
        alone_e = float(np.median([encode() for _ in range(windows)]))
        alone_s = float(np.median([step() for _ in range(4)]))
        together_e, together_s, done = [], [], threading.Event()

        def encoder() -> None:
            together_e.extend(encode() for _ in range(windows))
            done.set()

        t0 = time.perf_counter()
        worker = threading.Thread(target=encoder)
        worker.start()
        while not done.is_set():
            together_s.append(step())
        worker.join()
        wall = time.perf_counter() - t0
    serial = windows * alone_e + len(together_s) * alone_s
    return {"window_s": round(alone_e, 3), "step_of_8_ms": round(alone_s * 1e3, 1),
            "at_once": {"windows": windows, "steps_of_8": len(together_s), "wall_s": round(wall, 2),
                        "window_s": round(float(np.median(together_e)), 3),
                        "step_of_8_ms": round(float(np.median(together_s)) * 1e3, 1),
                        "one_after_the_other_s": round(serial, 2), "speedup": round(serial / wall, 2)}}


def predict(window_s: float, prefill_ms: float, step_ms: dict, tokens_per_second: float) -> dict:
    """Best-case throughput ratio at 8 against 1 for a grid of workloads, and the answer length each audio
    length needs for TARGET_RATIO (None: not reachable, s_1 / (s_8 / 8) is below it)."""
    s1, s8 = step_ms["1"] / 1e3, step_ms["8"] / 1e3 / 8

    def fixed(audio_s: float) -> float:
        return window_s + (math.ceil(audio_s * tokens_per_second) + PROMPT_TOKENS) * prefill_ms / 1e3

    grid = {f"{a:g}s": {str(t): round((fixed(a) + t * s1) / (fixed(a) + t * s8), 2) for t in (32, 128, 256, 512)}
            for a in (3, 10, 30)}
    need = {}
    for a in (3, 10, 30):
        gain = s1 - TARGET_RATIO * s8  # tokens * gain >= (TARGET_RATIO - 1) * fixed
        need[f"{a:g}s"] = math.ceil((TARGET_RATIO - 1) * fixed(a) / gain) if gain > 0 else None
    return {"ratio_at_8": grid, "answer_tokens_for_2.5x": need, "limit": round(s1 / s8, 2)}


def run(bundle: Path, decoder: str, threads: int, cells: int, steps: int, windows: int, out: Path,
        command: str) -> dict:
    from gamma_rt.machine import describe, load_average
    from gamma_rt.runtime.pipeline import Pipeline

    machine = describe(threads)
    busy0, own0 = cpu_busy_s(), _own_cpu_s()
    t0 = time.perf_counter()
    with Pipeline.open(bundle, threads=threads, decoder=decoder) as pipeline:
        pipeline.session.close()  # the measurements open their own contexts
        pipeline.session = None
        gguf, decoder = pipeline.decoder_file, pipeline.options.decoder
        layout = pipeline.layout
        shared = step_costs(gguf, threads, cells, steps, shared=True)
        own = step_costs(gguf, threads, cells, steps, shared=False)
        encoders = encode_costs(pipeline, gguf, threads, windows)
    wall = time.perf_counter() - t0
    busy1, own1 = cpu_busy_s(), _own_cpu_s()
    tps = layout.tokens_per_window / layout.window_seconds  # a partial window keeps about its share (token_count)
    result = {
        "format": RESULT_FORMAT, "benchmark": "serve_steps", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command, "bundle": str(bundle), "decoder": decoder,
        "inputs": {"threads": threads, "cells_per_sequence": cells, "steps": steps, "windows": windows},
        "shared_cells": shared, "own_cells": own, "encoders": encoders,
        "predicted": predict(encoders["window_s"], own["prefill_ms_per_token"], own["step_ms"], tps),
        "wall_s": round(wall, 1),
        "others_cpu_s": None if busy0 is None else round(busy1 - busy0 - (own1 - own0), 1),
        "machine": {**machine, "load_average_end": load_average()},
    }
    path = write_json(out / f"serve-steps-{bundle.resolve().name}-{decoder}-{time.strftime('%Y%m%dT%H%M%S')}.json",
                        result)
    print(summary(result))
    print(f"wrote {path}")
    return result


def _own_cpu_s() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def summary(result: dict) -> str:
    own, shared, enc, pred = result["own_cells"], result["shared_cells"], result["encoders"], result["predicted"]
    lines = [f"{result['decoder']}, {result['inputs']['threads']} threads, {result['inputs']['cells_per_sequence']} "
             f"cells per sequence (others' CPU meanwhile: {result['others_cpu_s']} s)"]
    for name, r in (("own cells", own), ("shared cells", shared)):
        lines.append(f"  step ms, {name}: " + ", ".join(f"B={b} {ms}" for b, ms in r["step_ms"].items())
                     + f"; prefill {r['prefill_ms_per_token']} ms/token")
    order = own.get("batch_order_ms")
    if order:
        lines.append(f"  step of {max(BATCHES)}, own cells: sequences in increasing order {order['increasing']} ms, "
                     f"decreasing {order['decreasing']} ms; all but one in the middle {order['one_missing']} ms")
    a = enc["at_once"]
    lines.append(f"  window {enc['window_s']} s alone; {a['windows']} windows with {a['steps_of_8']} steps of 8 at "
                 f"once {a['wall_s']} s, one after the other {a['one_after_the_other_s']} s (x{a['speedup']})")
    lines.append(f"  best ratio at 8 (limit x{pred['limit']}): {json.dumps(pred['ratio_at_8'])}")
    lines.append(f"  answer tokens for x{TARGET_RATIO}: {json.dumps(pred['answer_tokens_for_2.5x'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gamma_rt.bench.serve_steps", description=__doc__, epilog=EXAMPLE,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path, help="bundle folder")
    p.add_argument("--decoder", default="auto", metavar="COMPONENT",
                   help="GGUF component (decoder, decoder.f16, ...; default auto, as serve picks)")
    p.add_argument("--threads", type=int, default=2, help="threads of each engine, as serve --threads (default 2)")
    p.add_argument("--cells", type=int, default=280, metavar="N",
                   help="cells of each sequence before the steps: prompt and audio (default 280, a 10 s clip)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per batch size (default 5)")
    p.add_argument("--windows", type=int, default=2, help="windows encoded alone and at once (default 2)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    def job(command: str) -> None:
        for name in ("threads", "cells", "steps", "windows"):
            if getattr(args, name) < 1:
                raise GammaError(f"--{name} must be at least 1, got {getattr(args, name)}")
        run(args.bundle, args.decoder, args.threads, args.cells, args.steps, args.windows, args.out, command)

    return run_module("serve_steps", argv, job)


if __name__ == "__main__":
    sys.exit(main())
