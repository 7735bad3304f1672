"""``gamma-rt tag``: batch tagging of a music library (registered from gamma_rt/cli.py).

The runtime flags are the same group as ``ask`` and ``chat`` (runtime/options.py); they become one
RuntimeOptions that every pipeline of the run is opened with."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gamma_rt.terminal import printable

from ..options import add_runtime_options
from .records import FORMATS
from .segment import Segment

DESCRIPTION = """\
Ask a prompt set (genre, mood, instruments, tempo, key, vocals, structure, caption by default) about every
audio file under LIBRARY_DIR and write one record per track to RESULTS/records.jsonl (or .csv / .sqlite).

Every answer is JSON constrained by a grammar made from the prompt's JSON schema, so every record parses.
The run is resumable: RESULTS/journal.sqlite remembers each finished track (keyed by path, size, mtime,
content hash, bundle and prompt set), so running the same command again, after a crash, a kill or Ctrl-C,
does only the rest. A new prompt set re-asks every track but reuses the cached audio embeddings
(RESULTS/embedding-cache). A file that cannot be decoded or read gets a 'failed' record and the run goes on;
the exit code is 1 if any track failed or a folder could not be listed (a warning names it). A full disk
stops the run with one line and exit code 2: free space and run the same command to resume.

Formats: whatever libsndfile reads (WAV, FLAC, Ogg, MP3, AIFF) and, through FFmpeg, M4A/MP4 (AAC, ALAC),
Opus, WebM, WMA, WavPack, APE and the audio of MP4 videos.

  gamma-rt tag ~/Music --bundle bundle --out tags/
  gamma-rt tag ~/Music --bundle bundle --out tags/ --prompts my_prompts.toml --format csv
  gamma-rt tag ~/Music --bundle bundle --out tags/ --dry-run               # what would be asked, and why
  gamma-rt tag ~/Music --bundle bundle --out tags/ --count-only            # just the counts
  gamma-rt tag ~/Music --bundle bundle --out tags/ --segment middle:60     # one minute from each track
  gamma-rt tag ~/Music --bundle bundle --out tags/ --timeout-per-minute 30 # 30 s per minute of audio
  gamma-rt tag ~/Music --bundle bundle --out tags/ --in-flight 8           # 8 songs at once on one model
  gamma-rt tag ~/Music --bundle bundle --out tags/ --workers 2             # two model instances
  gamma-rt tag ~/Music --bundle bundle --out tags/ --write-tags --dry-run   # the tag diff of the records
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tag", help="tag a whole music library (resumable; JSONL/CSV/SQLite; optional file tags)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("library", type=Path, metavar="LIBRARY_DIR", help="folder searched recursively for audio files")
    p.add_argument("--bundle", required=True, type=Path, help="bundle folder made by `gamma-rt export`")
    p.add_argument("--out", required=True, type=Path, metavar="RESULTS",
                   help="results folder: journal.sqlite, records.*, embedding-cache/ (created if missing)")
    p.add_argument("--prompts", type=Path, metavar="FILE",
                   help="prompt set, TOML or YAML (default: the built-in set, runtime/tagging/default_prompts.toml)")
    p.add_argument("--format", choices=FORMATS, default="jsonl", help="result file format")
    p.add_argument("--workers", type=int, default=1,
                   help="model instances: threads (local) or Ray actors, one per GPU if there are GPUs")
    p.add_argument("--in-flight", type=int, metavar="N",
                   help="songs at once on one model's batching engine: their decode steps share one llama.cpp "
                   "batch (default: as many as half the free memory holds KV cells for, at most 4 per core and "
                   "8; the run prints N and the memory per song). Records are the same for every N. With "
                   "--workers > 1 or --engine ray each model takes one song at a time")
    p.add_argument("--prefetch", type=int, default=2, help="tracks decoded ahead on CPU threads (local engine)")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this process; ray: actors on a Ray cluster (set RAY_ADDRESS to join one)")
    p.add_argument("--retry-failed", action="store_true", help="ask again about tracks whose record failed")
    p.add_argument("--segment", metavar="WHERE:SECONDS",
                   help="analyse only this span of each track: start:S, middle:S, end:S or OFFSET:S "
                   "(e.g. middle:60); a shorter track is analysed whole; records of another segment are not reused")
    p.add_argument("--timeout-per-minute", type=float, metavar="S",
                   help="give each track S seconds per minute of audio analysed (at least one minute's worth); "
                   "a track past it gets a failed record saying so and the run goes on")
    p.add_argument("--wait", action="store_true",
                   help="if another run holds RESULTS, wait for it to finish instead of exiting")
    p.add_argument("--write-tags", action="store_true",
                   help="write genre, mood and caption into the files' own tags (verified copy, atomic swap)")
    p.add_argument("--dry-run", action="store_true",
                   help="ask nothing, change nothing: list each track that would be asked and why (new, changed, "
                   "failed, other bundle, other prompt set); with --write-tags also the tag diff of the records")
    p.add_argument("--count-only", action="store_true",
                   help="print how many tracks are done and how many would be asked (by reason), then exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_runtime_options(p, cache_help="audio-embedding cache folder (default RESULTS/embedding-cache); "
                        "a new prompt set reuses it, so songs are encoded once")
    p.set_defaults(func=cmd_tag)


