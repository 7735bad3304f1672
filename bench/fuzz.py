"""Fuzz gamma-rt with hostile input and count what takes it down (issue 23's evidence).

Five areas, each case run for real in its own subprocess (or, for the server, against one real
``gamma-rt serve`` process) under a timeout:

- ``gguf``: the decoder GGUF's header, metadata and tensor table mutated (the manifest's sha256 updated to
  match, so the mutation reaches llama.cpp's loader), then ``gamma-rt ask``;
- ``manifest``: manifest.json fields set to hostile values (NaN, 1e308, wrong types, hostile templates), then
  ``ask``;
- ``onnx``: an audio graph renamed, retyped, reshaped, corrupted or made to output NaN (sha256 updated),
  then ``ask``;
- ``server``: hostile JSON bodies and headers sent to a real ``gamma-rt serve``, each followed by a normal
  request that must still be answered;
- ``library``: a library of one good song beside one hostile file (corrupt audio, an odd name, a FIFO) or
  a hostile prompt set, then ``gamma-rt tag``; the good song must still get its record.

Each case is classified (:func:`classify`): ``ok`` or ``clean-error`` (a one-line refusal) pass; ``crash``
(killed by a signal, or the server died), ``hang`` (past the timeout), ``traceback`` (a Python traceback
printed), ``5xx`` and ``lost`` (the good song of a library case got no record) fail. The result,
bench/results/fuzz-<time>.json, holds every case and the counts per area.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

from gamma_rt.errors import GammaError

from .entry import run_module, write_json

RESULT_FORMAT = "gamma-rt-fuzz/1"
DEFAULT_OUT = Path("bench") / "results"
PASSING = ("ok", "clean-error")
FAILING = ("crash", "hang", "traceback", "5xx", "lost")
TRACEBACK = "Traceback (most recent call last)"
TAIL_CHARS = 2000  # of a failing case's output, kept in the result
NOTE_CHARS = 200  # of each case's note (a server case's status), kept in the list of all cases
# ggml's abort handler attaches gdb for a backtrace, which takes seconds per crash: the crash is what counts.
QUIET_ABORTS = {"GGML_NO_BACKTRACE": "1"}

EXAMPLE = """\
example:
  python -m gamma_rt.bench.fuzz --cases 25 --seconds 600            # all five areas, the tiny random bundle
  python -m gamma_rt.bench.fuzz --areas gguf,server --cases 10 --seed 3
  python -m gamma_rt.bench.fuzz --bundle my-bundle --areas manifest --keep
"""


@dataclass
class CaseResult:
    area: str
    name: str  # what was mutated, and how
    outcome: str  # one of PASSING or FAILING
    seconds: float
    rc: int | None = None  # the exit status (negative: killed by that signal); None when it never ended
    tail: str = ""  # the end of the output, for failing cases


def classify(rc: int | None, output: str, timed_out: bool) -> str:
    """``hang`` past the timeout, ``crash`` on a signal, ``traceback`` when one was printed, else ``ok`` (exit 0)
    or ``clean-error``."""
    if timed_out:
        return "hang"
    if rc is not None and rc < 0:
        return "crash"
    if TRACEBACK in output:
        return "traceback"
    return "ok" if rc == 0 else "clean-error"


def run_command(argv: list, timeout: float, env: dict | None = None, stdin: bytes | None = None) -> tuple[str, int | None, str]:
    """Run ``argv`` in its own process group; (outcome, exit status, stdout + stderr). A hang kills the group."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    try:
        out, _ = proc.communicate(stdin, timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        timed_out = True
    text = out.decode("utf-8", "replace")
    rc = None if timed_out else proc.returncode
    return classify(rc, text, timed_out), rc, text


def last_line(text: str) -> str:
    """The last non-empty line of a command's output: a clean error's one-line message."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def gamma_rt_command(*args) -> list:
    """The ``gamma-rt`` command line with this interpreter (the console script may not be on PATH)."""
    return [sys.executable, "-m", "gamma_rt.cli", *[str(a) for a in args]]


@dataclass
class FuzzContext:
    """What every area's cases need: the pristine bundle, a short song, a scratch folder, the limits."""

    bundle: Path
    song: Path
    work: Path
    timeout: float
    rng: random.Random
    threads: int = 1

    def scratch(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.work))

    def env(self) -> dict:
        """The cases' environment: their own verified-hash cache, so they leave the user's alone."""
        from gamma_rt.hashing import HASH_CACHE_ENV

        return {**os.environ, **QUIET_ABORTS, HASH_CACHE_ENV: str(self.work / "verified-sha256.json"),
                "PYTHONUNBUFFERED": "1"}

    def ask(self, bundle: Path) -> list:
        return gamma_rt_command("ask", bundle, self.song, "-q", "What genre is this?", "--max-tokens", 4,
                                "--threads", self.threads)


def areas() -> dict[str, Callable[[FuzzContext, int], Iterator[CaseResult]]]:
    """Area name -> a generator of ``n`` case results."""
    from . import fuzz_bundle, fuzz_serve

    return {"gguf": fuzz_bundle.gguf_cases, "manifest": fuzz_bundle.manifest_cases, "onnx": fuzz_bundle.onnx_cases,
            "server": fuzz_serve.server_cases, "library": fuzz_serve.library_cases}


