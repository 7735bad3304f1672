"""Do the runtime's default threads hold up, idle and beside a busy process? (issue 23)

One question about the demo song (``gamma_rt.demo.DEMO_SONG``, 15 s) asked in-process, with the default
options (``--threads`` unset) and with each explicit ``--threads`` from 1 to the available cores, under
two conditions in the same run:

- ``idle``: nothing of ours running beside it;
- ``busy``: beside one pure-Python spinner process this command starts (a user's background job).

Every configuration keeps its own Pipeline open, is warmed up, then the configurations take turns, one
question each, ``--repeats`` rounds, so a change in the machine's load meanwhile falls on all of them
alike. The figure of each condition is the median of the default over the median of the best explicit
count (target: at most 1.2 on 2 cores). The result also says what the default picks here, on 2 and on 16
cores. Written to bench/results/thread-defaults-<bundle>-<time>.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from gamma_rt.errors import GammaError
from gamma_rt.machine import available_cores, default_decoder_threads, describe, load_average

from .entry import run_module, write_json
from .timing import summarize

RESULT_FORMAT = "gamma-rt-thread-defaults/1"
DEFAULT_OUT = Path("bench") / "results"
TARGET_RATIO = 1.2
SPINNER = "while True: pass"  # one busy core, as a background job takes it
CONDITIONS = ("idle", "busy")

EXAMPLE = """\
example:
  python -m gamma_rt.bench.thread_defaults                         # the trained built-in, built in --work
  python -m gamma_rt.bench.thread_defaults --bundle gamma-rt-demo/bundle-trained --repeats 9
"""


def picks(cores: int) -> dict:
    """What the default options run with on ``cores`` available cores."""
    return {"cores": cores, "decoder_threads": default_decoder_threads(cores), "onnxruntime_threads": cores,
            "onnxruntime_spinning": False}


def prepare(bundle: Path | None, work: Path) -> tuple[Path, Path]:
    """The bundle (the trained built-in, exported as ``gamma-rt demo`` does, unless given) and the demo song."""
    import soundfile as sf

    from gamma_rt.demo import DEMO_SONG, build_bundle
    from gamma_rt.synth import render

    work.mkdir(parents=True, exist_ok=True)
    if bundle is None:
        bundle = build_bundle(work, fresh=False, trained=True)
    song = work / "demo-song.flac"
    if not song.is_file():
        sf.write(song, render(DEMO_SONG, 44100), 44100)
    return bundle, song


def start_spinner() -> subprocess.Popen:
    spinner = subprocess.Popen([sys.executable, "-c", SPINNER])
    time.sleep(0.5)  # let it take its core before the first timed question
    return spinner


def measure_condition(pipes: dict, song: Path, question: str, max_tokens: int, repeats: int) -> dict:
    """{config: {"total_ms": stats, "after_audio_ms": stats}}: a warm-up each, then ``repeats`` rounds."""
    totals = {name: [] for name in pipes}
    after_audio = {name: [] for name in pipes}
    for pipe in pipes.values():
        pipe.ask(song, [question], max_tokens=max_tokens)
    for _ in range(repeats):
        for name, pipe in pipes.items():
            t0 = time.perf_counter()
            pipe.ask(song, [question], max_tokens=max_tokens)
            totals[name].append(round((time.perf_counter() - t0) * 1e3, 2))
            after_audio[name].append(round(pipe.figures_ms()["after_audio_ms"], 2))
    return {name: {"total_ms": summarize(totals[name]).to_dict(),
                   "after_audio_ms": summarize(after_audio[name]).to_dict()} for name in pipes}


def verdict(timings: dict) -> dict:
    """The default's median against the best explicit --threads of one condition."""
    explicit = {name: t["total_ms"]["median"] for name, t in timings.items() if name != "default"}
    best = min(explicit, key=explicit.get)
    ratio = timings["default"]["total_ms"]["median"] / explicit[best]
    return {"default_ms": timings["default"]["total_ms"]["median"], "best_explicit": best,
            "best_explicit_ms": explicit[best], "default_over_best": round(ratio, 3),
            "within_target": ratio <= TARGET_RATIO}


def run(bundle: Path | None, work: Path, repeats: int, max_tokens: int, out: Path, command: str) -> dict:
    from gamma_rt.demo import DEMO_QUESTION
    from gamma_rt.runtime.options import RuntimeOptions
    from gamma_rt.runtime.pipeline import Pipeline

    bundle, song = prepare(bundle, work)
    cores = available_cores()
    machine = describe(threads=0)
    configs = {"default": None, **{f"threads={n}": n for n in range(1, cores + 1)}}
    pipes = {name: Pipeline.open(bundle, RuntimeOptions(threads=n)) for name, n in configs.items()}
    conditions = {}
    try:
        for condition in CONDITIONS:
            spinner = start_spinner() if condition == "busy" else None
            try:
                timings = measure_condition(pipes, song, DEMO_QUESTION, max_tokens, repeats)
            finally:
                if spinner is not None:
                    spinner.kill()
                    spinner.wait()
            conditions[condition] = {"timings": timings, **verdict(timings)}
            print(f"{condition}: default {conditions[condition]['default_ms']:.1f} ms, best "
                  f"{conditions[condition]['best_explicit']} {conditions[condition]['best_explicit_ms']:.1f} ms: "
                  f"x{conditions[condition]['default_over_best']}", flush=True)
    finally:
        for pipe in pipes.values():
            pipe.close()
    result = {
        "format": RESULT_FORMAT, "benchmark": "thread_defaults", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command, "bundle": str(bundle),
        "inputs": {"question": DEMO_QUESTION, "song": "gamma_rt.demo.DEMO_SONG (15 s)", "max_tokens": max_tokens,
                   "repeats": repeats, "warmup": 1, "configs": {k: v for k, v in configs.items()},
                   "busy": f"one process: python -c {SPINNER!r}", "target_default_over_best": TARGET_RATIO},
        "default_picks": {"here": picks(cores), "2_cores": picks(2), "16_cores": picks(16)},
        "conditions": conditions,
        "machine": {**machine, "load_average_end": load_average()},
    }
    path = write_json(out / f"thread-defaults-{bundle.resolve().name}-{time.strftime('%Y%m%dT%H%M%S')}.json", result)
    print(f"wrote {path}")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gamma_rt.bench.thread_defaults", description=__doc__, epilog=EXAMPLE,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=None,
                   help="bundle to ask (default: the trained built-in, exported into --work as gamma-rt demo does)")
    p.add_argument("--work", type=Path, default=Path("gamma-rt-demo"),
                   help="folder for the built bundle and the demo song (default ./gamma-rt-demo, as gamma-rt demo)")
    p.add_argument("--repeats", type=int, default=5, help="timed questions per configuration and condition "
                   "(default 5)")
    p.add_argument("--max-tokens", type=int, default=48, help="longest answer, in tokens (default 48)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT})")
    args = p.parse_args(argv)

    def job(command: str) -> None:
        for name in ("repeats", "max_tokens"):
            if getattr(args, name) < 1:
                raise GammaError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
        run(args.bundle, args.work, args.repeats, args.max_tokens, args.out, command)

    return run_module("thread_defaults", argv, job)


if __name__ == "__main__":
    sys.exit(main())