def cmd_tag(args) -> int:
    from gamma_rt.errors import GammaError

    from ..options import RuntimeOptions
    from .prompt_sets import PromptSet
    from .run import TagJob

    if args.workers < 1 or args.prefetch < 0:
        raise GammaError("--workers must be at least 1 and --prefetch at least 0")
    if args.in_flight is not None and args.in_flight < 1:
        raise GammaError(f"--in-flight must be at least 1, got {args.in_flight}")
    if args.in_flight is not None and (args.workers > 1 or args.engine == "ray"):
        raise GammaError("--in-flight runs songs on one model in this process: drop --workers or --engine ray")
    if args.timeout_per_minute is not None and args.timeout_per_minute <= 0:
        raise GammaError(f"--timeout-per-minute must be positive, got {args.timeout_per_minute}")
    runtime = RuntimeOptions.from_args(args)
    prompt_set = PromptSet.load(args.prompts) if args.prompts else PromptSet.default()
    job = TagJob(library=args.library, bundle=args.bundle, out=args.out, prompt_set=prompt_set, fmt=args.format,
                 workers=args.workers, in_flight=args.in_flight, prefetch=args.prefetch, engine=args.engine, retry_failed=args.retry_failed,
                 runtime=runtime,
                 segment=Segment.parse(args.segment) if args.segment else None, timeout_per_minute=args.timeout_per_minute, wait=args.wait)
    if args.dry_run or args.count_only:
        return _report_plan(job, args)
    return _run(job, args)


def _report_plan(job, args) -> int:
    """--dry-run / --count-only: what a run would ask and why, on stdout; nothing is asked or written."""
    from collections import Counter

    from .run import plan, write_file_tags

    todo, done = plan(job, _warn)
    if not args.count_only:
        for track, reason in todo:
            print(printable(f"would ask ({reason}): {track.path}"))
    reasons = ", ".join(f"{n} {why}" for why, n in sorted(Counter(why for _, why in todo).items()))
    print(f"{len(todo) + done} tracks: {done} done, {len(todo)} to ask" + (f" ({reasons})" if reasons else ""))
    if args.write_tags and not args.count_only:
        write_file_tags(job, True, lambda line: print(printable(line)))
    return 0


def _run(job, args) -> int:
    from .progress import TagProgress
    from .run import run, write_file_tags

    progress = TagProgress(enabled=False if args.quiet else None)
    try:
        summary = run(job, on_record=progress.advance, on_start=lambda todo: progress.start(len(todo)),
                      on_wait=lambda line: print(printable(f"gamma-rt: {line}"), file=sys.stderr),
                      on_engine=None if args.quiet else lambda line: print(f"gamma-rt: {line}", file=sys.stderr))
    finally:
        progress.close()
    counts = summary.library_counts
    print(f"this run: {summary.ok} ok, {summary.failed} failed of {summary.todo} to do "
          f"({summary.done_before} already done); all records: {counts['ok']} ok, {counts['failed']} failed; "
          f"results in {printable(summary.records_file)}", file=sys.stderr)
    for line in summary.unlisted:
        _warn(line)
    if summary.interrupted:
        print("gamma-rt: interrupted; the finished tracks are journaled, run the same command to finish the rest",
              file=sys.stderr)
        return 130
    tag_failures = 0
    if args.write_tags:
        tag_failures = write_file_tags(job, False, lambda line: print(printable(line)))
    return 1 if counts["failed"] or tag_failures or summary.unlisted else 0


def _warn(line: str) -> None:
    print(printable(f"gamma-rt: warning: {line}"), file=sys.stderr)