def prepare(bundle: Path | None, work: Path) -> tuple[Path, Path]:
    """The bundle (the tiny random one ``gamma-rt demo --random`` builds, unless given) and a 4 s song."""
    from gamma_rt.synth import Music, write

    work.mkdir(parents=True, exist_ok=True)
    if bundle is None:
        from gamma_rt.demo import build_bundle

        bundle = build_bundle(work, fresh=False, trained=False)
    elif not (bundle / "manifest.json").is_file():
        raise GammaError(f"{bundle}: no manifest.json (--bundle takes a bundle folder)")
    song = work / "song.flac"
    if not song.is_file():
        write(song, Music(seconds=4.0, rate=16000, channels=1))
    return bundle, song


def run_fuzz(ctx: FuzzContext, names: list[str], cases: int, seconds: float, say=print) -> dict:
    """Round-robin over the areas, one case each in turn, until each has ``cases`` or ``seconds`` are spent."""
    table = areas()
    streams = {name: table[name](ctx, cases) for name in names}
    results: list[CaseResult] = []
    stopped: dict[str, str] = {}  # area -> the fuzzer's own error that ended it (a bug here, not in gamma-rt)
    start = time.monotonic()
    while streams and time.monotonic() - start < seconds:
        for name in list(streams):
            try:
                r = next(streams[name])
            except StopIteration:
                del streams[name]
                continue
            except Exception:  # the other areas' cases still count; the error is printed and recorded
                stopped[name] = traceback.format_exc()
                say(f"fuzz: the {name} area stopped on an error of the fuzzer itself:\n{stopped[name]}")
                del streams[name]
                continue
            results.append(r)
            say(f"[{len(results)}] {r.area}: {r.name}: {r.outcome} ({r.seconds:.1f} s)")
            if time.monotonic() - start >= seconds:
                break
    for stream in streams.values():
        stream.close()  # a server area stops its server
    return {**summarize(results, time.monotonic() - start), "areas_stopped": stopped}


def summarize(results: list[CaseResult], seconds: float) -> dict:
    counts = {o: sum(r.outcome == o for r in results) for o in PASSING + FAILING}
    per_area = {}
    for r in results:
        per_area.setdefault(r.area, {o: 0 for o in PASSING + FAILING})[r.outcome] += 1
    return {"cases": len(results), "counts": counts, "per_area": per_area, "seconds": round(seconds, 1),
            "failures": [asdict(r) for r in results if r.outcome in FAILING],
            "all": [{**{k: v for k, v in asdict(r).items() if k != "tail"}, "note": r.tail[:NOTE_CHARS]}
                    for r in results]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gamma_rt.bench.fuzz", description=__doc__, epilog=EXAMPLE,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, default=None,
                   help="bundle to mutate (default: the tiny random bundle, built in --work)")
    p.add_argument("--areas", default=",".join(("gguf", "manifest", "onnx", "server", "library")),
                   help="comma-separated areas (default all five)")
    p.add_argument("--cases", type=int, default=5, help="cases per area (default 5)")
    p.add_argument("--seconds", type=float, default=600.0, help="stop starting cases after this long (default 600)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds one case may take before it is a hang (default 60)")
    p.add_argument("--seed", type=int, default=0, help="the mutations' random seed (default 0)")
    p.add_argument("--threads", type=int, default=1, help="--threads of every gamma-rt command run (default 1)")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "gamma-rt-fuzz",
                   help="folder for the bundle, the song and the cases (default: gamma-rt-fuzz in the temp dir)")
    p.add_argument("--keep", action="store_true", help="keep every case's files in --work (default: removed)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"results folder (default {DEFAULT_OUT})")
    args = p.parse_args(argv)

    def job(command: str) -> None:
        names = [a.strip() for a in args.areas.split(",") if a.strip()]
        unknown = sorted(set(names) - set(areas()))
        if unknown or not names:
            raise GammaError(f"--areas: unknown {', '.join(unknown) or 'none given'} (choose from {', '.join(areas())})")
        if args.cases < 1 or args.timeout <= 0 or args.seconds <= 0:
            raise GammaError("--cases, --timeout and --seconds must be positive")
        bundle, song = prepare(args.bundle, args.work)
        cases_dir = Path(tempfile.mkdtemp(prefix="cases-", dir=args.work))
        ctx = FuzzContext(bundle=bundle, song=song, work=cases_dir, timeout=args.timeout,
                          rng=random.Random(args.seed), threads=args.threads)
        try:
            result = run_fuzz(ctx, names, args.cases, args.seconds)
        finally:
            if not args.keep:
                import shutil

                shutil.rmtree(cases_dir, ignore_errors=True)
        from gamma_rt import machine

        result = {"format": RESULT_FORMAT, "command": command, "machine": machine.describe(args.threads),
                  "inputs": {"bundle": bundle.name, "areas": names, "cases_per_area": args.cases, "seed": args.seed,
                             "timeout_s": args.timeout, "seconds": args.seconds}, **result}
        path = write_json(args.out / f"fuzz-{time.strftime('%Y%m%dT%H%M%S')}.json", result)
        print(" ".join(f"{k} {v}" for k, v in result["counts"].items()) + f" of {result['cases']} cases"
              + (f"; areas stopped by a fuzzer error: {', '.join(result['areas_stopped'])}" if result["areas_stopped"] else ""))
        print(f"wrote {path}")

    return run_module("fuzz", argv, job)


if __name__ == "__main__":
    sys.exit(main())
